"""The smallest appliance that honours the GWLB wire contract (DESIGN.md §1), and nothing more.

Why it exists: a baseline independent of our appliance, to test the emulator against and to
compare with. Every datagram to UDP 6081 goes back unchanged: outer IPv4 from the address it
arrived on (IP_PKTINFO) to the sender, UDP from the sender's port to 6081, checksum 0, built by
hand on an IPPROTO_RAW socket. No policy.

Hidden --fault flags break one rule on purpose, so tests can prove the emulator notices.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr (header destination)
MAX_DATAGRAM = 65535
FAULTS = (
    "corrupt-cookie",
    "swap-ports",
    "bad-udp-checksum",
    "change-endpoint-id",
    "bad-inner-checksum",
)
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")


def arrival_address(ancdata: list[tuple[int, int, bytes]]) -> bytes | None:
    """The packet's destination address from the IP_PKTINFO control message."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            addr: bytes = IN_PKTINFO.unpack_from(data)[2]
            return addr
    return None


def reply(payload: bytes, local: bytes, peer: bytes, peer_port: int, fault: str | None) -> bytes:
    """Outer IPv4 + UDP (checksum 0) around the unchanged Geneve payload."""
    payload = apply_fault(payload, fault)
    sport, dport = (6081, peer_port) if fault == "swap-ports" else (peer_port, 6081)
    udp_csum = 0x1234 if fault == "bad-udp-checksum" else 0
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), udp_csum)
    total = 20 + len(udp) + len(payload)
    # IP_HDRINCL: the kernel fills in the IPv4 header checksum (and id when 0).
    ip = IPV4_HEADER.pack(0x45, 0, total, 0, 0x4000, 64, socket.IPPROTO_UDP, 0, local, peer)
    return ip + udp + payload


def apply_fault(payload: bytes, fault: str | None) -> bytes:
    data = bytearray(payload)
    if fault == "corrupt-cookie" and len(data) >= 40:
        data[36] ^= 0xFF  # first byte of the flow cookie (the last option)
    elif fault == "change-endpoint-id" and len(data) >= 40:
        data[12] ^= 0x01  # first byte of the endpoint id value
    elif fault == "bad-inner-checksum" and len(data) > 40:
        data[-1] ^= 0xFF  # last payload byte: the inner UDP/ICMP checksum no longer matches
    return bytes(data)


def serve(port: int, fault: str | None) -> int:
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    rx.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("0.0.0.0", port))
    rx.settimeout(0.2)  # wake up to notice a stop request
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with rx, tx:
        while not stopping:
            try:
                payload, ancdata, _, (peer, peer_port) = rx.recvmsg(
                    MAX_DATAGRAM, socket.CMSG_SPACE(IN_PKTINFO.size)
                )
            except (TimeoutError, InterruptedError):
                continue
            local = arrival_address(ancdata)
            if local is None:
                continue  # cannot answer without knowing our own address
            packet = reply(payload, local, socket.inet_aton(peer), peer_port, fault)
            try:
                tx.sendto(packet, (peer, 0))
            except OSError as exc:
                print(f"trivial-reflector: send to {peer}: {exc}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reflect GWLB Geneve packets unchanged.")
    p.add_argument("--port", type=int, default=6081)
    p.add_argument("--fault", choices=FAULTS, help=argparse.SUPPRESS)  # tests only
    args = p.parse_args(argv)
    return serve(args.port, args.fault)


if __name__ == "__main__":
    sys.exit(main())
