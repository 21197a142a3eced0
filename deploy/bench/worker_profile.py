"""Profile the worker's hot loop without system calls: a batch of the benchmark's traffic mix is
laid into the socket backend's receive slots as recvmmsg would, then `Worker.process` decides it
and the backend prepares the replies (outer headers, message array: everything its flush does but
the sendmmsg), again and again.

    python3 deploy/bench/worker_profile.py [--batches 3000] [--profile]

It prints the user-space cost per packet of each class of the mix and of the whole mix (the
kernel's share is measured by run.py); --profile adds cProfile's top functions. Packets are built
with scapy, independently of the product's codec. Needs root only for the raw socket it opens
(it never sends).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import struct
import time

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Packet, Raw, raw

from appliance.batchio import (
    CONTROL_BYTES,
    HEADROOM,
    MSG_BYTES,
    NAME_BYTES,
    PKTINFO_OFFSET,
    RESULT_OFFSET,
    SLOT_BYTES,
    SocketBatchIO,
)
from appliance.counters import new_counters
from appliance.policy import Policy
from appliance.worker import Worker
from config.loader import default_config_path, parse_config

OPTIONS = (
    bytes.fromhex("01080102")
    + bytes(8)
    + bytes.fromhex("01080202")
    + bytes(8)
    + bytes.fromhex("01080301")
    + bytes.fromhex("0badf00d")
)
V4 = {"src": "10.1.0.5", "dst": "10.2.0.9"}
V6 = {"src": "fd00::5", "dst": "fd00::9"}


def datagram(inner: Packet) -> bytes:
    protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
    return struct.pack("!BBHI", 8, 0, protocol, 0) + OPTIONS + raw(inner)


def ACK(**ports: int) -> Packet:
    """A TCP segment of an established connection, as most of a flow's packets are (scapy's
    default, a SYN, would make every packet of the flow look like a new connection)."""
    return TCP(flags="A", **ports)


def mix(payload: int) -> dict[str, list[bytes]]:
    """The benchmark's classes, in its proportions per 100 packets (deploy/bench/README.md)."""
    fill = bytes(range(32, 127)) * (payload // 95 + 1)
    body = fill[:payload]
    rewrite = (b"0123456789abcdef weakly typed " + fill)[: max(payload, 30)]
    drop = (b"0123456789abcdef drop me " + fill)[: max(payload, 25)]
    ports = [53, 443, 123, 4789, 80, 6081, 5060, 22, 5000, 8080]
    return {
        "pass_v4": [
            datagram(
                IP(**V4) / (UDP if k % 2 else ACK)(sport=40000 + k, dport=ports[k % 10]) / Raw(body)
            )
            for k in range(60)
        ],
        "pass_v6": [
            datagram(
                IPv6(**V6)
                / (UDP if k % 2 else ACK)(sport=40000 + k, dport=ports[k % 10])
                / Raw(body)
            )
            for k in range(10)
        ],
        "rewrite": [
            datagram(IP(**V4) / UDP(sport=40000 + k, dport=3000) / Raw(rewrite)) for k in range(10)
        ],
        "drop": [
            datagram(IP(**V4) / UDP(sport=40000 + k, dport=3000) / Raw(drop)) for k in range(5)
        ],
        "icmp_echo": [datagram(IP(**V4) / ICMP(seq=k + 1) / Raw(body)) for k in range(5)]
        + [datagram(IPv6(**V6) / ICMPv6EchoRequest(seq=k + 1) / Raw(body)) for k in range(5)],
        "tcp_3000": [
            datagram(IP(**V4) / ACK(sport=40000 + k, dport=3000) / Raw(body)) for k in range(5)
        ],
    }


def policy(track_flows: bool) -> Policy:
    """The shipped demo policy; with `track_flows`, the same rules with the flow table on (the
    cost every packet pays once a policy decides flows: appliance/worker.py)."""
    text = default_config_path().read_text()
    if track_flows:
        text = text.replace("track_flows = false", "track_flows = true")
    return parse_config(text).policy


class Bench:
    def __init__(self, track_flows: bool = False) -> None:
        data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw_sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.io = SocketBatchIO(data, raw_sock, 64)
        self.worker = Worker.over(self.io, policy(track_flows), new_counters())
        self.rx = self.io.rx

    def load(self, datagrams: list[bytes]) -> int:
        rx = self.rx
        for i, d in enumerate(datagrams):
            rx.arena[i * SLOT_BYTES + HEADROOM : i * SLOT_BYTES + HEADROOM + len(d)] = d
            struct.pack_into("=i4xI", rx.headers, i * MSG_BYTES + RESULT_OFFSET, 0, len(d))
            struct.pack_into("=H", rx.names, i * NAME_BYTES, socket.AF_INET)
            struct.pack_into("!HI", rx.names, i * NAME_BYTES + 2, 20000 + i, 0x0A4DC801)
            struct.pack_into("!I", rx.control, i * CONTROL_BYTES + PKTINFO_OFFSET, 0x0A4DC802)
        self.datagrams = datagrams
        return len(datagrams)

    def run(self, batches: int) -> float:
        """Seconds of CPU per packet over `batches` batches (slots re-laid between batches)."""
        n, rx, io, worker = len(self.datagrams), self.rx, self.io, self.worker
        prepare, replies = io.tx.prepare, io.replies
        spent = 0.0
        for _ in range(batches):
            for i, d in enumerate(self.datagrams):  # a rewrite changed its slot: lay it again
                rx.arena[i * SLOT_BYTES + HEADROOM : i * SLOT_BYTES + HEADROOM + len(d)] = d
            start = time.process_time()
            worker.process(n)
            prepare(replies, n)  # the flush's work up to the system call
            spent += time.process_time() - start
            io.tx.discard()
        return spent / (batches * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--track-flows", action="store_true", help="with the flow table on (policy.track_flows)"
    )
    args = parser.parse_args()
    bench = Bench(args.track_flows)
    for payload in (64, 1400):
        classes = mix(payload)
        print(f"{payload} B payload, user-space CPU per packet, process + prepare (batch of 64):")
        for name, datagrams in classes.items():
            bench.load((datagrams * 64)[:64])
            print(f"  {name:<10} {bench.run(args.batches // 4) * 1e6:6.2f} us")
        everything = [d for group in classes.values() for d in group]
        bench.load([everything[37 * k % 100] for k in range(64)])  # interleaved, as gen sends
        print(f"  {'mix':<10} {bench.run(args.batches) * 1e6:6.2f} us")
    if args.profile:
        everything = [d for group in mix(64).values() for d in group]
        bench.load([everything[37 * k % 100] for k in range(64)])
        cProfile.runctx("bench.run(args.batches)", globals(), locals(), "/tmp/worker.prof")
        pstats.Stats("/tmp/worker.prof").sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
