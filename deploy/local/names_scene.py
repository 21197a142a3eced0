"""The demo's names scene, on the same emulated GWLB: egress by name, seen from b.

A TLS server in a (`openssl s_server` with a throwaway self-signed certificate) is reached from b
under two server names (`openssl s_client -servername`): allowed.example completes its handshake;
denied.example is reset at once, both ways (the appliance reads the name in the ClientHello and
answers with a RST in the flow, so neither end waits for a timeout). A DNS query from b for a
name under tracker.example is answered REFUSED by the appliance itself, at once: no DNS server
runs in a. Used by demo.py and tests/e2e/test_names.py.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed import Testbed, wait_until

TLS_PORT = 8443
ALLOWED, DENIED, DENIED_DNS = "allowed.example", "denied.example", "ads.tracker.example"
RULES = """
[[policy.rules]]
name = "names-no-denied-example"
action = "reject"
match = { tls_sni = ["denied.example"] }

[[policy.rules]]
name = "names-no-trackers"
action = "reject"
match = { dns_name = ["*.tracker.example"] }
"""
TIMEOUT_S = 5

# Run in b: one DNS query over UDP to a's port 53; print the answer's response code (or
# "timeout") and how long it took. No DNS library: the query is 12 bytes of header and the name.
_DNS_PROBE = """
import socket, struct, sys, time
name, server = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\\0"
query += struct.pack("!HH", 1, 1)
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(3.0)
began = time.monotonic()
s.sendto(query, (server, 53))
try:
    answer = s.recv(512)
    rcode = answer[3] & 0x0F
    said = {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED"}.get(rcode, str(rcode))
except OSError:
    said = "timeout"
print(said, round((time.monotonic() - began) * 1000))
"""


@dataclass
class Attempt:
    ok: bool  # the TLS handshake completed
    elapsed_s: float
    said: str


def tls_connect(tb: Testbed, version: int, name: str) -> Attempt:
    """`openssl s_client` from b to a's TLS server with server name `name`."""
    dst = tb.a_ip4 if version == 4 else f"[{tb.a_ip6}]"
    argv = [
        "timeout", str(TIMEOUT_S), "openssl", "s_client", "-brief", "-connect",
        f"{dst}:{TLS_PORT}", "-servername", name,
    ]  # fmt: skip
    began = time.monotonic()
    done = tb.run(
        tb.ns_b,
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S + 5,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - began
    said = (done.stderr + done.stdout).strip()
    established = "CONNECTION ESTABLISHED" in said
    summary = next((line for line in said.splitlines() if "errno" in line or "reset" in line), "")
    return Attempt(
        established, elapsed, "handshake done" if established else summary or said[-200:]
    )


def dns_query(tb: Testbed, version: int, name: str) -> str:
    """What b hears back for a DNS query for `name` sent to a: a response code and ms."""
    dst = tb.a_ip4 if version == 4 else tb.a_ip6
    done = tb.run(
        tb.ns_b,
        [sys.executable, "-c", _DNS_PROBE, name, dst],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout.strip() or done.stderr.strip()


@contextmanager
def tls_server(tb: Testbed, version: int) -> Iterator[None]:
    """openssl s_server in a on TLS_PORT over IP `version`, with a certificate made now."""
    with tempfile.TemporaryDirectory(prefix="gwlb-names-") as work:
        cert, key = Path(work) / "cert.pem", Path(work) / "key.pem"
        request = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
        argv = ["openssl", *request.split(), "-subj", f"/CN={ALLOWED}"]
        argv += ["-keyout", str(key), "-out", str(cert)]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        where = f"[::]:{TLS_PORT}" if version == 6 else f"0.0.0.0:{TLS_PORT}"
        argv = ["openssl", "s_server", "-quiet", "-naccept", "100", f"-{version}"]
        argv += ["-accept", where, "-cert", str(cert), "-key", str(key)]
        proc = tb.popen(
            tb.ns_a,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not wait_until(lambda: _listening(tb, TLS_PORT), 5.0, 0.02):
                raise RuntimeError("openssl s_server in a never listened")
            yield
        finally:
            tb.stop(proc)


def _listening(tb: Testbed, port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in tb.read(tb.ns_a, table).splitlines()[1:]:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False


def run_scene(tb: Testbed, version: int) -> dict[str, object]:
    """The scene, printed; its findings returned for the test."""
    with tls_server(tb, version):
        allowed = tls_connect(tb, version, ALLOWED)
        denied = tls_connect(tb, version, DENIED)
    dns = dns_query(tb, version, DENIED_DNS)
    print(
        f"b: openssl s_client -servername {ALLOWED}: "
        + ("handshake done" if allowed.ok else f"FAILED ({allowed.said})")
    )
    print(
        f"b: openssl s_client -servername {DENIED}: "
        + (
            f"reset after {denied.elapsed_s * 1000:.0f} ms ({denied.said})"
            if not denied.ok
            else "HANDSHAKE DONE (not refused!)"
        )
    )
    print(f"b: DNS query for {DENIED_DNS}: {dns.replace(' ', ' after ', 1)} ms")
    return {"allowed": allowed, "denied": denied, "dns": dns}
