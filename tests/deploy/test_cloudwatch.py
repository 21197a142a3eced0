"""Flow records and the journal to CloudWatch Logs: the agent and its config in the AMI, the
journal copier, cloud-init starting the agent on the fleet's log group, and that log group and the
instances' permission to write to it in the gwlb-fleet module.

What must hold from end to end: the agent collects exactly the files the appliance writes (the
flow records' path as the product's own loader reads it, journal.log as the copier's unit names
it), into the log group the module creates and cloud-init names, with a role that may write there
and nowhere else; and the agent's package is installed only when signed by the key AWS publishes.

The agent is not here to run, so its reading of the config is reproduced where it matters: the
timestamp regular expression it builds from timestamp_format (its translator's
ruleTimestampFormat.go), checked against a record the product's own FlowLog writes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from deployfiles import (
    AGENT_CONFIG,
    DEPLOY,
    JOURNAL_SH,
    JOURNAL_UNIT,
    LOGROTATE,
    MODULE_DIR,
    PROVISION_SH,
    SERVICE_USER,
    UNIT_FILE,
    expr,
    heredoc_default,
    labelled,
    only,
    parse_unit,
    render_user_data,
    resources,
    unit_value,
)

from appliance.flowlog import FlowLog
from appliance.flows import FlowTable
from appliance.flowverdict import DROP
from config.loader import default_config_path, load_config, parse_config

FLEET_GROUP = "/gwlb-appliance/fleet1"
# AWS's published fingerprint of the key that signs the CloudWatch agent's packages, as the
# CloudWatch user guide prints it ("Verifying the signature of the CloudWatch agent package").
AWS_CWAGENT_FINGERPRINT = "9376 16F3 450B 7D80 6CBD 9725 D581 6730 3B78 9C72"
# The keys the agent's config schema allows in a collect_list entry (translator/config/schema.json,
# logsFilesDefinition; additionalProperties is false there).
COLLECT_LIST_KEYS = {
    "file_path", "log_group_name", "log_stream_name", "log_group_class",
    "multi_line_start_pattern", "timestamp_format", "timezone", "trim_timestamp", "encoding",
    "auto_removal", "backpressure_mode", "blacklist", "publish_multi_logs", "retention_in_days",
    "filters", "service.name", "deployment.environment",
}  # fmt: skip
LOGS_ACTIONS = {"logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"}


def provision_settings() -> dict[str, str]:
    """provision.sh's plain top-level settings (NAME=value), $PREFIX expanded."""
    settings = dict(re.findall(r"^([A-Z_]+)=(\S+)$", PROVISION_SH.read_text(), re.M))
    return {k: v.replace("$PREFIX", settings["PREFIX"]) for k, v in settings.items()}


def run_provision_function(*call: str, tmp: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """One of provision.sh's functions, the script sourced as it is (it runs main only when run)."""
    env = {**os.environ, "STAGING": str(tmp), "ARCH": "x86_64"}
    script = f'source {shlex.quote(str(PROVISION_SH))}; "$@"'
    return subprocess.run(
        ["bash", "-c", script, "provision", *call],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,
    )


@pytest.fixture(scope="module")
def agent() -> dict[str, Any]:
    return json.loads(AGENT_CONFIG.read_text())


@pytest.fixture(scope="module")
def collected(agent) -> list[dict[str, Any]]:
    return agent["logs"]["logs_collected"]["files"]["collect_list"]


@pytest.fixture(scope="module")
def journal_unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(JOURNAL_UNIT.read_text())


def journal_log_path(journal_unit) -> str:
    """Where the copier writes: the argument its unit gives it."""
    _program, log = shlex.split(unit_value(journal_unit, "Service", "ExecStart"))
    return log


# ---- the agent's config --------------------------------------------------------------------------


def test_agent_config_holds_only_what_the_agent_knows(agent, collected):
    assert set(agent) == {"agent", "logs"}  # no metrics: the role may not put any
    assert set(agent["logs"]) == {"logs_collected"}
    assert set(agent["logs"]["logs_collected"]) == {"files"}
    for entry in collected:
        assert set(entry) <= COLLECT_LIST_KEYS, set(entry) - COLLECT_LIST_KEYS
        # Terraform keeps the retention; the role may not set one (PutRetentionPolicy).
        assert "retention_in_days" not in entry
        # Rotated files (flows.log.1 ...) must not be read again as if they were new.
        assert "*" not in entry["file_path"] and not entry.get("publish_multi_logs", False)
        assert entry.get("timezone", "UTC") == "UTC"


def test_agent_collects_exactly_the_files_the_appliance_writes(collected, journal_unit, tmp_path):
    flowlog = load_config(default_config_path()).flowlog
    assert flowlog.destination == "file"
    assert sorted(entry["file_path"] for entry in collected) == sorted(
        [str(flowlog.path), journal_log_path(journal_unit)]
    )
    # The AMI's own config turns the records on, to that same path.
    result = run_provision_function(
        "bake_config", str(default_config_path()), str(tmp_path / "baked.toml"), tmp=tmp_path
    )
    assert result.returncode == 0, result.stderr
    baked = load_config(tmp_path / "baked.toml")
    assert baked.flowlog.enabled and baked.flowlog.path == flowlog.path
    # So does every instance's site config, which replaces the baked one at first boot.
    policy = heredoc_default(MODULE_DIR / "variables.tf", "policy_toml")
    (site,) = yaml.safe_load(render_user_data(["10.0.1.0/24"], policy))["write_files"]
    site_flowlog = parse_config(site["content"]).flowlog
    assert site_flowlog.enabled and site_flowlog.path == flowlog.path
    # Both files live in the units' LogsDirectory, which is what makes them writable.
    for unit in (parse_unit(UNIT_FILE.read_text()), journal_unit):
        logs_dir = Path("/var/log") / unit_value(unit, "Service", "LogsDirectory")
        assert {Path(entry["file_path"]).parent for entry in collected} == {logs_dir}


def test_baked_config_is_the_shipped_one_with_rings_manage_and_flow_records_on(tmp_path):
    result = run_provision_function(
        "bake_config", str(default_config_path()), str(tmp_path / "baked.toml"), tmp=tmp_path
    )
    assert result.returncode == 0, result.stderr
    shipped, baked = load_config(default_config_path()), load_config(tmp_path / "baked.toml")
    assert not shipped.interface.manage and not shipped.flowlog.enabled
    assert baked.interface.manage and baked.flowlog.enabled
    assert (shipped.dataplane.io, baked.dataplane.io) == ("socket", "ring")
    # Nothing else changed: the other table with `enabled = ` (health) kept its value.
    assert baked.health == shipped.health and baked.policy.rules == shipped.policy.rules
    shipped_lines = default_config_path().read_text().splitlines()
    baked_lines = (tmp_path / "baked.toml").read_text().splitlines()
    assert len(baked_lines) == len(shipped_lines)
    changed = [(a, b) for a, b in zip(shipped_lines, baked_lines, strict=True) if a != b]
    assert [(a.split()[:3], b.split()[:3]) for a, b in changed] == [
        (["io", "=", '"socket"'], ["io", "=", '"ring"']),
        (["manage", "=", "false"], ["manage", "=", "true"]),
        (["enabled", "=", "false"], ["enabled", "=", "true"]),
    ]


def test_every_stream_is_the_instances_own_in_the_fleets_group(collected):
    assert {entry["log_group_name"] for entry in collected} == {"@LOG_GROUP_NAME@"}
    streams = [entry["log_stream_name"] for entry in collected]
    assert len(set(streams)) == len(streams)
    # {instance_id} is the agent's own placeholder: one stream per instance and file.
    assert all(stream.startswith("{instance_id}/") for stream in streams)


# The agent's translation of timestamp_format into the regular expression it searches each line
# with (translator/.../collect_list/ruleTimestampFormat.go, TimeFormatRexMap): the specifiers this
# config uses, and literals escaped. The first match in the line is the event's time.
AGENT_SPECIFIERS = {
    "%Y": r"\d{4}",
    "%m": r"\s{0,1}\d{1,2}",
    "%d": r"\s{0,1}\d{1,2}",
    "%H": r"\d{2}",
    "%M": r"\d{2}",
    "%S": r"\d{2}",
    "%f": r"(\d{1,9})",
}


def agent_timestamp_regex(timestamp_format: str) -> re.Pattern[str]:
    parts = re.split(r"(%-?[A-Za-z])", timestamp_format)
    regex = "".join(AGENT_SPECIFIERS[p] if p.startswith("%") else re.escape(p) for p in parts)
    return re.compile("(" + regex.removeprefix(r"\s{0,1}") + ")")


@pytest.fixture
def flow_record() -> Iterator[tuple[bytes, dict[str, Any]]]:
    """One denied flow's record, as a worker's FlowLog sends it to the writer."""
    with tempfile.TemporaryDirectory(prefix="cw") as short:  # a unix socket path is short
        path = Path(short) / "flowlog.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as writer:
            writer.bind(str(path))
            log = FlowLog(path, 0, 1, ("no-ssh",))
            endpoint, udp = bytes.fromhex("2b8ee1d4db0c51c4"), bytes((17,))
            ends = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + (40000).to_bytes(2) + (22).to_bytes(2)
            now = time.monotonic_ns()
            flow = FlowTable(16).open(endpoint + udp + ends, now, 100, DROP, 0)
            log.denied(flow, now + 1_500_000)
            log.flush()
            log.close()
            writer.settimeout(5)
            line = writer.recv(65536)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    yield line, json.loads(line)


def test_flow_records_get_the_time_of_their_time_field(collected, flow_record):
    (entry,) = [e for e in collected if e["file_path"].endswith("/flows.log")]
    line, record = flow_record
    match = agent_timestamp_regex(entry["timestamp_format"]).search(line.decode())
    assert match, line
    # The first timestamp in the line is "time", not "start" (which comes after it in the line;
    # the flow was denied 1.5 ms after it began, so the two differ).
    assert record["start"] != record["time"]
    assert match.group(1) == record["time"]
    # The same format read the way strptime reads it gives the record's instant, in UTC.
    when = datetime.strptime(record["time"], entry["timestamp_format"]).replace(tzinfo=UTC)
    assert abs(when.timestamp() - time.time()) < 60
    assert entry["timezone"] == "UTC"


# ---- the journal copier --------------------------------------------------------------------------


@pytest.fixture
def fake_journalctl(tmp_path: Path) -> Path:
    """A journalctl on PATH that records its arguments, writes one entry and exits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "journalctl"
    stub.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_ARGS"\n'
        'printf \'{"__CURSOR":"s=new;i=99","MESSAGE":"started"}\\n\'\n'
    )
    stub.chmod(0o755)
    return bin_dir


def copy_journal(log: Path, bin_dir: Path) -> list[str]:
    """Run the copier once (the fake journalctl returns at once); journalctl's arguments."""
    args = bin_dir / "args"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_ARGS": str(args)}
    result = subprocess.run(
        ["bash", str(JOURNAL_SH), str(log)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return args.read_text().splitlines()


def entry(cursor: str, message: str) -> str:
    return json.dumps({"__CURSOR": cursor, "MESSAGE": message}, separators=(",", ":")) + "\n"


def test_journal_copier_starts_with_the_current_boot_when_it_has_no_file(fake_journalctl, tmp_path):
    log = tmp_path / "journal.log"
    args = copy_journal(log, fake_journalctl)
    assert "--boot" in args and "--lines=all" in args
    assert not [a for a in args if a.startswith("--after-cursor")]
    for needed in ("--follow", "--quiet", "--output=json", "--unit=gwlb-appliance.service"):
        assert needed in args  # --quiet: no "-- Journal begins --" lines among the JSON
    assert log.read_text() == entry("s=new;i=99", "started")


def test_journal_copier_resumes_after_the_last_entry_it_copied(fake_journalctl, tmp_path):
    log = tmp_path / "journal.log"
    log.write_text(entry("s=a;i=1", "one") + entry("s=a;i=2", "two"))
    args = copy_journal(log, fake_journalctl)
    assert "--after-cursor=s=a;i=2" in args and "--boot" not in args
    assert log.read_text().splitlines()[-1] == entry("s=new;i=99", "started").strip()


def test_journal_copier_resumes_from_the_rotated_file_when_the_log_is_empty(
    fake_journalctl, tmp_path
):
    # logrotate's copytruncate: journal.log emptied, its lines in journal.log.1.
    log = tmp_path / "journal.log"
    log.write_text("")
    (tmp_path / "journal.log.1").write_text(entry("s=a;i=7", "seven"))
    assert "--after-cursor=s=a;i=7" in copy_journal(log, fake_journalctl)


def test_journal_copier_ends_a_line_cut_short_before_it_appends(fake_journalctl, tmp_path):
    log = tmp_path / "journal.log"
    log.write_text(entry("s=a;i=1", "one") + '{"__CURSOR":"s=a;i=2","MESS')
    args = copy_journal(log, fake_journalctl)
    # The cut entry's cursor was written whole (it comes first): resume after it.
    assert "--after-cursor=s=a;i=2" in args
    lines = log.read_text().splitlines()
    assert lines[-2] == '{"__CURSOR":"s=a;i=2","MESS'
    assert json.loads(lines[-1])["MESSAGE"] == "started"


def test_journal_copier_asks_only_what_journalctl_understands(fake_journalctl, tmp_path):
    """The real journalctl (systemd 252 here, as on AL2023) takes every option the copier
    passes; --follow and --boot left out, which need a live journal, on an empty directory."""
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is not installed")
    log = tmp_path / "journal.log"
    cursor = "s=0123456789abcdef0123456789abcdef;i=1;b=0123456789abcdef0123456789abcdef;m=1;t=1;x=1"
    log.write_text(entry(cursor, "one"))
    args = copy_journal(log, fake_journalctl)
    (tmp_path / "journal").mkdir()
    offline = [a for a in args if a not in ("--follow", "--boot")]
    result = subprocess.run(
        ["journalctl", f"--directory={tmp_path / 'journal'}", *offline],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_journal_unit_runs_the_installed_copier_on_the_shipped_file(journal_unit, collected):
    program, log = shlex.split(unit_value(journal_unit, "Service", "ExecStart"))
    assert program == provision_settings()["JOURNAL_COPIER"]
    assert log in {entry["file_path"] for entry in collected}
    assert unit_value(journal_unit, "Service", "Restart") == "always"
    assert unit_value(journal_unit, "Install", "WantedBy") == "multi-user.target"
    # Not bound to the appliance: its last words are copied after it failed.
    for binding in ("BindsTo", "PartOf", "Requisite"):
        assert binding not in journal_unit["Unit"]


def test_journal_unit_shares_the_log_directory_and_owner_with_the_appliance(journal_unit):
    appliance = parse_unit(UNIT_FILE.read_text())
    for key in ("User", "Group", "LogsDirectory", "LogsDirectoryMode"):
        assert unit_value(journal_unit, "Service", key) == unit_value(appliance, "Service", key)
    assert unit_value(journal_unit, "Service", "User") == SERVICE_USER
    assert unit_value(journal_unit, "Service", "LogsDirectoryMode") == "0750"
    # Reading the system journal takes the systemd-journal group, and nothing more.
    assert unit_value(journal_unit, "Service", "SupplementaryGroups") == "systemd-journal"
    assert unit_value(journal_unit, "Service", "CapabilityBoundingSet") == ""
    assert "AmbientCapabilities" not in journal_unit["Service"]
    assert unit_value(journal_unit, "Service", "NoNewPrivileges") == "yes"
    assert unit_value(journal_unit, "Service", "PrivateNetwork") == "yes"
    assert unit_value(journal_unit, "Service", "ProtectSystem") == "strict"


def _journal_unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= on a program that exists here (the copier is installed only on
    the AMI), for systemd-analyze."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = JOURNAL_UNIT.read_text()
    copier = provision_settings()["JOURNAL_COPIER"]
    copy = tmp_path / JOURNAL_UNIT.name
    copy.write_text(text.replace(f"ExecStart={copier}", f"ExecStart={shutil.which('true')}", 1))
    assert copy.read_text() != text
    return copy


def test_systemd_analyze_verify_accepts_the_journal_unit(tmp_path):
    copy = _journal_unit_copy(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if copy.name in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_journal_unit_exposure_stays_low(tmp_path):
    copy = _journal_unit_copy(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=10", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security mode (systemd < 250)")
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    # Today 0.8: room for rounding, not for dropping a protection.
    assert overall and float(overall.group(1)) <= 1.0


def test_logrotate_rotates_journal_log_only_and_keeps_the_newest_copy_readable(collected):
    text = "\n".join(
        line for line in LOGROTATE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    blocks = re.findall(r"^(\S+) \{(.*?)^\}", text, re.M | re.S)
    journal = next(e["file_path"] for e in collected if e["file_path"].endswith("/journal.log"))
    # flows.log rotates itself ([flowlog] max_bytes, keep): logrotate must not touch it.
    assert [path for path, _ in blocks] == [journal]
    directives = {line.split()[0]: line.split()[1:] for line in blocks[0][1].strip().splitlines()}
    assert directives["su"] == [SERVICE_USER, SERVICE_USER]
    # The copier keeps the file open for appending: copy, then truncate, never rename.
    assert "copytruncate" in directives
    # It finds its place in journal.log.1 after a truncation: that one stays plain text.
    assert "delaycompress" in directives or "compress" not in directives


# ---- installing the agent (provision.sh) ---------------------------------------------------------


def test_agent_package_comes_from_amazon_and_is_verified_before_it_is_installed():
    settings = provision_settings()
    assert settings["CWAGENT_URL"] == "https://amazoncloudwatch-agent.s3.amazonaws.com"
    assert settings["CWAGENT_FINGERPRINT"] == AWS_CWAGENT_FINGERPRINT.replace(" ", "")
    text = PROVISION_SH.read_text()
    body = re.search(r"^install_cloudwatch_agent\(\) \{\n(.*?)^\}", text, re.M | re.S)
    assert body, "no install_cloudwatch_agent()"
    steps = body.group(1)
    # The package and its signature for this architecture, from latest/ of Amazon Linux's path.
    assert '"$CWAGENT_URL/amazon_linux/$(cwagent_arch)/latest"' in steps
    assert "amazon-cloudwatch-agent.rpm.sig" in steps
    assert "$CWAGENT_URL/assets/amazon-cloudwatch-agent.gpg" in steps
    # Verified with the pinned fingerprint, fatally, before dnf sees the file.
    verify = steps.index('"$CWAGENT_FINGERPRINT"')
    assert "|| die" in steps[verify : verify + 120]
    assert verify < steps.index("dnf install")
    # HTTPS only, also after a redirect.
    assert "--proto '=https'" in text
    assert re.search(r"^  install_cloudwatch_agent$", text, re.M)


@pytest.mark.parametrize(("arch", "path"), [("x86_64", "amd64"), ("arm64", "arm64")])
def test_agent_package_matches_the_builds_architecture(arch, path, tmp_path):
    result = subprocess.run(
        ["bash", "-c", f'source "{PROVISION_SH}"; cwagent_arch'],
        env={**os.environ, "STAGING": str(tmp_path), "ARCH": arch},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == path, result.stderr


class Signer:
    """A throwaway GnuPG home with one signing key, to sign files as a publisher would."""

    def __init__(self, name: str) -> None:
        # Short: gpg-agent's socket lives in the home, and a socket path is at most 107 bytes.
        self.home = Path(tempfile.mkdtemp(prefix="gpg"))
        self._gpg("--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys").stdout
        self.fingerprint = re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.M).group(1)

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--pinentry-mode", "loopback",
             "--passphrase", "", *args],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip

    def export(self, path: Path) -> Path:
        self._gpg("--output", str(path), "--export", self.fingerprint)
        return path

    def sign(self, file: Path) -> Path:
        signature = file.with_name(file.name + ".sig")
        self._gpg("--output", str(signature), "--detach-sign", str(file))
        return signature

    def close(self) -> None:
        # The agent gpg started for this home only, then the home.
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def signers() -> Iterator[tuple[Signer, Signer]]:
    if shutil.which("gpg") is None or shutil.which("gpgconf") is None:
        pytest.skip("gpg is not installed")
    amazon, mallory = Signer("amazon"), Signer("mallory")
    yield amazon, mallory
    amazon.close()
    mallory.close()


def test_signature_check_accepts_only_a_good_signature_by_the_pinned_key(signers, tmp_path):
    amazon, mallory = signers
    package = tmp_path / "amazon-cloudwatch-agent.rpm"
    package.write_bytes(b"\xed\xab\xee\xdb" + os.urandom(4096))
    signature = amazon.sign(package)
    keyfile = amazon.export(tmp_path / "amazon-cloudwatch-agent.gpg")

    def verified(key: Path, sig: Path, file: Path, fingerprint: str) -> bool:
        result = run_provision_function(
            "verify_signature", str(key), str(sig), str(file), fingerprint, tmp=tmp_path
        )
        return result.returncode == 0

    assert verified(keyfile, signature, package, amazon.fingerprint)
    # Any other pinned key: refused, even though the signature itself is good.
    assert not verified(keyfile, signature, package, mallory.fingerprint)
    # A changed package: refused.
    tampered = tmp_path / "tampered.rpm"
    tampered.write_bytes(package.read_bytes() + b"\0")
    assert not verified(keyfile, signature, tampered, amazon.fingerprint)
    # A package signed by someone else, with their key in the downloaded key file: refused.
    mallory_package = package.with_name("forged.rpm")
    mallory_package.write_bytes(package.read_bytes())
    forged = mallory.sign(mallory_package)
    both = tmp_path / "both.gpg"
    both.write_bytes(keyfile.read_bytes() + mallory.export(tmp_path / "m.gpg").read_bytes())
    assert not verified(both, forged, mallory_package, amazon.fingerprint)
    # No key at all, or no signature: refused.
    assert not verified(tmp_path / "missing.gpg", signature, package, amazon.fingerprint)
    assert not verified(keyfile, tmp_path / "missing.sig", package, amazon.fingerprint)


# ---- cloud-init starts the agent -----------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_command() -> str:
    rendered = render_user_data(["10.0.1.0/24"], "", log_group_name=FLEET_GROUP)
    commands = yaml.safe_load(rendered)["runcmd"]
    (command,) = [c for c in commands if "amazon-cloudwatch-agent-ctl" in " ".join(c)]
    assert command[:2] == ["sh", "-c"]
    return command[2]


def test_cloud_init_starts_the_amis_agent_config_on_the_fleets_log_group(agent_command):
    settings = provision_settings()
    render, start = agent_command.split(" && ")
    sed, expression, source, redirect, rendered = shlex.split(render)
    assert (sed, redirect) == ("sed", ">")
    assert expression == f"s|@LOG_GROUP_NAME@|{FLEET_GROUP}|g"
    assert source == settings["AGENT_CONFIG"]  # where provision.sh put the AMI's config
    ctl, *args = shlex.split(start)
    assert ctl == settings["CWAGENT_CTL"]
    # fetch-config from that file, EC2 mode (instance profile, region from metadata), and start.
    assert args[args.index("-a") + 1] == "fetch-config"
    assert args[args.index("-m") + 1] == "ec2"
    assert args[args.index("-c") + 1] == f"file:{rendered}"
    assert "-s" in args


def test_cloud_init_command_gives_the_agent_a_config_naming_the_group(agent_command, tmp_path):
    """The command as cloud-init runs it, on the repository's agent config, the control program
    replaced by one that keeps the config it was given."""
    settings = provision_settings()
    ctl = tmp_path / "amazon-cloudwatch-agent-ctl"
    ctl.write_text(
        '#!/bin/sh\nfor a; do case $a in file:*) cp "${a#file:}" "$0.json";; esac; done\n'
    )
    ctl.chmod(0o755)
    command = (
        agent_command.replace(settings["AGENT_CONFIG"], str(AGENT_CONFIG))
        .replace("/etc/gwlb-appliance/", f"{tmp_path}/")
        .replace(settings["CWAGENT_CTL"], str(ctl))
    )
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    given = json.loads((tmp_path / "amazon-cloudwatch-agent-ctl.json").read_text())
    files = given["logs"]["logs_collected"]["files"]["collect_list"]
    assert {entry["log_group_name"] for entry in files} == {FLEET_GROUP}
    assert "@" not in json.dumps(given)


# ---- the module: the log group, the role, the launch template ------------------------------------


def _locals(module) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in module.get("locals", []):
        merged.update(block)
    return merged


def test_log_group_is_the_fleets_with_retention_from_a_validated_variable(module):
    group = only(resources(module, "aws_cloudwatch_log_group"))
    assert expr(group["name"]) == "local.log_group_name"
    assert _locals(module)["log_group_name"] == "/gwlb-appliance/${var.name}"
    assert expr(group["retention_in_days"]) == "var.log_retention_days"
    assert expr(group["kms_key_id"]) == "var.log_kms_key_arn"
    variables = labelled(module, "variable")
    retention = variables["log_retention_days"]
    assert retention["type"] == "number" and retention["default"] == 30
    (validation,) = retention["validation"]
    allowed = re.search(
        r"contains\(\[([\d, ]+)\], var\.log_retention_days\)", validation["condition"]
    )
    days = {int(d) for d in allowed.group(1).split(",")}
    # CloudWatch Logs' own list (PutRetentionPolicy), and 0 for Terraform's "never expire".
    assert days == {0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                    1827, 2192, 2557, 2922, 3288, 3653}  # fmt: skip
    assert variables["log_kms_key_arn"]["default"] is None
    # The user data names the same group.
    call = expr(_locals(module)["user_data"])
    assert re.search(r"\blog_group_name\s+= local\.log_group_name\b", call)


def test_fleet_names_fit_the_log_group_and_the_sed_expression(module):
    """The name goes into /gwlb-appliance/NAME, into cloud-init's `sed s|...|NAME|g` and into
    the agent's JSON as it is: its validation must keep out anything special to any of them."""
    (validation,) = labelled(module, "variable")["name"]["validation"]
    pattern = re.search(r'regex\("([^"]+)", var\.name\)', validation["condition"]).group(1)
    allowed = re.compile(pattern.replace("\\\\", "\\"))
    assert allowed.fullmatch("fleet-1")
    for bad in ("a|b", "a&b", "a\\b", "a/b", 'a"b', "a b", "a.b", "a:b"):
        assert not allowed.fullmatch(bad), bad
    assert re.fullmatch(r"[\.\-_/#A-Za-z0-9]+", "/gwlb-appliance/" + "a" * 28)  # AWS's charset


def test_instance_role_may_only_write_to_the_fleets_log_group(module):
    values = _locals(module)
    (statement,) = values["logs_policy"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert set(statement["Action"]) == LOGS_ACTIONS
    # The group and its streams (ARN:*), by reference to the module's group, nothing else.
    assert statement["Resource"] == [
        "${aws_cloudwatch_log_group.appliances.arn}",
        "${aws_cloudwatch_log_group.appliances.arn}:*",
    ]
    assert set(statement) == {"Sid", "Effect", "Action", "Resource"}  # no Condition loosening it
    policy = only(resources(module, "aws_iam_role_policy"))
    assert expr(policy["policy"]) == "jsonencode(local.logs_policy)"
    assert expr(policy["role"]) == "aws_iam_role.appliance[0].id"
    (trust,) = values["assume_role_policy"]["Statement"]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole" and trust["Effect"] == "Allow"
    role = only(resources(module, "aws_iam_role"))
    assert expr(role["assume_role_policy"]) == "jsonencode(local.assume_role_policy)"
    # No managed policy but the ones asked for, and AWS's broad agent policy nowhere.
    (attachment,) = resources(module, "aws_iam_role_policy_attachment").values()
    assert expr(attachment["policy_arn"]) == "var.additional_instance_policy_arns[count.index]"
    assert labelled(module, "variable")["additional_instance_policy_arns"]["default"] == []
    text = "".join(path.read_text() for path in MODULE_DIR.glob("*.tf"))
    assert 'CloudWatchAgentServerPolicy"' not in text and "policy/CloudWatch" not in text
    assert "logs:*" not in text and '"*"' not in json.dumps(values["logs_policy"])


def test_launch_template_uses_the_given_profile_or_else_the_modules_own(module):
    values = _locals(module)
    assert expr(values["create_instance_profile"]) == "var.iam_instance_profile_name == null"
    chosen = expr(values["instance_profile_name"])
    assert chosen == (
        "local.create_instance_profile ? one(aws_iam_instance_profile.appliance[*].name)"
        " : var.iam_instance_profile_name"
    )
    template = only(resources(module, "aws_launch_template"))
    (profile,) = template["iam_instance_profile"]
    assert expr(profile["name"]) == "local.instance_profile_name"
    # The module's role, its policy and its profile exist only when no profile is given.
    for rtype in ("aws_iam_role", "aws_iam_role_policy", "aws_iam_instance_profile"):
        assert expr(only(resources(module, rtype))["count"]) == (
            "local.create_instance_profile ? 1 : 0"
        ), rtype
    profile_resource = only(resources(module, "aws_iam_instance_profile"))
    assert expr(profile_resource["role"]) == "aws_iam_role.appliance[0].name"
    # Extra policies for a role the module does not make are refused, not ignored.
    (lifecycle,) = template["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    assert "var.iam_instance_profile_name == null" in precondition["condition"]
    assert "length(var.additional_instance_policy_arns) == 0" in precondition["condition"]


def test_instances_start_after_their_log_group_and_permission_exist(module):
    group = only(resources(module, "aws_autoscaling_group"))
    assert set(map(expr, group["depends_on"])) == {
        "aws_cloudwatch_log_group.appliances",
        "aws_iam_role_policy.appliance_logs",
    }


def test_module_outputs_the_log_group_and_the_policy_for_an_own_profile(module):
    outputs = labelled(module, "output")
    assert expr(outputs["log_group_name"]["value"]) == "aws_cloudwatch_log_group.appliances.name"
    assert expr(outputs["log_group_arn"]["value"]) == "aws_cloudwatch_log_group.appliances.arn"
    assert expr(outputs["logs_policy_json"]["value"]) == "jsonencode(local.logs_policy)"
    assert expr(outputs["instance_profile_name"]["value"]) == "local.instance_profile_name"


def test_example_lets_the_agent_reach_cloudwatch_logs(example):
    call = labelled(example, "module")["fleet"]
    endpoint = resources(example, "aws_vpc_endpoint")["logs"]
    assert endpoint["vpc_endpoint_type"] == "Interface"
    assert endpoint["service_name"] == "com.amazonaws.${var.region}.logs"
    assert endpoint["private_dns_enabled"] is True
    assert endpoint["subnet_ids"] == ["${aws_subnet.appliance.id}"]
    # The module's HTTPS egress goes to that subnet, and the endpoint admits HTTPS from it.
    assert call["https_egress_cidrs"] == ["${aws_subnet.appliance.cidr_block}"]
    group = resources(example, "aws_security_group")["logs_endpoint"]
    (ingress,) = group["ingress"]
    assert (ingress["protocol"], ingress["from_port"], ingress["to_port"]) == ("tcp", 443, 443)
    assert ingress["cidr_blocks"] == ["${aws_subnet.appliance.cidr_block}"]
    # The demo VPC resolves the endpoint's private DNS name.
    vpc = resources(example, "aws_vpc")["demo"]
    assert vpc["enable_dns_support"] is True and vpc["enable_dns_hostnames"] is True


def test_deploy_readme_documents_the_log_shipping():
    text = (DEPLOY / "README.md").read_text()
    for needle in (
        "CloudWatch",
        "journal.log",
        "log_retention_days",
        "CloudWatchAgentServerPolicy",
    ):
        assert needle in text, needle
