"""The systemd unit: what applianced needs from it, what it must not take away, and systemd's word.

applianced notifies READY=1/STOPPING=1 itself, forks workers and spawns gunicorn in the unit's
cgroup, runs as a dedicated user with three capabilities, and writes net.* sysctls at start. The
parsed checks pin those facts; `systemd-analyze verify` and `security` (when installed) judge the
file as systemd would; a seccomp filter equal to systemd's MemoryDenyWriteExecute= runs the
product's code to show that setting breaks nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from deployfiles import (
    CAPABILITIES,
    MDWE_PRELUDE,
    REPO,
    SERVICE_USER,
    SITE_CONFIG,
    SYSUSERS_FILE,
    UNIT_FILE,
    VENV,
    unit_value,
)

from config.schema import DEFAULT_RUNTIME_DIR, FlowLogConfig, WorkersConfig
from supervisor.daemon import EXIT_CONFIG
from supervisor.healthproc import STOP_TIMEOUT_NS


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=30, check=False
    )


# ---- what the daemon needs -----------------------------------------------------------------------


def test_readiness_is_notified_by_the_main_process(unit):
    assert unit_value(unit, "Service", "Type") == "notify"
    # gunicorn sends READY=1 of its own when it boots, before the workers run: only the main
    # process (applianced) may speak for the unit.
    assert unit_value(unit, "Service", "NotifyAccess") == "main"


def test_exec_lines_run_the_venv_daemon_on_the_site_config(unit):
    start = unit_value(unit, "Service", "ExecStart")
    assert start == f"{VENV}/bin/applianced --config {SITE_CONFIG}"
    assert unit_value(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_restarts_on_failure_but_not_on_a_refused_config(unit):
    assert unit_value(unit, "Service", "Restart") == "on-failure"
    assert float(unit_value(unit, "Service", "RestartSec")) > 0
    # A config the daemon refused (exit 2) stays refused: restarting it only loops.
    prevent = unit_value(unit, "Service", "RestartPreventExitStatus").split()
    assert str(EXIT_CONFIG) in prevent
    interval = int(unit_value(unit, "Unit", "StartLimitIntervalSec"))
    burst = int(unit_value(unit, "Unit", "StartLimitBurst"))
    # The limit must be reachable: burst restarts fit in the interval.
    assert burst * float(unit_value(unit, "Service", "RestartSec")) < interval


def test_stop_timeout_outlasts_the_daemons_own_stop(unit):
    # Workers get workers.stop_timeout_s, gunicorn STOP_TIMEOUT_NS, before their SIGKILL; systemd's
    # own SIGKILL must come later, or a graceful stop is cut short.
    own = WorkersConfig().stop_timeout_s + STOP_TIMEOUT_NS / 1e9
    assert float(unit_value(unit, "Service", "TimeoutStopSec")) > own
    assert unit_value(unit, "Service", "KillMode") == "control-group"


def test_runs_as_the_dedicated_user_with_exactly_three_capabilities(unit):
    assert unit_value(unit, "Service", "User") == SERVICE_USER
    assert unit_value(unit, "Service", "Group") == SERVICE_USER
    ambient = set(unit_value(unit, "Service", "AmbientCapabilities").split())
    bounding = set(unit_value(unit, "Service", "CapabilityBoundingSet").split())
    assert ambient == bounding == CAPABILITIES
    assert unit_value(unit, "Service", "NoNewPrivileges") == "yes"


def test_the_user_is_declared_for_systemd_sysusers():
    entries = [
        line.split()
        for line in SYSUSERS_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = [entry for entry in entries if entry[0] == "u"]
    assert [entry[1] for entry in users] == [SERVICE_USER]
    assert users[0][-1] == "/usr/sbin/nologin"


def test_runtime_directory_is_the_configs_default(unit):
    assert unit_value(unit, "Service", "RuntimeDirectory") == DEFAULT_RUNTIME_DIR.name
    assert DEFAULT_RUNTIME_DIR.parent == Path("/run")
    assert unit_value(unit, "Service", "RuntimeDirectoryMode") == "0755"


def test_logs_go_to_the_journal(unit):
    assert unit_value(unit, "Service", "StandardOutput") == "journal"
    assert unit_value(unit, "Service", "StandardError") == "journal"
    assert int(unit_value(unit, "Service", "LimitNOFILE")) >= 65536
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"


# ---- hardening, and what it must leave alone -----------------------------------------------------

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RemoveIPC": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0027",
}


@pytest.mark.parametrize("key", sorted(HARDENING))
def test_hardening_setting(unit, key):
    assert unit_value(unit, "Service", key) == HARDENING[key]


def test_hardening_leaves_what_the_appliance_needs(unit):
    service = unit["Service"]
    # The interface setup writes net.core.rmem_* and net.ipv4.conf.*.rp_filter under /proc/sys.
    assert service.get("ProtectKernelTunables", ["no"])[-1] == "no"
    # ProcSubset=pid would hide /proc/sys altogether.
    assert "ProcSubset" not in service
    # The appliance serves the host's network, with capabilities of the host's user namespace.
    assert service.get("PrivateNetwork", ["no"])[-1] == "no"
    assert service.get("PrivateUsers", ["no"])[-1] == "no"
    # It only ever writes its RuntimeDirectory and LogsDirectory, which ProtectSystem=strict
    # leaves writable.
    assert "ReadWritePaths" not in service
    families = unit_value(unit, "Service", "RestrictAddressFamilies").split()
    assert not families[0].startswith("~")  # an allow list...
    # ...with UDP/raw/HTTP sockets, pyroute2's netlink, the control socket and sd_notify.
    assert {"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"} <= set(families)


def test_flow_records_go_to_the_units_logs_directory(unit):
    # ProtectSystem=strict makes /var read-only: the writer of the flow records can open its file
    # only in the LogsDirectory systemd makes writable (and owns by the service user).
    flowlog = FlowLogConfig()
    logs_dir = Path("/var/log") / unit_value(unit, "Service", "LogsDirectory")
    assert flowlog.path.parent == logs_dir
    assert unit_value(unit, "Service", "LogsDirectoryMode") == "0750"  # records hold addresses


def test_oom_kill_of_a_worker_does_not_stop_the_appliance(unit):
    # The supervisor restarts a worker the kernel killed; OOMPolicy=stop would end the unit.
    assert unit_value(unit, "Service", "OOMPolicy") == "continue"


def _syscall_groups() -> dict[str, set[str]]:
    listing = _analyze("syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.split()[0])

    def expand(name: str) -> set[str]:
        out: set[str] = set()
        for item in groups.get(name, []):
            out |= expand(item) if item.startswith("@") else {item}
        return out

    return {name: expand(name) for name in groups}


def test_syscall_filter_allows_the_calls_the_appliance_makes():
    allowed = _syscall_groups()["@system-service"]
    needed = {
        "recvmmsg": "batch receive (appliance.batchio)",
        "sendmmsg": "batch send on the raw socket",
        "setsockopt": "SO_REUSEPORT, SO_RCVBUFFORCE, SO_ATTACH_REUSEPORT_CBPF",
        "sched_setaffinity": "worker pinning",
        "prctl": "PR_SET_PDEATHSIG and the process titles",
        "fchownat": "the control socket's group (os.chown)",
        "clone3": "fork and posix_spawn",
        "vfork": "posix_spawn of gunicorn",
        "execve": "gunicorn",
        "wait4": "reaping workers",
        "sendto": "sd_notify",
    }
    assert set(needed) <= allowed, {c: why for c, why in needed.items() if c not in allowed}
    assert "bpf" not in allowed  # steering is classic BPF through setsockopt, not bpf()


# ---- systemd's own judgement ---------------------------------------------------------------------


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here.

    `systemd-analyze verify` refuses a unit whose ExecStart= program is missing, and
    /opt/gwlb-appliance/venv exists only on the AMI; everything else is verified as shipped.
    """
    present = shutil.which("true") or "/bin/true"
    text = UNIT_FILE.read_text()
    copy = tmp_path / UNIT_FILE.name
    copy.write_text(text.replace(f"ExecStart={VENV}/bin/applianced", f"ExecStart={present}", 1))
    assert copy.read_text() != text
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    copy = _verifiable_copy(tmp_path)
    result = _analyze("verify", "--man=no", str(copy))
    # verify exits 0 even for unknown keys or bad values, which it reports and ignores: any word
    # about our file is a failure (other units on this machine may have words of their own).
    about_ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(copy) in line or UNIT_FILE.name in line
    ]
    assert result.returncode == 0 and not about_ours, result.stdout + result.stderr


def test_systemd_analyze_security_exposure_stays_low(tmp_path):
    copy = _verifiable_copy(tmp_path)
    result = _analyze("security", "--offline=yes", "--threshold=25", str(copy))
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security mode (systemd < 250)")
    # Exposure is 0-10 (--threshold is in tenths). Today's 2.2 leaves room for rounding, not for
    # dropping a protection.
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert overall and float(overall.group(1)) <= 2.5


def test_sysusers_file_creates_a_nologin_system_user(tmp_path):
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS_FILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    (entry,) = [line.split(":") for line in passwd if line.startswith(f"{SERVICE_USER}:")]
    assert int(entry[2]) < 1000  # a system user
    assert entry[6] == "/usr/sbin/nologin"
    assert f"{SERVICE_USER}:x:{entry[3]}:" in (tmp_path / "etc" / "group").read_text()


# ---- MemoryDenyWriteExecute=yes breaks nothing ---------------------------------------------------

# After the filter, the product's code: every module imported, pyroute2's netlink, the steering
# program, a recvmmsg batch, the Flask health app answering a request.
MDWE_CHILD = MDWE_PRELUDE + textwrap.dedent(
    """
    reason = install_mdwe_filter()
    if reason:
        print("skip:", reason)
        sys.exit(0)

    import importlib, pkgutil, socket
    import appliance, config, health, supervisor
    for package in (appliance, config, health, supervisor):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    import gunicorn.app.wsgiapp, gunicorn.workers.gthread
    from pyroute2 import IPRoute
    with IPRoute() as ipr:  # pyroute2's event loop and netlink socket
        assert ipr.get_links()
    from appliance.batchio import ReceiveBatch, SendBatch
    from appliance.steering import attach_steering
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    attach_steering(sock, 4)  # classic BPF through setsockopt
    sock.sendto(b"x" * 64, sock.getsockname())
    batch = ReceiveBatch(8)
    SendBatch(batch)
    assert batch.receive(sock.fileno()) == 1
    from health.wsgi import from_environment  # GWLB_RUNTIME_DIR: an empty directory
    response = from_environment().test_client().get("/")  # Flask, Werkzeug, Jinja
    assert response.status_code == 503, response.status_code  # no stats table: not healthy
    print("ok")
    """
)


def test_product_runs_under_memory_deny_write_execute(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", MDWE_CHILD],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "GWLB_RUNTIME_DIR": str(tmp_path)},
        timeout=60,
        check=False,
    )
    if result.stdout.startswith("skip:"):
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
