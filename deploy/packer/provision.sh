#!/usr/bin/env bash
# Installs gwlb-appliance on the Packer builder instance (Amazon Linux 2023), as root, once, at
# bake time; gwlb-appliance.pkr.hcl uploads the files to $STAGING first. Nothing here runs when an
# instance boots: the boot only starts the units this script enables, and cloud-init starts the
# CloudWatch agent this script installs.
#
#   STAGING/wheelhouse/   the gwlb_appliance wheel and every dependency's wheel, for this CPU
#   STAGING/gwlb-appliance.service, gwlb-appliance.sysusers, default.toml, README.md
#   STAGING/gwlb-appliance-journal.service, gwlb-appliance-journal.sh, gwlb-appliance.logrotate,
#          cloudwatch-agent.json   the logs' way to CloudWatch (deploy/README.md)
#   ARCH                  the build's architecture (x86_64 or arm64), to catch a wrong wheelhouse
#
# Sourced (tests/deploy), it only defines its settings and functions.
set -euo pipefail

STAGING=${STAGING:?set STAGING to the directory the file provisioners uploaded to}
ARCH=${ARCH:?set ARCH to x86_64 or arm64}
PREFIX=/opt/gwlb-appliance
VENV=$PREFIX/venv
CONFIG_DIR=/etc/gwlb-appliance
SERVICE_USER=gwlb-appliance
PYTHON=python3.11
# The CloudWatch agent's config, with @LOG_GROUP_NAME@ for cloud-init to fill in, and the copier
# of the appliance's journal to a file the agent reads.
AGENT_CONFIG=$PREFIX/cloudwatch-agent.json
JOURNAL_COPIER=/usr/libexec/gwlb-appliance/journal-to-file
# Amazon's download bucket for the CloudWatch agent, and the fingerprint AWS publishes for the key
# that signs its packages ("Verifying the signature of the CloudWatch agent package", CloudWatch
# user guide). The key file comes from the same bucket as the package, so this fingerprint is
# what is trusted: a signature by any other key fails, whatever the downloaded key file holds.
CWAGENT_URL=https://amazoncloudwatch-agent.s3.amazonaws.com
CWAGENT_FINGERPRINT=937616F3450B7D806CBD9725D58167303B789C72
CWAGENT_CTL=/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl

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
  # for cmp, which cloud-init's runcmd uses to tell whether the running config is the site's;
  # logrotate for journal.log (AL2023 normally has it already).
  dnf install -y --setopt=install_weak_deps=False "$PYTHON" "$PYTHON-pip" diffutils logrotate
}

# The agent's name for this build's architecture in its download paths.
cwagent_arch() {
  case $ARCH in
    x86_64) printf 'amd64\n' ;;
    arm64) printf 'arm64\n' ;;
    *) die "no CloudWatch agent package for $ARCH" ;;
  esac
}

fetch() {
  # HTTPS only, redirects included; Amazon's bucket requires TLS 1.2 or later.
  curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 --retry 3 \
    --output "$2" "$1"
}

# True when SIGNATURE is a good signature of FILE by the key with FINGERPRINT (the primary key's,
# 40 hex digits), KEYFILE holding that key. gpg's status lines, not its exit code or its text:
# VALIDSIG's last field is the signing key's primary fingerprint. A keyring of its own, removed
# after, so the builder's root keyring is left alone; --no-autostart: public keys need no
# gpg-agent, so none is left running.
verify_signature() {
  local keyfile=$1 signature=$2 file=$3 fingerprint=$4 home status
  home=$(mktemp -d)
  gpg --homedir "$home" --batch --no-autostart --quiet --import "$keyfile" 2>/dev/null || true
  status=$(gpg --homedir "$home" --batch --no-autostart --status-fd 1 \
    --verify "$signature" "$file" 2>/dev/null) || true
  rm -rf "$home"
  grep -Eq "^\[GNUPG:\] VALIDSIG [0-9A-F]+ .* $fingerprint\$" <<<"$status"
}

# The Amazon CloudWatch agent, the newest from Amazon's bucket (latest/), installed only after its
# detached signature verifies, the way AWS documents it. dnf is told not to look for an RPM
# header signature in the local file (localpkg_gpgcheck, off by default for local files, spelled
# out): the check that counts is the one above. The agent is not started here: cloud-init gives
# it the fleet's log group and starts it (deploy/cloud-init/user-data.yaml).
install_cloudwatch_agent() {
  local base dir
  base="$CWAGENT_URL/amazon_linux/$(cwagent_arch)/latest"
  dir=$(mktemp -d)
  fetch "$CWAGENT_URL/assets/amazon-cloudwatch-agent.gpg" "$dir/amazon-cloudwatch-agent.gpg"
  fetch "$base/amazon-cloudwatch-agent.rpm" "$dir/amazon-cloudwatch-agent.rpm"
  fetch "$base/amazon-cloudwatch-agent.rpm.sig" "$dir/amazon-cloudwatch-agent.rpm.sig"
  verify_signature "$dir/amazon-cloudwatch-agent.gpg" "$dir/amazon-cloudwatch-agent.rpm.sig" \
    "$dir/amazon-cloudwatch-agent.rpm" "$CWAGENT_FINGERPRINT" \
    || die "the CloudWatch agent package is not signed by key $CWAGENT_FINGERPRINT"
  dnf install -y --setopt=localpkg_gpgcheck=False "$dir/amazon-cloudwatch-agent.rpm"
  rm -rf "$dir"
  [[ -x $CWAGENT_CTL ]] || die "the CloudWatch agent package has no $CWAGENT_CTL"
  log "installed $(rpm -q amazon-cloudwatch-agent) (signature by $CWAGENT_FINGERPRINT verified)"
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

# The baked config: the shipped demo policy with the interface setup on (an appliance instance is
# the one host where changing the MTU and rp_filter is wanted), the flow records on (the
# CloudWatch agent ships them) and the packet-ring backend (its nftables rule is a host change,
# which is why the shipped default keeps sockets). cloud-init overwrites it with the site's, which
# says the same unless the fleet's dataplane_io says otherwise.
bake_config() {
  local shipped=$1 baked=$2
  sed -e 's/^manage = false /manage = true  /' \
    -e 's/^io = "socket"   /io = "ring"     /' \
    -e '/^\[flowlog\]$/,/^\[/ s/^enabled = false$/enabled = true/' "$shipped" >"$baked"
  grep -q '^manage = true ' "$baked" || die "cannot turn on [interface] manage"
  grep -q '^io = "ring" ' "$baked" || die "cannot turn on dataplane.io = ring"
}

# Readable by the service user, writable by root only; checked by the installed code itself.
install_config() {
  install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
  bake_config "$STAGING/default.toml" "$STAGING/appliance.toml"
  install -m 0640 -o root -g "$SERVICE_USER" "$STAGING/appliance.toml" "$CONFIG_DIR/appliance.toml"
  "$VENV/bin/python" -c '
import sys
from config.loader import load_config
config = load_config(sys.argv[1])
sys.exit(not (config.interface.manage and config.flowlog.enabled and config.dataplane.io == "ring"))' \
    "$CONFIG_DIR/appliance.toml" || die "the baked config does not validate, or lacks manage, flowlog or io = ring"
}

install_unit() {
  install -D -m 0644 "$STAGING/gwlb-appliance.service" \
    /usr/lib/systemd/system/gwlb-appliance.service
  systemd-analyze verify --man=no gwlb-appliance.service
  systemctl daemon-reload
  # Enabled, not started: the builder is not an appliance. Every instance starts it at boot.
  systemctl enable gwlb-appliance.service
}

# The logs' way out: the agent's config (a template until cloud-init names the log group), the
# journal copier and its unit, and journal.log's rotation. The log directory itself is the units'
# LogsDirectory, made by systemd at their start.
install_log_shipping() {
  "$PYTHON" -m json.tool "$STAGING/cloudwatch-agent.json" >/dev/null \
    || die "cloudwatch-agent.json is not JSON"
  install -m 0644 "$STAGING/cloudwatch-agent.json" "$AGENT_CONFIG"
  install -D -m 0755 "$STAGING/gwlb-appliance-journal.sh" "$JOURNAL_COPIER"
  install -D -m 0644 "$STAGING/gwlb-appliance-journal.service" \
    /usr/lib/systemd/system/gwlb-appliance-journal.service
  systemd-analyze verify --man=no gwlb-appliance-journal.service
  install -D -m 0644 "$STAGING/gwlb-appliance.logrotate" /etc/logrotate.d/gwlb-appliance
  # --debug: read and check it, rotate nothing.
  logrotate --debug /etc/logrotate.d/gwlb-appliance \
    || die "logrotate refuses /etc/logrotate.d/gwlb-appliance"
  systemctl daemon-reload
  systemctl enable gwlb-appliance-journal.service
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
  install_cloudwatch_agent
  install_venv "$wheel"
  install_user
  install_config
  install_unit
  install_log_shipping
  report_mtu
  clean_up
  log "done: $("$VENV/bin/python" -c 'from importlib.metadata import version; print("gwlb-appliance", version("gwlb-appliance"))')"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
