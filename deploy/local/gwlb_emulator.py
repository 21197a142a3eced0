"""An emulated AWS Gateway Load Balancer, run inside the test bed's gwlb namespace.

Why it exists: there is no GWLB on one machine, and our appliance must not be checked against its
own reading of the wire contract (DESIGN.md §1). This module shares no code with appliance/ or
config/; it builds and checks every byte with struct, so it is a second opinion.

What it does: inner packets routed into the tun device are assigned to a flow (symmetric 5-tuple
for TCP/UDP, 3-tuple otherwise, as GWLB does), each flow gets a target by hash over the healthy
targets, its own outer UDP source port and a random cookie; the packet goes out Geneve-encapsulated
from (GWLB IP, flow port) to (target, 6081). A raw socket sees every returned packet whole; each is
checked against the contract and, only when it passes, its inner packet goes back into the tun.

Output: `{"event": "ready"}` on stdout once open; with --events one JSON line per event. On
SIGTERM/SIGINT the report goes to --report (JSON) and a summary to stderr; exit status 0.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import ipaddress
import json
import os
import queue
import random
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulator_wire import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    GENEVE_PORT,
    IDLE_TIMEOUT_OTHER_S,
    IDLE_TIMEOUT_TCP_S,
    TCP,
    UDP,
    UDP_HEADER,
    Inner,
    Malformed,
    checksum,
    checksum_ok,
    find_cookie,
    geneve_header,
    ignorable,
    inner_violations,
    parse_inner,
    pseudo_header,
)

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
POLL_TIMEOUT_MS = 200
BATCH = 64  # packets handled per readiness event, so no source starves the others
MAX_EXAMPLES = 10


# --- flows ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Flow:
    """One GWLB flow (both directions): its target, outer source port, cookie and Geneve header."""

    key: tuple[Any, ...]
    cookie: int
    port: int
    target: str
    gwlb_ip: str
    header: bytes
    timeout_s: float
    last_seen: float
    sent: int = 0
    returned: int = 0

    def is_idle(self, now: float) -> bool:
        return now - self.last_seen > self.timeout_s

    @property
    def name(self) -> str:
        return f"{self.cookie:08x}"


@dataclass
class FlowTable:
    """Live flows by key and by cookie; expiry frees the cookie and the port."""

    port_range: tuple[int, int]
    fixed_port: int | None
    timeouts_s: tuple[float, float]  # (TCP, other)
    by_key: dict[tuple[Any, ...], Flow] = field(default_factory=dict)
    by_cookie: dict[int, Flow] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)  # outer source ports of live flows
    expired: OrderedDict[int, str] = field(default_factory=OrderedDict)  # cookie -> flow key

    def new_cookie(self) -> int:
        for _ in range(64):
            cookie = random.getrandbits(32)
            if cookie not in self.by_cookie and cookie not in self.expired:
                return cookie
        raise RuntimeError("no free flow cookie after 64 tries")

    def new_port(self) -> int | None:
        if self.fixed_port is not None:
            return self.fixed_port
        low, high = self.port_range
        for _ in range(64):
            port = random.randint(low, high)
            if port not in self.ports and port != GENEVE_PORT:
                return port
        free = (p for p in range(low, high + 1) if p not in self.ports and p != GENEVE_PORT)
        return next(free, None)

    def add(self, flow: Flow) -> None:
        self.by_key[flow.key] = flow
        self.by_cookie[flow.cookie] = flow
        if self.fixed_port is None:
            self.ports.add(flow.port)

    def remove(self, flow: Flow) -> None:
        self.by_key.pop(flow.key, None)
        self.by_cookie.pop(flow.cookie, None)
        self.ports.discard(flow.port)
        self.expired[flow.cookie] = repr(flow.key)
        while len(self.expired) > 4096:  # remember recent cookies, boundedly
            self.expired.popitem(last=False)

    def idle(self, now: float) -> list[Flow]:
        """Flows past their idle timeout (still in the table)."""
        return [f for f in self.by_cookie.values() if f.is_idle(now)]

    def timeout_for(self, proto: int) -> float:
        return self.timeouts_s[0] if proto == TCP else self.timeouts_s[1]


def pick_target(key: tuple[Any, ...], healthy: list[str], everyone: list[str]) -> str:
    """Hash of the 5-tuple over the healthy targets; fail open over all when none is."""
    pool = sorted(healthy) or sorted(everyone)
    return pool[zlib.crc32(repr(key).encode()) % len(pool)]


# --- returned packets --------------------------------------------------------------------------


def outer_violations(pkt: bytes) -> tuple[list[tuple[str, str]], int]:
    """Checks on the outer IPv4 and UDP headers; returns (violations, UDP payload offset)."""
    found: list[tuple[str, str]] = []
    ihl = (pkt[0] & 0x0F) * 4 if pkt else 0
    if ihl < 20 or pkt[0] >> 4 != 4 or len(pkt) < ihl + UDP_HEADER.size:
        raise Malformed("not an IPv4/UDP packet")
    total = struct.unpack_from("!H", pkt, 2)[0]
    if total != len(pkt):
        found.append(("outer_ip_length", f"total length {total}, packet {len(pkt)}"))
    if checksum(pkt[:ihl]) != 0:
        found.append(("outer_ip_checksum", "outer IPv4 header checksum wrong"))
    udp = pkt[ihl:]
    _, _, length, csum = UDP_HEADER.unpack_from(udp)
    if length != len(udp):
        found.append(("outer_udp_length", f"UDP length {length}, segment {len(udp)}"))
    elif csum and not checksum_ok(pseudo_header(pkt[12:16], pkt[16:20], UDP, length), udp):
        found.append(("outer_udp_checksum", f"outer UDP checksum {csum:#06x} wrong"))
    return found, ihl + UDP_HEADER.size


# --- health checks -----------------------------------------------------------------------------


class HealthChecker(threading.Thread):
    """Probes http://target:port/path like GWLB; results go to a queue for the main loop."""

    def __init__(self, targets: list[str], port: int, path: str, interval_s: float) -> None:
        super().__init__(name="health", daemon=True)
        self.targets, self.port, self.path, self.interval_s = targets, port, path, interval_s
        self.results: queue.SimpleQueue[tuple[str, bool, str]] = queue.SimpleQueue()
        self.first_round = threading.Event()
        self.stopping = threading.Event()

    def probe(self, target: str) -> tuple[bool, str]:
        conn = http.client.HTTPConnection(target, self.port, timeout=min(2.0, self.interval_s))
        try:
            conn.request("GET", self.path)
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        return 200 <= status <= 399, f"HTTP {status}"

    def run(self) -> None:
        while not self.stopping.is_set():
            for target in self.targets:
                healthy, detail = self.probe(target)
                self.results.put((target, healthy, detail))
            self.first_round.set()
            self.stopping.wait(self.interval_s)


# --- the emulator ------------------------------------------------------------------------------


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    ifreq = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifreq)
    return fd


def big_buffer(sock: socket.socket, size: int = 8 << 20) -> None:
    """A receive buffer for bursts; SO_RCVBUFFORCE (root) ignores net.core.rmem_max."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def read_kernel_counters() -> dict[str, int]:
    """Counters of this namespace that show what the kernel dropped before we saw it."""
    with open("/proc/net/snmp") as f:
        lines = f.read().splitlines()
    wanted = {
        "Ip": ("InHdrErrors", "InAddrErrors"),
        "Udp": ("NoPorts", "InCsumErrors", "InErrors", "RcvbufErrors"),
    }
    counters = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto = names.split(":")[0]
        row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
        for name in wanted.get(proto, ()):
            counters[f"{proto}{name}"] = int(row.get(name, 0))
    return counters


class Emulator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gwlb_of = dict(args.target)  # target IP -> GWLB-side IP
        self.flows = FlowTable(
            args.port_range,
            args.fixed_source_port,
            (args.idle_timeout_tcp_s, args.idle_timeout_other_s),
        )
        self.endpoint_id = os.urandom(8)
        self.attachment_id = os.urandom(8)
        # Without health checks every target is healthy; with them, none is until probed.
        self.healthy = {t: args.health_port is None for t in self.gwlb_of}
        self.probed: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.per_target: dict[str, Counter[str]] = {t: Counter() for t in self.gwlb_of}
        self.send_socks: dict[tuple[str, int], socket.socket] = {}
        self.stopping = False
        self.poller = select.poll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.health: HealthChecker | None = None

    # --- setup and teardown

    def open(self) -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per flow port
        self.kernel_start = read_kernel_counters()
        self.tun = open_tun(self.args.tun)
        self.watch(self.tun, self.on_tun)
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        big_buffer(self.raw)
        self.raw.setblocking(False)
        self.watch(self.raw.fileno(), self.on_raw)
        for gwlb_ip in set(self.gwlb_of.values()):
            # Bound so the kernel never answers the appliance's replies with port unreachable.
            self.udp_socket(gwlb_ip, GENEVE_PORT)
        if self.args.health_port is not None:
            self.health = HealthChecker(
                list(self.gwlb_of),
                self.args.health_port,
                self.args.health_path,
                self.args.health_interval_s,
            )
            self.health.start()
            self.health.first_round.wait(2.5 * len(self.gwlb_of) + 2)
            self.apply_health()

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.poller.register(fd, select.POLLIN)
        self.handlers[fd] = handler

    def udp_socket(self, gwlb_ip: str, port: int) -> socket.socket:
        sock = self.send_socks.get((gwlb_ip, port))
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((gwlb_ip, port))
            sock.setblocking(False)
            if port == GENEVE_PORT:
                big_buffer(sock)  # it gets a copy of every reply: keep kernel drops at zero
            self.send_socks[(gwlb_ip, port)] = sock
            self.watch(sock.fileno(), lambda: self.drain(sock))
        return sock

    def expire(self, flow: Flow) -> None:
        """Forget an idle flow; its port (unique among live flows) and socket are freed."""
        self.flows.remove(flow)
        self.emit("expire", flow=flow.name, target=flow.target)
        if flow.port in (GENEVE_PORT, self.args.fixed_source_port):
            return
        sock = self.send_socks.pop((flow.gwlb_ip, flow.port), None)
        if sock is not None:
            self.poller.unregister(sock.fileno())
            self.handlers.pop(sock.fileno(), None)
            sock.close()

    def close(self) -> None:
        if self.health is not None:
            self.health.stopping.set()
            self.health.join(3.0)
        for sock in self.send_socks.values():
            sock.close()
        self.raw.close()
        os.close(self.tun)

    # --- the loop

    def run(self) -> None:
        last_sweep = time.monotonic()
        while not self.stopping:
            for fd, _ in self.poller.poll(POLL_TIMEOUT_MS):
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler()
            self.apply_health()
            now = time.monotonic()
            if now - last_sweep >= 1.0:
                last_sweep = now
                for flow in self.flows.idle(now):
                    self.expire(flow)

    def emit(self, event: str, **fields: Any) -> None:
        if self.args.events or event == "ready":
            try:
                sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
                sys.stdout.flush()
            except OSError:
                self.args.events = False  # nobody reads any more (broken pipe): keep forwarding

    def violation(self, kind: str, detail: str, **context: Any) -> None:
        self.violations[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, "detail": detail, **context})
        self.emit("violation", kind=kind, detail=detail, **context)

    def apply_health(self) -> None:
        if self.health is None:
            return
        while True:
            try:
                target, healthy, detail = self.health.results.get_nowait()
            except queue.Empty:
                return
            if self.healthy[target] != healthy or target not in self.probed:
                self.probed.add(target)  # the first verdict is news too
                self.healthy[target] = healthy
                self.emit("health", target=target, healthy=healthy, detail=detail)

    def drain(self, sock: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                sock.recv(65535)
            except BlockingIOError:
                return

    # --- host -> appliance

    def on_tun(self) -> None:
        for _ in range(BATCH):
            try:
                pkt = os.read(self.tun, 65535)
            except BlockingIOError:
                return
            self.encapsulate(pkt)

    def encapsulate(self, pkt: bytes) -> None:
        try:
            inner = parse_inner(pkt)
        except (Malformed, struct.error):
            self.stats["malformed_from_tun"] += 1
            return
        if ignorable(inner):
            self.stats["ignored_from_tun"] += 1
            return
        now = time.monotonic()
        flow = self.flows.by_key.get(inner.key())
        if flow is not None and flow.is_idle(now):
            self.expire(flow)  # a 5-tuple seen again after its timeout is a new flow
            flow = None
        flow = flow or self.new_flow(inner, now)
        if flow is None:
            return
        flow.last_seen = now
        try:
            self.udp_socket(flow.gwlb_ip, flow.port).sendto(
                flow.header + pkt, (flow.target, GENEVE_PORT)
            )
        except OSError as exc:
            self.stats["send_errors"] += 1
            self.emit("send_error", flow=flow.name, detail=str(exc))
            return
        flow.sent += 1
        self.stats["encapsulated"] += 1
        self.per_target[flow.target]["packets_sent"] += 1
        self.emit("encap", flow=flow.name, target=flow.target, port=flow.port, len=len(pkt))

    def new_flow(self, inner: Inner, now: float) -> Flow | None:
        healthy = [t for t, ok in self.healthy.items() if ok]
        target = pick_target(inner.key(), healthy, list(self.gwlb_of))
        port = self.flows.new_port()
        if port is None:
            self.stats["ports_exhausted"] += 1
            return None
        cookie = self.flows.new_cookie()
        protocol = ETH_P_IPV4 if inner.version == 4 else ETH_P_IPV6
        header = geneve_header(protocol, self.endpoint_id, self.attachment_id, cookie)
        flow = Flow(
            inner.key(),
            cookie,
            port,
            target,
            self.gwlb_of[target],
            header,
            self.flows.timeout_for(inner.proto),
            now,
        )
        self.flows.add(flow)
        self.stats[f"flows_ipv{inner.version}"] += 1
        self.per_target[target]["flows"] += 1
        self.emit(
            "flow",
            flow=flow.name,
            target=target,
            port=port,
            version=inner.version,
            proto=inner.proto,
            src=_addr(inner.src),
            dst=_addr(inner.dst),
            sport=inner.sport,
            dport=inner.dport,
        )
        return flow

    # --- appliance -> host

    def on_raw(self) -> None:
        for _ in range(BATCH):
            try:
                pkt = self.raw.recv(65535)
            except BlockingIOError:
                return
            try:
                self.check_return(pkt)
            except (Malformed, struct.error) as exc:
                self.violation("malformed", str(exc))

    def is_geneve_return(self, pkt: bytes) -> bool:
        """UDP to one of our GWLB IPs with 6081 on either side (swapped ports count too)."""
        if len(pkt) < 28 or _addr(pkt[16:20]) not in self.gwlb_of.values():
            return False
        ihl = (pkt[0] & 0x0F) * 4
        if len(pkt) < ihl + UDP_HEADER.size:
            return False
        sport, dport = struct.unpack_from("!HH", pkt, ihl)
        return GENEVE_PORT in (sport, dport)

    def check_return(self, pkt: bytes) -> None:
        if not self.is_geneve_return(pkt):
            return
        src, dst = _addr(pkt[12:16]), _addr(pkt[16:20])
        self.stats["returned"] += 1
        if src in self.per_target:
            self.per_target[src]["packets_returned"] += 1
        found, geneve_at = outer_violations(pkt)
        cookie, header_len = find_cookie(pkt[geneve_at:])
        flow = self.flows.by_cookie.get(cookie) if cookie is not None else None
        if flow is not None and flow.is_idle(time.monotonic()):
            self.expire(flow)  # GWLB drops replies for flows that timed out
            flow = None
        if flow is None:
            found.append(self.cookie_problem(cookie))
        else:
            found += self.flow_violations(pkt, flow, src, dst, geneve_at, header_len)
        context = {"flow": flow.name if flow else None, "target": src}
        for kind, detail in found:
            self.violation(kind, detail, **context)
        inner_len = len(pkt) - geneve_at - header_len
        self.emit("return", len=inner_len, delivered=not found, **context)
        if not found and flow is not None:
            flow.returned += 1
            flow.last_seen = time.monotonic()
            try:
                os.write(self.tun, pkt[geneve_at + header_len :])
            except OSError as exc:
                self.stats["tun_write_errors"] += 1
                self.emit("tun_write_error", flow=flow.name, detail=str(exc))
                return
            self.stats["delivered"] += 1

    def cookie_problem(self, cookie: int | None) -> tuple[str, str]:
        if cookie is None:
            return "missing_cookie", "no GWLB flow cookie option"
        if cookie in self.flows.expired:
            return "stale_cookie", f"cookie {cookie:08x} belongs to an expired flow"
        return "unknown_cookie", f"cookie {cookie:08x} was never sent"

    def flow_violations(
        self, pkt: bytes, flow: Flow, src: str, dst: str, geneve_at: int, header_len: int
    ) -> list[tuple[str, str]]:
        found = []
        sport, dport = struct.unpack_from("!HH", pkt, geneve_at - UDP_HEADER.size)
        if src != flow.target:
            found.append(("wrong_target", f"from {src}, flow is on {flow.target}"))
        if dst != flow.gwlb_ip:
            found.append(("wrong_gwlb_ip", f"to {dst}, flow uses {flow.gwlb_ip}"))
        if sport != flow.port:
            found.append(("outer_src_port", f"source port {sport}, flow port {flow.port}"))
        if dport != GENEVE_PORT:
            found.append(("outer_dst_port", f"destination port {dport}"))
        if pkt[geneve_at : geneve_at + header_len] != flow.header:
            found.append(("geneve_header_changed", "Geneve header or options differ"))
            return found
        inner_pkt = pkt[geneve_at + header_len :]
        try:
            inner = parse_inner(inner_pkt)
        except Malformed as exc:
            return [*found, ("inner_malformed", str(exc))]
        if inner.version != (4 if flow.header[2:4] == b"\x08\x00" else 6):
            return [*found, ("inner_protocol_mismatch", f"IPv{inner.version} inner")]
        if inner.key() != flow.key and not _error_about_flow(inner_pkt, inner, flow.key):
            found.append(("inner_not_in_flow", f"{_addr(inner.src)} -> {_addr(inner.dst)}"))
        return found + inner_violations(inner_pkt, inner)

    # --- report

    def report(self) -> dict[str, Any]:
        kernel_now = read_kernel_counters()
        kernel = {k: v - self.kernel_start.get(k, 0) for k, v in kernel_now.items()}
        if kernel["IpInHdrErrors"]:
            # A broken outer IPv4 header is dropped by the kernel before the raw socket.
            self.violations["outer_ip_header_dropped_by_kernel"] = kernel["IpInHdrErrors"]
        flows_total = self.stats["flows_ipv4"] + self.stats["flows_ipv6"]
        return {
            "flows": {
                "total": flows_total,
                "ipv4": self.stats["flows_ipv4"],
                "ipv6": self.stats["flows_ipv6"],
                "live": len(self.flows.by_cookie),
            },
            "packets": {
                k: self.stats[k]
                for k in (
                    "encapsulated",
                    "returned",
                    "delivered",
                    "malformed_from_tun",
                    "ignored_from_tun",
                    "send_errors",
                    "ports_exhausted",
                    "tun_write_errors",
                )
            },
            "targets": {
                t: {
                    "flows": c["flows"],
                    "packets_sent": c["packets_sent"],
                    "packets_returned": c["packets_returned"],
                    "healthy": self.healthy[t],
                }
                for t, c in self.per_target.items()
            },
            "violations": {
                "total": sum(self.violations.values()),
                "by_kind": dict(self.violations),
                "examples": self.examples,
            },
            "kernel": kernel,
            "endpoint_id": self.endpoint_id.hex(),
            "attachment_id": self.attachment_id.hex(),
        }


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


ICMP_ERRORS_V4 = frozenset({3, 4, 5, 11, 12})


def _error_about_flow(pkt: bytes, inner: Inner, key: tuple[Any, ...]) -> bool:
    """Whether `pkt` is an ICMP error about a packet of the flow `key`, sent to that packet's
    source: what an appliance returns inside a flow to refuse it (DESIGN.md §1: GWLB delivers
    the inner packet to its destination, whatever it is; the flow is told by its Geneve header
    and cookie). Anything else that does not belong to the flow stays a violation."""
    icmp = 1 if inner.version == 4 else 58
    if inner.proto != icmp or len(pkt) < inner.l4_offset + 8 + 20:
        return False
    kind = pkt[inner.l4_offset]
    if (inner.version == 4 and kind not in ICMP_ERRORS_V4) or (inner.version == 6 and kind >= 128):
        return False
    try:
        quoted = parse_inner(pkt[inner.l4_offset + 8 :])
    except Malformed:
        return False
    return quoted.key() == key and quoted.src == inner.dst


def summary(report: dict[str, Any]) -> str:
    flows, packets, violations = report["flows"], report["packets"], report["violations"]
    lines = [
        f"gwlb-emulator: {flows['total']} flows ({flows['ipv4']} IPv4, {flows['ipv6']} IPv6), "
        f"{packets['encapsulated']} encapsulated, {packets['returned']} returned, "
        f"{packets['delivered']} delivered",
        f"gwlb-emulator: {violations['total']} violations {violations['by_kind']}",
    ]
    lines += [f"  {ex['kind']}: {ex['detail']}" for ex in violations["examples"]]
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def _target(text: str) -> tuple[str, str]:
    target, sep, gwlb_ip = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected TARGET_IP=GWLB_IP")
    return str(ipaddress.IPv4Address(target)), str(ipaddress.IPv4Address(gwlb_ip))


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tun", default="gwlbtun0", help="tun device the hosts' packets arrive on")
    p.add_argument(
        "--target",
        type=_target,
        action="append",
        required=True,
        metavar="IP=GWLBIP",
        help="appliance IP and the GWLB-side IP used towards it",
    )
    p.add_argument("--fixed-source-port", type=int, help="one outer source port for all flows")
    p.add_argument(
        "--port-range",
        type=_port_range,
        default=(20000, 59999),
        help="outer source ports for flows (default 20000-59999)",
    )
    p.add_argument("--health-port", type=int, help="probe http://target:PORT/ like GWLB")
    p.add_argument("--health-path", default="/")
    p.add_argument("--health-interval-s", type=float, default=10.0)
    p.add_argument("--idle-timeout-tcp-s", type=float, default=IDLE_TIMEOUT_TCP_S)
    p.add_argument("--idle-timeout-other-s", type=float, default=IDLE_TIMEOUT_OTHER_S)
    p.add_argument("--report", help="write the final report (JSON) here on exit")
    p.add_argument("--events", action="store_true", help="one JSON line per event on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    emulator = Emulator(args)

    def on_signal(signum: int, frame: object) -> None:
        emulator.stopping = True  # only a flag: the loop wakes within POLL_TIMEOUT_MS

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emulator.open()
    emulator.emit(
        "ready", endpoint_id=emulator.endpoint_id.hex(), attachment_id=emulator.attachment_id.hex()
    )
    try:
        emulator.run()
    finally:
        report = emulator.report()
        emulator.close()
        if args.report:
            tmp = f"{args.report}.tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=2)
            os.replace(tmp, args.report)  # readers never see half a report
        print(summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
