"""Profile the worker on firewall traffic: TCP connections with whole handshakes, judged by a
policy of 62 rules (48 with IPv4 and IPv6 CIDRs) over 4 GWLB endpoints, two of which deny by
default.

    python3 deploy/bench/firewall_profile.py [--batches 300]

What users send, not what flatters us: every batch opens 8 new connections (SYN, SYN-ACK, ACK,
data both ways, FIN both ways, ACK: 64 packets), so each packet pays its share of a new flow's
parse, its decision over the rules and its place in the flow table; a second case sends only data
packets of connections already decided (the steady state of long flows). The baseline is measured
in the same run: the shipped demo's pass-through, the path with no flow table
(worker_profile.py). Prints µs of Python per packet and the ratio to the baseline. Needs root only
for the raw socket it opens (it never sends).
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw, raw
from worker_profile import Bench, mix

from appliance.policy import Policy
from config.loader import parse_config

ENDPOINTS = ["2b8ee1d4db0c51c4", "00000000000000b2", "7f00aa11bb22cc33", "0123456789abcdef"]
DENY_BY_DEFAULT = ENDPOINTS[2:]  # these two end with a catch-all reject of their own


def firewall_policy() -> Policy:
    """15 rules per endpoint (62 in all, 48 of them with CIDRs): web to 10 networks (each an
    IPv4 and an IPv6 one) allowed, telnet rejected, DNS to a resolver, the metadata address
    dropped, ...; two endpoints end with their own default deny."""
    rules = []
    for e, endpoint in enumerate(ENDPOINTS):
        nets4 = [f"10.{e}.{k}.0/24" for k in range(10)]
        nets6 = [f"fd{e:02x}:{k:x}::/48" for k in range(10)]
        rules += [
            _rule(f"e{e}-metadata", "drop", endpoint, 'dst = ["169.254.169.254/32"]'),
            _rule(f"e{e}-telnet", "reject", endpoint, 'protocol = "tcp", dst_port = 23'),
        ]
        for k in range(10):
            cidrs = f'"{nets4[k]}", "{nets6[k]}"'
            web = f'protocol = 6, dst = [{cidrs}], dst_port = [80, 443, "8000-8999"]'
            rules.append(_rule(f"e{e}-web{k}", "pass", endpoint, web))
        rules += [
            _rule(
                f"e{e}-dns",
                "pass",
                endpoint,
                'protocol = "udp", dst = ["10.200.0.2/32"], dst_port = 53',
            ),
            _rule(f"e{e}-ssh-lab", "reject", endpoint, 'src = ["10.250.0.0/16"], dst_port = 22'),
            _rule(f"e{e}-ntp", "pass", endpoint, 'protocol = "udp", dst_port = 123'),
        ]
        if endpoint in DENY_BY_DEFAULT:
            rules.append(_rule(f"e{e}-deny", "reject", endpoint, ""))
    return parse_config("".join(rules)).policy


def _rule(name: str, action: str, endpoint: str, match: str) -> str:
    conditions = f'endpoint = "{endpoint}"' + (f", {match}" if match else "")
    return f'[[policy.rules]]\nname = "{name}"\naction = "{action}"\nmatch = {{ {conditions} }}\n'


def gwlb(inner: Packet, endpoint: str) -> bytes:
    protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
    options = (
        bytes.fromhex("01080102")
        + bytes.fromhex(endpoint)
        + bytes.fromhex("01080202")
        + bytes(8)
        + bytes.fromhex("01080301")
        + bytes.fromhex("0badf00d")
    )
    return struct.pack("!BBHI", 8, 0, protocol, 0) + options + raw(inner)


def connection(k: int, port: int) -> list[bytes]:
    """One TCP connection's 8 packets, both ways; every fourth over IPv6; spread over the
    endpoints and over allowed and denied destinations."""
    e = k % len(ENDPOINTS)
    endpoint = ENDPOINTS[e]
    v6 = k % 4 == 3
    allowed = k % 5 != 4  # one in five goes where no web rule allows it
    third = k % 10 if allowed else 99
    if v6:
        client, server = "fd99::5", str(ipaddress.IPv6Address(f"fd{e:02x}:{third % 10:x}::80"))
        ip_c, ip_s = IPv6(src=client, dst=server), IPv6(src=server, dst=client)
    else:
        client, server = "10.99.0.5", f"10.{e}.{third % 256}.80"
        ip_c, ip_s = IP(src=client, dst=server), IP(src=server, dst=client)
    c, s = {"sport": port, "dport": 443}, {"sport": 443, "dport": port}
    packets = [
        ip_c / TCP(**c, flags="S", seq=100),
        ip_s / TCP(**s, flags="SA", seq=500, ack=101),
        ip_c / TCP(**c, flags="A", seq=101, ack=501),
        ip_c / TCP(**c, flags="PA", seq=101, ack=501) / Raw(b"GET / HTTP/1.1\r\n\r\n"),
        ip_s / TCP(**s, flags="PA", seq=501, ack=119) / Raw(b"HTTP/1.1 200 OK\r\n\r\n"),
        ip_c / TCP(**c, flags="FA", seq=119, ack=520),
        ip_s / TCP(**s, flags="FA", seq=520, ack=120),
        ip_c / TCP(**c, flags="A", seq=120, ack=521),
    ]
    return [gwlb(p, endpoint) for p in packets]


def run(bench: Bench, batches: list[list[bytes]]) -> float:
    """CPU seconds per packet over these batches, each laid into the slots in turn."""
    io, worker = bench.io, bench.worker
    prepare, replies = io.tx.prepare, io.replies
    spent, packets = 0.0, 0
    for batch in batches:
        n = bench.load(batch)
        start = time.process_time()
        worker.process(n)
        prepare(replies, n)
        spent += time.process_time() - start
        io.tx.discard()
        packets += n
    return spent / packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    baseline = Bench()
    passing = (mix(64)["pass_v4"] * 2)[:64]
    base = run(baseline, [passing] * args.batches)
    bench = Bench()
    bench.worker.policy = firewall_policy()
    print(f"policy: {len(bench.worker.policy.rules)} rules over {len(ENDPOINTS)} endpoints")
    handshakes = [
        [p for k in range(8) for p in connection(8 * b + k, 20000 + (8 * b + k) % 40000)]
        for b in range(args.batches)
    ]
    opening = run(bench, handshakes)
    steady = [p for b in handshakes[:8] for p in b[3::8] + b[4::8]]  # data packets, both ways
    held = [steady[i : i + 64] for i in range(0, len(steady) - 63, 64)] or [steady]
    decided = run(bench, held * (args.batches // len(held) + 1))
    print(f"baseline (the demo's pass-through, no flow table): {base * 1e6:.2f} us/packet")
    for name, value in (
        ("handshakes, 8 new connections a batch", opening),
        ("data of decided connections", decided),
    ):
        print(f"  {name:<40} {value * 1e6:6.2f} us/packet  ({value / base:.2f}x the baseline)")
    table = bench.worker.flows
    print(f"flows: {table.active} active, {table.created} created, {table.expired} expired")


if __name__ == "__main__":
    main()
