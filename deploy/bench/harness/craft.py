"""A few hand-made GWLB packets, to ask a running appliance which policy it applies.

After a reload storm, a rule that only the last valid config has (a drop of UDP to one port) must
drop in every worker, and the rule of the config before it must not exist any more: we send inner
IPv4/UDP packets to those ports on many inner flows (the steering spreads them over the workers)
and count the replies. Built here with struct, not with the product's codec (a second opinion).
Sent from the generator's namespace, when gen is not running (the replies come to its port 6081).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from harness.env import APP_IP, GEN_IP, GEN_NS, GENEVE_PORT
from harness.product import in_netns

SOURCE_PORT_BASE = 51000


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def geneve(cookie: int) -> bytes:
    """The Geneve header with GWLB's three options (endpoint id, attachment id, flow cookie)."""
    head = bytes([0x08, 0x00]) + struct.pack("!H", 0x0800) + b"\0\0\0\0"
    endpoint = struct.pack("!HBB", 0x0108, 1, 2) + bytes.fromhex("0e9d2a1142000099")
    attachment = struct.pack("!HBB", 0x0108, 2, 2) + bytes.fromhex("6a70170000beef99")
    flow = struct.pack("!HBBI", 0x0108, 3, 1, cookie)
    return head + endpoint + attachment + flow


def inner_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, length)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    checksum = 0xFFFF - _sum16(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", checksum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0x1234, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", 0xFFFF - _sum16(ip)) + ip[12:]
    return ip + udp


def probe_ports(
    ports: list[int], flows: int = 64, wait_s: float = 1.0
) -> dict[int, dict[str, int]]:
    """For each port: `flows` packets, one per inner flow (10.79.k.1:40000+k -> 10.80.k.1:port),
    each from its own outer source port; how many came back. Runs in the generator's namespace."""

    def run() -> dict[int, dict[str, int]]:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((GEN_IP, GENEVE_PORT))
        rx.settimeout(0.05)
        out: dict[int, dict[str, int]] = {}
        try:
            for port in ports:
                sent, replies = 0, 0
                for k in range(flows):
                    src, dst = bytes([10, 79, k, 1]), bytes([10, 80, k, 1])
                    packet = geneve(0xC0FE0000 + port * 256 + k) + inner_udp(
                        src, dst, 40000 + k, port, b"storm probe " + bytes([k])
                    )
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                        tx.bind((GEN_IP, SOURCE_PORT_BASE + k))
                        tx.sendto(packet, (APP_IP, GENEVE_PORT))
                    sent += 1
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    try:
                        data = rx.recv(9216)
                    except TimeoutError:
                        continue
                    inner = data[40:]
                    if len(inner) >= 28 and struct.unpack("!H", inner[22:24])[0] == port:
                        replies += 1
                out[port] = {"sent": sent, "replies": replies}
        finally:
            rx.close()
        return out

    return in_netns(GEN_NS, run)


def per_worker_rule(stats: Any, rule: str) -> list[int]:
    """The drops counted for `rule` by each worker, from `appliancectl --json stats`."""
    workers = stats.get("workers", []) if isinstance(stats, dict) else []
    return [int((w.get("dropped_by_rule") or {}).get(rule, 0)) for w in workers]
