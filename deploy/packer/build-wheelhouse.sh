#!/usr/bin/env bash
# Builds what the AMI installs, before `packer build` runs (this needs PyPI; the instances never
# do): OUT/x86_64/ and OUT/arm64/, each holding the gwlb_appliance wheel and the wheels of all its
# dependencies for that architecture and CPython 3.11 (Amazon Linux 2023's python3.11, glibc 2.34).
#
#   bash deploy/packer/build-wheelhouse.sh [OUT]      # default OUT: dist/wheelhouse
#
# Binary dependencies (orjson, setproctitle, markupsafe) come as manylinux wheels, so one machine
# of either architecture builds both wheelhouses; nothing is compiled.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-dist/wheelhouse}
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=3.11

build_wheel() {
  # setuptools packages whatever is left in build/lib, including modules since deleted: start clean.
  rm -rf "$OUT/any" build
  "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$OUT/any" .
}

# Dependencies for one architecture: only wheels (--only-binary), only ones that AL2023 can load
# (manylinux up to glibc 2.34), only for CPython 3.11.
download_dependencies() {
  local arch=$1 machine=$2
  local dir="$OUT/$arch"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$OUT"/any/gwlb_appliance-*.whl "$dir/"
  local platforms=() glibc
  for glibc in 2_34 2_28 2_17; do
    platforms+=(--platform "manylinux_${glibc}_${machine}")
  done
  "$PYTHON" -m pip download --quiet --dest "$dir" --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp "${platforms[@]}" \
    "$dir"/gwlb_appliance-*.whl
  printf 'wheelhouse %s: %s wheels\n' "$dir" "$(find "$dir" -name '*.whl' | wc -l)"
}

build_wheel
download_dependencies x86_64 x86_64
download_dependencies arm64 aarch64
rm -rf "$OUT/any"
