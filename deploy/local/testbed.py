"""Network namespaces for the emulated-GWLB test bed (DESIGN.md §4).

Why this shape: every veth is created directly inside its namespaces, so deleting the namespaces
removes everything and nothing is ever left in the root namespace. All traffic stays on
10.77.0.0/16 and fd77::/16 inside namespaces this module creates.

    {prefix}-a ── eth0 ─ to-a ──┐                        ┌── to-app1 ─ eth0 ── {prefix}-app1
                                ├── {prefix}-gwlb ───────┤
    {prefix}-b ── eth0 ─ to-b ──┘   (gwlbtun0)           └── to-appN ─ eth0 ── {prefix}-appN

Packets arriving in the gwlb namespace from to-a / to-b are policy-routed into the tun device
gwlbtun0, where the emulator reads them; what the emulator writes back into the tun follows the
main table to a or b.

The end of the module drives the emulator (gwlb_emulator.py) for tests and the demo: its argv,
and a reader for the JSON events it prints.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

LOCAL_DIR = Path(__file__).resolve().parent
TUN_NAME = "gwlbtun0"
TUN_MTU = 8500
ROUTE_TABLE = 100
STOP_TIMEOUT_S = 3.0
# Run inside a namespace: ETHTOOL_STXCSUM off for each named interface (no ethtool binary here).
_TX_CSUM_OFF = """
import ctypes, fcntl, socket, struct, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name in sys.argv[1:]:
    value = ctypes.create_string_buffer(struct.pack("II", 0x17, 0), 8)
    fcntl.ioctl(sock, 0x8946, struct.pack("16sP", name.encode(), ctypes.addressof(value)))
"""


class TestbedError(RuntimeError):
    """An `ip` command or a namespace operation failed; the message carries its stderr."""

    __test__ = False  # not a pytest test class, despite the name


T = TypeVar("T")


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """This thread inside network namespace `ns` for the block: sockets made there stay there."""
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        yield
    finally:
        if _libc.setns(original, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the original namespace")
        os.close(target)
        os.close(original)


def wait_until(pred: Callable[[], T], timeout_s: float, interval_s: float = 0.01) -> T:
    """Poll `pred` until it returns something truthy or `timeout_s` passes.

    Returns the last value of `pred` (falsy on timeout), so callers can assert on it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def _check(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_unusable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tun)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no tun support)"
    probe = f"gwprobe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        _check(["ip", "netns", "add", probe])
    except TestbedError as exc:
        return f"`ip netns add` does not work here: {exc}"
    try:
        _check(["ip", "netns", "del", probe])
    except TestbedError as exc:
        return f"`ip netns del` does not work here: {exc}"
    return None


def _parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp comes as pairs of lines: 'Udp: Name1 Name2 ...' then 'Udp: 1 2 ...'."""
    table: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = names_line.partition(":")
        _, _, values = values_line.partition(":")
        table[proto] = {n: int(v) for n, v in zip(names.split(), values.split(), strict=False)}
    return table


_SNMP6_PREFIXES = ("UdpLite6", "Udp6", "Icmp6", "Ip6")


def _parse_snmp6(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp6 has one 'Udp6OutDatagrams  12' per line; split it like snmp."""
    table: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        name, value = parts
        prefix = next((p for p in _SNMP6_PREFIXES if name.startswith(p)), "")
        table.setdefault(prefix, {})[name[len(prefix) :]] = int(value)
    return table


def _udp_ports_bound(proc_net_udp: str) -> set[int]:
    """Local ports of the sockets listed in /proc/net/udp{,6} ('sl local_address ...')."""
    ports = set()
    for line in proc_net_udp.splitlines():
        fields = line.split()
        if len(fields) > 2 and ":" in fields[1] and fields[0].endswith(":"):
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Testbed:
    """Namespaces a, b, gwlb and appliance 1..N wired as in the module docstring."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, prefix: str | None = None, appliances: int = 1, mtu: int = 9001) -> None:
        if not 1 <= appliances <= 50:
            raise ValueError("appliances must be between 1 and 50")
        self.prefix = prefix or f"gw{os.getpid() % 100000}{uuid.uuid4().hex[:3]}"
        self.appliances = appliances
        self.mtu = mtu
        self.created: list[str] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self.cleanups: list[Callable[[], None]] = []  # run at teardown, last first
        self._pdeathsig = shutil.which("setpriv")

    # --- names and addresses -------------------------------------------------------------

    @property
    def ns_a(self) -> str:
        return f"{self.prefix}-a"

    @property
    def ns_b(self) -> str:
        return f"{self.prefix}-b"

    @property
    def ns_gwlb(self) -> str:
        return f"{self.prefix}-gwlb"

    def ns_app(self, k: int) -> str:
        self._check_k(k)
        return f"{self.prefix}-app{k}"

    a_ip4 = "10.77.1.2"
    a_ip6 = "fd77:1::2"
    b_ip4 = "10.77.2.2"
    b_ip6 = "fd77:2::2"

    def gwlb_ip(self, k: int) -> str:
        """The GWLB-side address appliance k talks to."""
        self._check_k(k)
        return f"10.77.{100 + k}.1"

    def appliance_ip(self, k: int) -> str:
        self._check_k(k)
        return f"10.77.{100 + k}.2"

    def targets(self) -> list[tuple[str, str]]:
        """(appliance IP, GWLB IP) for every appliance: the emulator's --target values."""
        return [(self.appliance_ip(k), self.gwlb_ip(k)) for k in range(1, self.appliances + 1)]

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.appliances:
            raise ValueError(f"appliance {k} is not in 1..{self.appliances}")

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def build(self) -> None:
        """Create and wire every namespace (names are unique per bed, so no "ensure" logic)."""
        ks = range(1, self.appliances + 1)
        host_nets = [(self.ns_a, "to-a", 1), (self.ns_b, "to-b", 2)]
        for ns in [self.ns_gwlb, self.ns_a, self.ns_b, *map(self.ns_app, ks)]:
            self._add_ns(ns)
        for ns, peer, net in host_nets:
            self._veth(ns, peer)
            self._addr(ns, "eth0", f"10.77.{net}.2/24", f"fd77:{net}::2/64")
            self._addr(self.ns_gwlb, peer, f"10.77.{net}.1/24", f"fd77:{net}::1/64")
            self.ip(ns, "route", "add", "default", "via", f"10.77.{net}.1")
            self.ip(ns, "-6", "route", "add", "default", "via", f"fd77:{net}::1")
        for k in ks:
            self._veth(self.ns_app(k), f"to-app{k}")
            self._addr(self.ns_app(k), "eth0", f"{self.appliance_ip(k)}/24")
            self._addr(self.ns_gwlb, f"to-app{k}", f"{self.gwlb_ip(k)}/24")
        self._tun_and_rules([peer for _, peer, _ in host_nets])
        for ns in [self.ns_a, self.ns_b, *map(self.ns_app, ks)]:
            self.tx_checksum_off(ns, ["eth0"])
        self.tx_checksum_off(self.ns_gwlb, ["to-a", "to-b", *(f"to-app{k}" for k in ks)])

    def tx_checksum_off(self, ns: str, ifaces: list[str]) -> None:
        """Checksums computed before a packet leaves, as on a real wire.

        With veth's default TX checksum offload a packet crosses with only the pseudo-header
        sum in its checksum field (CHECKSUM_PARTIAL), and a raw socket on the far side sees
        that unfinished value: the emulator would flag every reply an appliance sends through
        an ordinary UDP socket.
        """
        _check(self._argv(ns, [sys.executable, "-c", _TX_CSUM_OFF, *ifaces]))

    def _add_ns(self, ns: str) -> None:
        _check(["ip", "netns", "add", ns])
        self.created.append(ns)
        # Defaults first, so interfaces created later inherit them: no RAs, no DAD wait.
        forwarding = "1" if ns == self.ns_gwlb else "0"
        settings = {
            "net.ipv4.ip_forward": forwarding,
            "net.ipv6.conf.all.forwarding": forwarding,
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.ipv4.conf.all.send_redirects": "0",
            "net.ipv4.conf.default.send_redirects": "0",
        }
        for scope in ("all", "default"):
            settings[f"net.ipv6.conf.{scope}.accept_ra"] = "0"
            settings[f"net.ipv6.conf.{scope}.accept_dad"] = "0"
            settings[f"net.ipv6.conf.{scope}.disable_ipv6"] = "0"
        self.sysctl(ns, settings)
        self.ip(ns, "link", "set", "lo", "up")

    def _veth(self, ns: str, peer: str) -> None:
        """eth0 in `ns`, `peer` in the gwlb namespace; never touches the root namespace."""
        _check(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "mtu",
                str(self.mtu),
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                self.ns_gwlb,
                "mtu",
                str(self.mtu),
            ]
        )
        self.sysctl(self.ns_gwlb, {f"net.ipv4.conf.{peer}.rp_filter": "0"})
        self.ip(ns, "link", "set", "eth0", "up")
        self.ip(self.ns_gwlb, "link", "set", peer, "up")

    def _addr(self, ns: str, dev: str, *cidrs: str) -> None:
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            self.ip(ns, "addr", "add", cidr, "dev", dev, *extra)

    def _tun_and_rules(self, host_ifaces: list[str]) -> None:
        gw = self.ns_gwlb
        self.ip(gw, "tuntap", "add", "dev", TUN_NAME, "mode", "tun")
        # No IPv6 link-local on the tun: the kernel would otherwise send its own MLD/RS
        # packets into it, and the emulator would take them for client traffic.
        self.ip(gw, "link", "set", TUN_NAME, "mtu", str(TUN_MTU), "addrgenmode", "none", "up")
        self.sysctl(gw, {f"net.ipv4.conf.{TUN_NAME}.rp_filter": "0"})
        for family in ("-4", "-6"):
            self.ip(
                gw, family, "route", "add", "default", "dev", TUN_NAME, "table", str(ROUTE_TABLE)
            )
            for iface in host_ifaces:
                self.ip(
                    gw,
                    family,
                    "rule",
                    "add",
                    "iif",
                    iface,
                    "table",
                    str(ROUTE_TABLE),
                    "priority",
                    "100",
                )

    def teardown(self) -> None:
        """Stop every tracked process, then delete every namespace this bed created."""
        stuck = []
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):  # teardown goes on whatever one cleanup does
                cleanup()
        self.cleanups.clear()
        for proc in list(self.processes):
            try:
                self.stop(proc)
            except subprocess.TimeoutExpired:
                stuck.append(proc.pid)  # survived SIGKILL (D state?): still delete the netns
        self._delete_namespaces()
        if stuck:
            raise TestbedError(f"processes did not exit after SIGKILL: {stuck}")

    def _delete_namespaces(self) -> None:
        errors = []
        for ns in reversed(self.created):
            done = subprocess.run(
                ["ip", "netns", "del", ns], capture_output=True, text=True, check=False
            )
            if done.returncode != 0 and "No such file" not in done.stderr:
                errors.append(f"{ns}: {done.stderr.strip()}")
        self.created.clear()
        if errors:
            raise TestbedError("could not delete namespaces: " + "; ".join(errors))

    # --- running things in namespaces ----------------------------------------------------

    def ip(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`ip -n ns ARGS`, raising TestbedError with stderr on failure."""
        return _check(["ip", "-n", ns, *args])

    def sysctl(self, ns: str, settings: dict[str, str]) -> None:
        pairs = [f"{k}={v}" for k, v in settings.items()]
        _check(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *pairs])

    def _argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside `ns` (check defaults to False, as in subprocess)."""
        return subprocess.run(self._argv(ns, argv), **kw)

    def read(self, ns: str, path: str) -> str:
        """A /proc/net file as seen from inside `ns`."""
        return _check(self._argv(ns, ["cat", path])).stdout

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside `ns`, tracked: teardown stops it by its PID.

        `ip netns exec` execs the command in place, so the PID is the command's own. With
        setpriv available the child also gets SIGTERM if this process dies without teardown
        (tied to the calling thread, so call from a thread that outlives the process).
        """
        prefix = [self._pdeathsig, "--pdeathsig", "TERM", "--"] if self._pdeathsig else []
        proc = subprocess.Popen(self._argv(ns, [*prefix, *argv]), **kw)
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait, SIGKILL after `timeout_s`; close its pipes. Returns the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                # A broken stdin pipe may fail to flush: the process is gone either way.
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.processes:
            self.processes.remove(proc)
        return proc.returncode

    # --- observing namespaces ------------------------------------------------------------

    def udp_ports_bound(self, ns: str) -> set[int]:
        return _udp_ports_bound(self.read(ns, "/proc/net/udp") + self.read(ns, "/proc/net/udp6"))

    def wait_udp_bound(
        self, ns: str, port: int, timeout_s: float = 5.0, proc: subprocess.Popen[Any] | None = None
    ) -> bool:
        """True once some socket in `ns` is bound to UDP `port` (IPv4 or IPv6).

        With `proc`, gives up early (False) when that process exits first.
        """

        def outcome() -> str:
            if port in self.udp_ports_bound(ns):
                return "bound"
            return "exited" if proc is not None and proc.poll() is not None else ""

        return wait_until(outcome, timeout_s, 0.05) == "bound"

    def snmp(self, ns: str) -> dict[str, dict[str, int]]:
        """/proc/net/snmp of `ns`, e.g. snmp(ns)["Udp"]["NoPorts"]."""
        return _parse_snmp(self.read(ns, "/proc/net/snmp"))

    def snmp6(self, ns: str) -> dict[str, dict[str, int]]:
        """/proc/net/snmp6 of `ns`, split like snmp(): snmp6(ns)["Udp6"]["OutDatagrams"]."""
        return _parse_snmp6(self.read(ns, "/proc/net/snmp6"))


# --- driving the emulator from tests and the demo ---------------------------------------------


def emulator_command(
    targets: list[tuple[str, str]],
    *,
    report: str | None = None,
    events: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """argv of gwlb_emulator.py, for Testbed.popen in the gwlb namespace."""
    argv = [sys.executable, str(LOCAL_DIR / "gwlb_emulator.py")]
    argv += [f"--target={t}={g}" for t, g in targets]
    argv += (["--events"] if events else []) + ([f"--report={report}"] if report else [])
    return [*argv, *extra]


def launch_emulator(
    tb: Testbed, report: Path, log: Path, extra: Sequence[str] = ()
) -> EmulatorHandle:
    """Start the emulator in tb's gwlb namespace (events on a pipe, stderr to `log`)."""
    with open(log, "wb") as stderr:
        proc = tb.popen(
            tb.ns_gwlb,
            emulator_command(tb.targets(), report=str(report), extra=extra),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    return EmulatorHandle(proc, str(report))


class LineReader:
    """Collects what a process writes to a pipe, line by line, in a thread; waits on it.

    `lines` holds every line (decoded, newline kept); `events` the lines that were JSON objects.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for line in stream:
                self._add(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the process is gone
        with self._cond:
            self._cond.notify_all()

    def _add(self, raw: bytes) -> None:
        line = raw.decode(errors="replace")
        try:
            event = json.loads(line) if line.startswith("{") else None
        except ValueError:
            event = None
        with self._cond:
            self.lines.append(line)
            if isinstance(event, dict):
                self.events.append(event)
            self._cond.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events whose "event" field is `kind`."""
        with self._cond:
            return [e for e in self.events if e.get("event") == kind]

    def wait_for(self, pred: Callable[[LineReader], Any], timeout_s: float) -> Any:
        """Wait until pred(self) is truthy, the stream ends, or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                value = pred(self)
                remaining = deadline - time.monotonic()
                if value or remaining <= 0 or not self._thread.is_alive():
                    return value
                self._cond.wait(min(remaining, 0.5))

    def join(self, timeout_s: float = 3.0) -> None:
        self._thread.join(timeout_s)


class EmulatorHandle:
    """A running emulator (started by the caller, e.g. with Testbed.popen) and its events."""

    def __init__(self, proc: subprocess.Popen[bytes], report_path: str | None) -> None:
        if proc.stdout is None:
            raise ValueError("start the emulator with stdout=subprocess.PIPE")
        self.proc = proc
        self.report_path = report_path
        self.output = LineReader(proc.stdout)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.output.of(kind)

    def wait_event(
        self,
        kind: str,
        timeout_s: float,
        count: int = 1,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
    ) -> bool:
        """True once `count` events of `kind` matching `where` have been printed."""
        return bool(
            self.output.wait_for(
                lambda r: sum(1 for e in r.events if e.get("event") == kind and where(e)) >= count,
                timeout_s,
            )
        )

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        return self.wait_event("ready", timeout_s)

    def finish(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """SIGTERM, wait for the exit (SIGKILL after `timeout_s`), return the report."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.output.join()
        if self.report_path is None or not os.path.exists(self.report_path):
            return {}
        with open(self.report_path) as f:
            report: dict[str, Any] = json.load(f)
        return report


def out_datagrams(tb: Testbed, ns: str, version: int) -> int:
    """UDP datagrams sent so far from `ns` over IPv4 or IPv6."""
    if version == 4:
        return tb.snmp(ns)["Udp"]["OutDatagrams"]
    return tb.snmp6(ns)["Udp6"]["OutDatagrams"]


def _grown(tb: Testbed, ns: str, version: int, before: int) -> Callable[[], bool]:
    return lambda: out_datagrams(tb, ns, version) > before


def feed_lines(
    tb: Testbed,
    proc: subprocess.Popen[bytes],
    ns: str,
    version: int,
    lines: Sequence[bytes],
    timeout_s: float = 2.0,
) -> list[bool]:
    """Write lines to a UDP sender's stdin (e.g. `nc -u`), one datagram each.

    Each line is written only after the previous one has left `ns` (its UDP OutDatagrams
    grew), so the sender never coalesces two lines into one datagram. Returns, per line,
    whether it was seen leaving.
    """
    if proc.stdin is None:
        raise ValueError("start the sender with stdin=subprocess.PIPE")
    left = []
    for line in lines:
        before = out_datagrams(tb, ns, version)
        proc.stdin.write(line)
        proc.stdin.flush()
        left.append(bool(wait_until(_grown(tb, ns, version, before), timeout_s, 0.02)))
    return left


def ping(tb: Testbed, version: int, count: int, *extra: str) -> set[int]:
    """Ping a from b (0.2 s apart, 1 s wait); the icmp_seq numbers that were answered."""
    dst = tb.a_ip4 if version == 4 else tb.a_ip6
    argv = ["ping", f"-{version}", "-c", str(count), "-i", "0.2", "-W", "1", *extra, dst]
    done = tb.run(tb.ns_b, argv, capture_output=True, text=True, timeout=30 + count)
    return {int(m) for m in re.findall(r"icmp_seq=(\d+)", done.stdout)}


def no_ports(tb: Testbed) -> dict[str, int]:
    """UDP NoPorts (datagrams answered with port unreachable) in gwlb and every appliance."""
    names = [tb.ns_gwlb, *(tb.ns_app(k) for k in range(1, tb.appliances + 1))]
    return {ns: tb.snmp(ns)["Udp"]["NoPorts"] for ns in names}
