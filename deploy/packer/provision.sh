#!/usr/bin/env bash
# Installs gwlb-appliance on the Packer builder instance (Amazon Linux 2023), as root, once, at
# bake time; gwlb-appliance.pkr.hcl uploads the files to $STAGING first. Nothing here runs when an
# instance boots: the boot only starts the unit this script enables.
#
#   STAGING/wheelhouse/   the gwlb_appliance wheel and every dependency's wheel, for this CPU
#   STAGING/gwlb-appliance.service, gwlb-appliance.sysusers, default.toml, README.md
#   ARCH                  the build's architecture (x86_64 or arm64), to catch a wrong wheelhouse
set -euo pipefail

STAGING=${STAGING:?set STAGING to the directory the file provisioners uploaded to}
ARCH=${ARCH:?set ARCH to x86_64 or arm64}
PREFIX=/opt/gwlb-appliance
VENV=$PREFIX/venv
CONFIG_DIR=/etc/gwlb-appliance
SERVICE_USER=gwlb-appliance
PYTHON=python3.11

log() { printf 'provision: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

check_architecture() {
  local machine
  machine=$(uname -m)
  # The kernel says aarch64 where AWS and Packer say arm64.
  [[ $machine == "$ARCH" || ($ARCH == arm64 && $machine == aarch64) ]] \
    || die "this builder is $machine but the wheelhouse is for $ARCH"
}

# The appliance's own wheel: exactly one, so the image cannot pick an old one by accident.
find_wheel() {
  local wheels
  shopt -s nullglob
  wheels=("$STAGING"/wheelhouse/gwlb_appliance-*.whl)
  shopt -u nullglob
  ((${#wheels[@]} == 1)) \
    || die "expected one gwlb_appliance wheel in $STAGING/wheelhouse, found ${#wheels[@]}"
  printf '%s\n' "${wheels[0]}"
}

install_packages() {
  # AL2023's default python3 is 3.9; the appliance needs 3.11 (tomllib), packaged here. diffutils
  # for cmp, which cloud-init's runcmd uses to tell whether the running config is the site's.
  dnf install -y --setopt=install_weak_deps=False "$PYTHON" "$PYTHON-pip" diffutils
}

# Its own virtual environment: the product's top-level packages (appliance, supervisor, health,
# config) have common names and must never meet a system Python's site-packages.
install_venv() {
  local wheel=$1
  log "installing $(basename "$wheel") into $VENV"
  "$PYTHON" -m venv "$VENV"
  # --no-index: only the uploaded wheels, the exact versions tested; pip byte-compiles them, which
  # matters because the unit runs with /opt read-only (ProtectSystem=strict).
  "$VENV/bin/python" -m pip install --no-index --find-links "$STAGING/wheelhouse" \
    --no-cache-dir --disable-pip-version-check "$wheel"
  "$VENV/bin/python" -m pip check --disable-pip-version-check
  # The admin CLI on every operator's PATH; applianced is only ever started by systemd.
  ln -sfn "$VENV/bin/appliancectl" /usr/local/bin/appliancectl
  install -m 0644 "$STAGING/README.md" "$PREFIX/README.md"
}

install_user() {
  install -D -m 0644 "$STAGING/gwlb-appliance.sysusers" /usr/lib/sysusers.d/gwlb-appliance.conf
  systemd-sysusers /usr/lib/sysusers.d/gwlb-appliance.conf
  getent passwd "$SERVICE_USER" >/dev/null || die "systemd-sysusers did not create $SERVICE_USER"
}

# The baked config is the shipped demo policy with the interface setup on (an appliance instance
# is the one host where changing the MTU and rp_filter is wanted); cloud-init overwrites it with
# the site's. Readable by the service user, writable by root only.
install_config() {
  install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
  sed 's/^manage = false /manage = true  /' "$STAGING/default.toml" > "$STAGING/appliance.toml"
  grep -q '^manage = true ' "$STAGING/appliance.toml" || die "cannot turn on [interface] manage"
  install -m 0640 -o root -g "$SERVICE_USER" "$STAGING/appliance.toml" "$CONFIG_DIR/appliance.toml"
  "$VENV/bin/python" -c 'import sys; from config.loader import load_config; load_config(sys.argv[1])' \
    "$CONFIG_DIR/appliance.toml" || die "the baked config does not validate"
}

install_unit() {
  install -D -m 0644 "$STAGING/gwlb-appliance.service" \
    /usr/lib/systemd/system/gwlb-appliance.service
  systemd-analyze verify --man=no gwlb-appliance.service
  systemctl daemon-reload
  # Enabled, not started: the builder is not an appliance. Every instance starts it at boot.
  systemctl enable gwlb-appliance.service
}

report_mtu() {
  local dev mtu
  dev=$(ip -o route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }' | head -n 1)
  mtu=$(cat "/sys/class/net/${dev:-none}/mtu" 2>/dev/null || echo unknown)
  # Not fatal: the builder's subnet is not the appliance's, and applianced raises the MTU itself.
  log "builder interface ${dev:-?} has MTU $mtu (appliances need at least 8568; VPC DHCP gives 9001)"
}

clean_up() {
  rm -rf "$STAGING"
  dnf clean all
}

main() {
  check_architecture
  local wheel
  wheel=$(find_wheel)
  install_packages
  install_venv "$wheel"
  install_user
  install_config
  install_unit
  report_mtu
  clean_up
  log "done: $("$VENV/bin/python" -c 'from importlib.metadata import version; print("gwlb-appliance", version("gwlb-appliance"))')"
}

main "$@"
