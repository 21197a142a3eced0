#!/usr/bin/env bash
# Prepare a fresh Debian machine, as root, for the demo and the tests: the system tools they use
# (iproute2, OpenBSD netcat, ping, tcpdump, gcc for the benchmark, mmdebstrap and systemd-nspawn for
# the unit's test under systemd, tshark for captures, promtool for the alert rules) and a virtual
# environment at .venv with the appliance installed (editable) with its test and dev extras.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v ip >/dev/null || need+=(iproute2)
nc -h 2>&1 | grep -q OpenBSD || need+=(netcat-openbsd)
command -v ping >/dev/null || need+=(iputils-ping)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v tshark >/dev/null || need+=(tshark)         # reads the captures in the tests
command -v promtool >/dev/null || need+=(prometheus)   # checks deploy/monitoring's alert rules
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # tshark: no setuid dumpcap; only root captures here
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    # Wanted for promtool only: not a Prometheus server listening on port 9090.
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "bootstrap: Python 3.11 or newer is needed (found $(python3 -V))" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,dev]'
