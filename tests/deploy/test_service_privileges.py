"""applianced started with what the unit gives it, and nothing more: does it still work?

The unit runs the daemon with three ambient capabilities, a bounding set of the same three,
NoNewPrivileges and MemoryDenyWriteExecute. Here the real daemon is started under exactly those
(the capabilities read from the unit file, the MDWE seccomp filter of deployfiles.MDWE_PRELUDE),
in a network namespace of its own with one veth interface, and must boot, notify READY=1 from
its main process, pass its health check on port 80, reload on SIGHUP and stop with status 0.

What this cannot show: the uid stays 0 (with SECBIT_NOROOT, so exec grants no capabilities beyond
the ambient ones, as for a non-root user), because this machine's Python may live where another
user cannot read it. File permissions as the gwlb-appliance user are not exercised here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deployfiles import CAPABILITIES, MDWE_PRELUDE, UNIT_FILE, parse_unit, unit_value
from testbed import netns_unusable_reason, wait_until

from config.loader import default_config_path

pytestmark = pytest.mark.netns

APPLIANCED = str(Path(sys.executable).with_name("applianced"))
APPLIANCE_IP, PEER_IP = "198.18.250.2", "198.18.250.1"
CAP_NUMBERS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
SCM_CREDENTIALS = 2
# Installs the MDWE filter, then becomes applianced (argv[1:]): same pid, filter inherited.
WRAPPER = MDWE_PRELUDE + (
    "reason = install_mdwe_filter()\n"
    "if reason:\n"
    "    sys.exit('cannot install the MDWE filter: ' + reason)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)
HEALTH_PROBE = f"""
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + 15
while True:
    try:
        code = urllib.request.urlopen("http://{APPLIANCE_IP}/", timeout=2).status
    except urllib.error.HTTPError as error:
        code = error.code
    except OSError:
        code = 0
    if code == 200 or time.monotonic() > deadline:
        print(code)
        break
    time.sleep(0.2)
"""


@dataclass
class Run:
    """What the daemon did under the unit's privileges."""

    main_pid: int = 0
    notifications: list[tuple[int, str]] = field(default_factory=list)  # (sender pid, message)
    status: dict[str, str] = field(default_factory=dict)  # /proc/<main>/status after READY
    children_caps: dict[int, str] = field(default_factory=dict)  # pid -> CapEff
    health: int = 0
    mtu: int = 0
    reload_logged: bool = False
    exit_code: int | None = None
    stderr: str = ""


def _unusable() -> str | None:
    if reason := netns_unusable_reason():
        return reason
    for tool in ("setpriv",):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} (util-linux) is not installed"
    if not Path(APPLIANCED).exists():
        return f"{APPLIANCED} is not installed (pip install -e .)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A namespace with eth0 (MTU 1500, below what the appliance wants) and a default route.

    Both veth ends live inside it, so deleting it leaves nothing behind; every process still in
    it at the end is one this test started, and is killed by its pid.
    """
    name = f"gwdeploy{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "add", "eth0", "mtu", "1500", "type", "veth", "peer", "peer0")
        _ip("-n", name, "addr", "add", f"{APPLIANCE_IP}/24", "dev", "eth0")
        _ip("-n", name, "addr", "add", f"{PEER_IP}/24", "dev", "peer0")
        for link in ("lo", "eth0", "peer0"):
            _ip("-n", name, "link", "set", link, "up")
        _ip("-n", name, "route", "add", "default", "via", PEER_IP, "dev", "eth0")
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _notify_socket(path: Path) -> socket.socket:
    """Like systemd's: a datagram socket that learns each sender's pid (SO_PASSCRED)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def _drain_notifications(sock: socket.socket, into: list[tuple[int, str]]) -> None:
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return
        pid = next(
            (struct.unpack("iII", d)[0] for lvl, kind, d in ancillary if kind == SCM_CREDENTIALS),
            0,
        )
        into.extend((pid, line) for line in data.decode().splitlines())


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


def _argv(ns: str, config: Path) -> list[str]:
    unit = parse_unit(UNIT_FILE.read_text())
    caps = unit_value(unit, "Service", "AmbientCapabilities").split()
    assert unit_value(unit, "Service", "NoNewPrivileges") == "yes"
    assert unit_value(unit, "Service", "MemoryDenyWriteExecute") == "yes"
    spec = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    return [
        *("ip", "netns", "exec", ns),
        *("setpriv", "--pdeathsig", "TERM"),
        *("--securebits", "+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked"),
        *("--inh-caps", spec, "--ambient-caps", spec, "--bounding-set", spec),
        "--no-new-privs",
        *("--", sys.executable, "-c", WRAPPER, APPLIANCED),
        *("--config", str(config), "--workers", "2"),
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if reason := _unusable():
        pytest.skip(f"cannot start the daemon in a namespace: {reason}")
    work = tmp_path_factory.mktemp("privileges")
    runtime = work / "run"
    config = work / "appliance.toml"
    text = default_config_path().read_text()
    config.write_text(
        text.replace('# dir = "/run/gwlb-appliance"', f'dir = "{runtime}"').replace(
            "manage = false",
            "manage = true",  # as the AMI's config has it
        )
    )
    notify = _notify_socket(work / "notify")
    stderr_path = work / "applianced.stderr"
    result = Run()
    with namespace() as ns, open(stderr_path, "wb") as stderr, notify:
        env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify")}
        proc = subprocess.Popen(_argv(ns, config), stderr=stderr, env=env)
        result.main_pid = proc.pid  # ip netns exec, setpriv and the wrapper all exec in place
        try:

            def ready() -> bool:
                _drain_notifications(notify, result.notifications)
                if proc.poll() is not None:
                    return True
                return (proc.pid, "READY=1") in result.notifications

            wait_until(ready, 20.0, 0.05)
            assert proc.poll() is None, f"applianced exited:\n{stderr_path.read_text()}"
            assert (proc.pid, "READY=1") in result.notifications, stderr_path.read_text()
            result.status = _status(proc.pid)
            result.children_caps = {pid: _status(pid)["CapEff"] for pid in _descendants(proc.pid)}
            probe = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", HEALTH_PROBE],
                capture_output=True,
                text=True,
                timeout=30,
            )
            result.health = int(probe.stdout.strip() or 0)
            mtu = subprocess.run(
                ["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/mtu"],
                capture_output=True,
                text=True,
            )
            result.mtu = int(mtu.stdout)
            proc.send_signal(signal.SIGHUP)
            result.reload_logged = bool(
                wait_until(lambda: "reload: " in stderr_path.read_text(), 5.0, 0.05)
            )
            proc.send_signal(signal.SIGTERM)
            result.exit_code = proc.wait(15)
            # A datagram is queued when sendmsg returns: once the daemon has exited, all it sent
            # is there to drain.
            _drain_notifications(notify, result.notifications)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    result.stderr = stderr_path.read_text()
    yield result


def test_the_daemon_boots_and_notifies_ready_from_its_main_process(run):
    assert (run.main_pid, "READY=1") in run.notifications, run.stderr


def test_it_holds_exactly_the_units_capabilities_and_no_new_privileges(run):
    mask = f"{sum(1 << CAP_NUMBERS[c] for c in CAPABILITIES):016x}"
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert run.status[key] == mask, key
    assert run.status["NoNewPrivs"] == "1"
    assert run.status["Seccomp"] == "2"  # the MDWE filter is on


def test_workers_and_the_health_service_keep_the_capabilities(run):
    # Forked workers and the exec'd gunicorn: ambient capabilities survive both.
    mask = f"{sum(1 << CAP_NUMBERS[c] for c in CAPABILITIES):016x}"
    assert len(run.children_caps) >= 3, run.children_caps  # 2 workers and gunicorn at least
    assert set(run.children_caps.values()) == {mask}


def test_the_health_check_passes_on_port_80(run):
    # Binding port 80 needs CAP_NET_BIND_SERVICE; 200 needs live workers (raw socket: CAP_NET_RAW).
    assert run.health == 200, run.stderr


def test_the_interface_setup_raises_the_mtu(run):
    assert run.mtu == 9001, run.stderr  # CAP_NET_ADMIN at work


def test_sighup_reloads_and_sigterm_stops_cleanly(run):
    assert run.reload_logged, run.stderr
    assert run.exit_code == 0, run.stderr
    assert (run.main_pid, "STOPPING=1") in run.notifications


def test_only_the_main_process_notifies(run):
    # gunicorn would send its own READY=1 if it inherited NOTIFY_SOCKET (healthproc drops it).
    assert {pid for pid, _ in run.notifications} == {run.main_pid}, run.notifications
