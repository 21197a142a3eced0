"""The fuzz loop: send a window of datagrams, wait until the appliance has settled all of them,
attribute every reply, classify every datagram.

Why windows: a reply is attributed by the (GWLB address, UDP source port) its datagram was sent
from, unique among the datagrams in flight and not reused for 129,000 datagrams. And a window's
datagrams fit in one appliance socket together (at most WINDOW_BYTES of kernel memory by a
pessimistic estimate, a quarter of the 8 MiB the appliance asks for), so the appliance never has
to drop for room: that is the rate limit, and RcvbufErrors is watched to prove it.

A window has settled when the kernel has judged every datagram of it (the appliance namespace's
UDP InDatagrams + InErrors grew by the window), the workers have counted every datagram they
read (received grew as InDatagrams did), decided each (sent + refusals == received) and every
reply they sent is captured: events, not time. The loop waits on the capture socket and rereads
the counters at least every 2 ms while nothing comes (a counter in shared memory cannot be waited
on). A window that has not settled after SETTLE_S (a worker died with a batch in hand, say) is
recorded as stalled and the run goes on.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gwfuzz.bed import FuzzBed
from gwfuzz.checksum import field as checksum_field
from gwfuzz.classify import Fate, Sent, Tally, fate
from gwfuzz.mutate import Made, make
from gwfuzz.oracle import Outer
from gwfuzz.stats import REFUSALS, udp_snmp

WINDOW = 512
WINDOW_BYTES = 2 << 20
SETTLE_S = 5.0
MTU = 9001
PORTS = [p for p in range(1024, 65536) if p != 6081]
CATEGORIES = ("dropped", "malformed", "oversize", "unrewritable")  # the product's refusals


@dataclass
class Run:
    """What a run saw, beyond the tally of classes."""

    sent: int = 0
    send_errors: int = 0
    replies: int = 0
    strays: list[str] = field(default_factory=list)  # replies no datagram in flight explains
    stalled: list[dict[str, Any]] = field(default_factory=list)
    counter_mismatches: list[dict[str, Any]] = field(default_factory=list)
    windows: int = 0
    rcvbuf_errors: int = 0
    kernel: dict[str, int] = field(default_factory=dict)  # snmp deltas over the run
    ring: bool = False  # the appliance ran dataplane.io = "ring" (Session._kernel)
    product: dict[str, int] = field(default_factory=dict)  # counter deltas over the run
    seconds: float = 0.0


class Session:
    def __init__(self, bed: FuzzBed, seed: int, examples: int = 3) -> None:
        self.bed, self.seed = bed, seed
        self.tally = Tally(examples)
        self.run_facts = Run()
        self.inflight: dict[tuple[bytes, int], Sent] = {}
        self.captured = 0
        self._buffer = bytearray(65536)

    def run(
        self, count: int, first: int = 0, progress: Callable[[int, float], None] | None = None
    ) -> Run:
        """Send datagrams first .. first + count - 1 of the seed; classify them all."""
        facts, started = self.run_facts, time.monotonic()
        facts.ring = self.bed.ring
        base_counters, base_snmp = self.bed.table.totals(), self._kernel()
        index = first
        while index < first + count:
            window = self._make_window(index, first + count)
            self._window(window, index)
            index += len(window)
            facts.windows += 1
            if progress:
                progress(index - first, time.monotonic() - started)
        facts.seconds = time.monotonic() - started
        end_counters, end_snmp = self.bed.table.totals(), self._kernel()
        facts.product = {k: end_counters[k] - base_counters[k] for k in end_counters}
        facts.kernel = {k: end_snmp[k] - base_snmp[k] for k in end_snmp}
        facts.rcvbuf_errors = facts.kernel["RcvbufErrors"]
        return facts

    def replay(self, payload: bytes) -> tuple[Sent, Fate, dict[str, int]]:
        """Send one datagram (Geneve onwards) alone: its class and the counters it moved."""
        counters, snmp = self.bed.table.totals(), self._kernel()
        self.captured = 0
        sent = self._send(Made(0, payload, "replay"), 0)
        _, delta = self._settle(0 if self.bed.ring and sent.kernel else 1, counters, snmp)
        self.inflight.clear()
        return sent, fate(sent, delta["RcvbufErrors"] > 0), delta

    def _make_window(self, index: int, stop: int) -> list[Made]:
        window: list[Made] = []
        budget = WINDOW_BYTES
        while index < stop and len(window) < WINDOW:
            made = make(self.seed, index)
            cost = 2 * len(made.payload) + 1024  # truesize: the buffer rounds up, plus the skb
            if window and cost > budget:
                break
            window.append(made)
            budget -= cost
            index += 1
        return window

    def _window(self, window: list[Made], index: int) -> None:
        counters, snmp = self.bed.table.totals(), self._kernel()
        self.captured = 0
        sents = [self._send(made, index + i) for i, made in enumerate(window)]
        reached = sum(1 for s in sents if s.kernel != "send-failed")
        if self.bed.ring:  # what the rings take: the kernel's refusals never reach them
            reached = sum(1 for s in sents if not s.kernel)
        settled, delta = self._settle(reached, counters, snmp)
        overflowed = delta["RcvbufErrors"] > 0
        predicted: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        for sent in sents:
            f = fate(sent, overflowed)
            self.tally.add(sent, f, self.seed)
            kind = f.category.split(":")[0]
            if kind in predicted:
                predicted[kind] += 1
        if not settled:
            self.run_facts.stalled.append({"first": index, "size": len(window), "delta": delta})
        self._check_counters(index, len(window), predicted, delta)
        self.inflight.clear()

    def _check_counters(
        self, index: int, size: int, predicted: dict[str, int], delta: dict[str, int]
    ) -> None:
        """The window's drops as the product counted them, against the classes' categories."""
        actual = {kind: delta[kind] for kind in CATEGORIES}
        if actual != predicted and len(self.run_facts.counter_mismatches) < 20:
            self.run_facts.counter_mismatches.append(
                {"first": index, "size": size, "predicted": predicted, "counted": actual}
            )

    def _send(self, made: Made, seq: int) -> Sent:
        bed = self.bed
        peer = bed.gwlb_ips[seq % 2]
        port = PORTS[(seq // 2) % len(PORTS)]
        local = bed.appliance_ips[(seq // 3) % 2]
        payload = made.payload
        length = min(max(8 + len(payload) + made.outer_length_delta, 0), 0xFFFF)
        seen: bytes | None = payload
        kernel = ""
        if length < 8 or length > 8 + len(payload):
            seen, kernel = None, "udp-length"
        elif length < 8 + len(payload):
            seen = payload[: length - 8]  # the kernel trims the datagram to the UDP length
        checksum = 0
        if made.outer_checksum != "zero" and seen is not None:
            # Over what the kernel keeps: a datagram trimmed to its UDP length is checked so.
            pseudo = peer + local + bytes((0, 17)) + length.to_bytes(2, "big")
            checksum = checksum_field(pseudo, struct.pack("!HHHH", port, 6081, length, 0), seen)
            if made.outer_checksum == "wrong":
                checksum = checksum % 0xFFFF + 1  # another residue, never 0 ("no checksum")
                seen, kernel = None, "udp-checksum"
        if self.bed.ring and seen is not None and 28 + len(payload) > MTU:
            seen, kernel = None, "outer-fragments"  # the ring's filter takes no fragments
        sent = Sent(made, seen, kernel, Outer(local, peer, port))
        try:
            self._transmit(seq, peer, local, port, length, checksum, payload)
        except OSError as error:
            self.run_facts.send_errors += 1
            sent.seen, sent.kernel = None, f"send-failed({error.errno})"
            return sent
        self.run_facts.sent += 1
        self.inflight[(peer, port)] = sent
        return sent

    def _transmit(
        self,
        seq: int,
        peer: bytes,
        local: bytes,
        port: int,
        length: int,
        checksum: int,
        payload: bytes,
    ) -> None:
        """One datagram, in two IPv4 fragments when it is longer than the link's MTU."""
        udp = struct.pack("!HHHH", port, 6081, length, checksum) + payload
        ident, address = seq & 0xFFFF, (socket.inet_ntoa(local), 0)
        if 20 + len(udp) <= MTU:
            self.bed.sender.sendto(self._ip(ident, 0x4000, peer, local) + udp, address)
            return
        cut = (MTU - 20) // 8 * 8
        self.bed.sender.sendto(self._ip(ident, 0x2000, peer, local) + udp[:cut], address)
        self.bed.sender.sendto(self._ip(ident, cut // 8, peer, local) + udp[cut:], address)

    @staticmethod
    def _ip(ident: int, flags: int, peer: bytes, local: bytes) -> bytes:
        # Total length and checksum 0: the kernel fills both in on an IP_HDRINCL socket (raw(7)).
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, ident, flags, 64, 17, 0, peer, local)

    def _settle(
        self, reached: int, counters: dict[str, int], snmp: dict[str, int]
    ) -> tuple[bool, dict[str, int]]:
        deadline = time.monotonic() + SETTLE_S
        while True:
            self._drain()
            now_counters, now_snmp = self.bed.table.totals(), self._kernel()
            delta = {k: now_counters[k] - counters[k] for k in now_counters}
            delta.update({k: now_snmp[k] - snmp[k] for k in now_snmp})
            read = delta["InDatagrams"]
            refused = sum(delta[k] for k in REFUSALS)
            if (
                read + delta["InErrors"] >= reached
                and delta["received"] == read
                and delta["sent"] + refused == read
                and self.captured >= delta["sent"]
            ):
                return True, delta
            if time.monotonic() > deadline:
                return False, delta
            select.select([self.bed.capture], [], [], 0.002)

    def _kernel(self) -> dict[str, int]:
        """The appliance namespace's UDP counters; with the ring backend, what stands for them:
        the datagrams the workers read (the rings take what the UDP stack would; a window fits a
        ring as it fits a socket buffer) and no kernel refusals, which the classes foresee."""
        if not self.bed.ring:
            return udp_snmp(self.bed.proc.pid)
        received = self.bed.table.totals()["received"]
        return {"InDatagrams": received, "InErrors": 0, "RcvbufErrors": 0, "InCsumErrors": 0}

    def _drain(self) -> None:
        """Every reply waiting in the capture socket, to the datagram it answers."""
        sources = self.bed.appliance_ips
        while True:
            try:
                size = self.bed.capture.recv_into(self._buffer)
            except BlockingIOError:
                return
            packet = bytes(self._buffer[:size])
            ihl = (packet[0] & 0x0F) * 4
            if packet[12:16] not in sources or len(packet) < ihl + 8:
                continue  # not from the appliance
            self.captured += 1
            self.run_facts.replies += 1
            sport = packet[ihl] << 8 | packet[ihl + 1]
            sent = self.inflight.get((packet[16:20], sport))
            if sent is None:
                if len(self.run_facts.strays) < 10:
                    self.run_facts.strays.append(packet[:200].hex())
                continue
            sent.replies.append(packet)
