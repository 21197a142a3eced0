"""The demo's firewall scene, on the same emulated GWLB: rules that reject, seen from b.

From b to a: a TCP connection to an allowed port succeeds; one to a rejected port is refused at
once (the appliance answers the SYN with a RST inside the flow, so b does not wait out its
timeout); a UDP datagram to a rejected port brings an ICMP "administratively prohibited" back,
which b's socket reports as an error. Both rejected ports have a listener in a, so it is the
appliance that refuses, not a closed port. Used by demo.py and tests/e2e/test_firewall.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed import Testbed, wait_until

ALLOWED_TCP, REJECTED_TCP, REJECTED_UDP = 8080, 23, 514
RULES = f"""
[[policy.rules]]
name = "firewall-no-telnet"
action = "reject"
match = {{ protocol = "tcp", dst_port = {REJECTED_TCP} }}

[[policy.rules]]
name = "firewall-no-syslog"
action = "reject"
match = {{ protocol = "udp", dst_port = {REJECTED_UDP} }}
"""
CONNECT_TIMEOUT_S = 5

# Run in b: send to a's port twice (the error of the first arrives before the second) and say
# what the socket reported. Linux maps ICMP type 3 code 13 to EHOSTUNREACH and ICMPv6 type 1
# code 1 to EACCES.
_UDP_PROBE = """
import errno, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(2.0)
s.connect((sys.argv[1], int(sys.argv[2])))
try:
    s.send(b"<13>hello")
    s.recv(100)
    print("answered")
except OSError as error:
    print(errno.errorcode.get(error.errno, "timeout") if error.errno else "timeout")
"""


@dataclass
class Attempt:
    ok: bool
    elapsed_s: float
    said: str


def tcp_connect(tb: Testbed, version: int, port: int) -> Attempt:
    """`nc -z` from b to a's `port`: did it connect, how long it took, what nc said."""
    dst = tb.a_ip4 if version == 4 else tb.a_ip6
    argv = ["nc", f"-{version}", "-z", "-v", "-w", str(CONNECT_TIMEOUT_S), dst, str(port)]
    began = time.monotonic()
    done = tb.run(tb.ns_b, argv, capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S + 5)
    elapsed = time.monotonic() - began
    return Attempt(done.returncode == 0, elapsed, (done.stderr or done.stdout).strip())


def udp_send(tb: Testbed, version: int, port: int) -> str:
    """What b's socket reports after a datagram to a's `port`: an errno name, or "answered"."""
    dst = tb.a_ip4 if version == 4 else tb.a_ip6
    argv = [sys.executable, "-c", _UDP_PROBE, dst, str(port)]
    done = tb.run(tb.ns_b, argv, capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or done.stderr.strip()


@contextmanager
def listeners(tb: Testbed, version: int) -> Iterator[None]:
    """TCP listeners in a on the allowed and the rejected port, a UDP one on the rejected port."""
    procs = [
        tb.popen(tb.ns_a, ["nc", f"-{version}", "-l", "-k", str(port)], **_quiet())
        for port in (ALLOWED_TCP, REJECTED_TCP)
    ]
    procs.append(
        tb.popen(tb.ns_a, ["nc", f"-{version}", "-u", "-l", str(REJECTED_UDP)], **_quiet())
    )
    try:
        if not tb.wait_udp_bound(tb.ns_a, REJECTED_UDP, 5.0):
            raise RuntimeError("nc in a never bound its UDP port")
        if not wait_until(lambda: tcp_listening(tb, {ALLOWED_TCP, REJECTED_TCP}), 5.0, 0.02):
            raise RuntimeError("nc in a never listened on its TCP ports")
        yield
    finally:
        for proc in procs:
            tb.stop(proc)


def tcp_listening(tb: Testbed, ports: set[int]) -> bool:
    """Whether sockets in a listen on all of `ports` (state 0A in /proc/net/tcp{,6})."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in tb.read(tb.ns_a, table).splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                listening.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports <= listening


def _quiet() -> dict[str, object]:
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def flows_table(applianced: str, runtime: Path) -> str:
    """What `appliancectl flows` prints for the daemon whose runtime directory is `runtime`."""
    appliancectl = str(Path(applianced).with_name("appliancectl"))
    argv = [appliancectl, "--socket", str(runtime / "control.sock"), "flows"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    return (done.stdout + done.stderr).rstrip()


def run_scene(tb: Testbed, version: int) -> dict[str, object]:
    """The scene, printed; its findings returned for the test."""
    with listeners(tb, version):
        allowed = tcp_connect(tb, version, ALLOWED_TCP)
        rejected = tcp_connect(tb, version, REJECTED_TCP)
        udp = udp_send(tb, version, REJECTED_UDP)
    print(f"b: nc -z a {ALLOWED_TCP}: {'connected' if allowed.ok else 'FAILED'} ({allowed.said})")
    verdict = "refused" if not rejected.ok else "CONNECTED (not rejected!)"
    print(
        f"b: nc -z a {REJECTED_TCP}: {verdict} after {rejected.elapsed_s * 1000:.0f} ms "
        f"({rejected.said})"
    )
    print(f"b: UDP to a {REJECTED_UDP}: the socket reports {udp}")
    return {"allowed": allowed, "rejected": rejected, "udp": udp}
