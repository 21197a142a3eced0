"""`appliancectl capture` in the worker: the packets of its batches, as received and as sent, each
with its verdict, sent to the capturing client as pcapng blocks over a Unix datagram socket.

Why at the batch I/O seam, and not in the loop: the loop (worker.py) must pay nothing when no
capture runs, and a per-packet "am I capturing?" would cost a comparison per packet forever. So
while a capture runs, `CapturingIO` stands in for the worker's BatchIO (`worker.io`, which the
loop reads once per batch): its `receive` keeps a copy of each datagram as it came (a rewrite
or a reject changes it where it lies), its `flush`, called after the loop decided the batch and
before anything is sent, looks at what the loop queued, and both hand everything else to the
worker's own backend. Between captures `worker.io` is the backend itself, and the only cost is
the heartbeat's comparison of one stats-table word (H.CAPTURE_REQUEST) with the last one seen,
once per batch, next to the flows request's (supervisor/workerproc.py). worker.py knows nothing
of this; it only has to keep reading `self.io` afresh for each batch, as it does. The heartbeat
runs between a receive and the loop, so a capture that starts there also keeps the batch in hand:
the loop asks its results before it changes any datagram, and that is when it is copied.

Why the verdict is read from the replies: the loop records no verdict per packet (that would be
work per packet for everyone), but what it did is in plain sight after the batch: a reply equal
to the datagram as received is a pass, a changed one from the same source a rewrite, one from
elsewhere a reject's answer (a RST, an ICMP error, a DNS answer), and no reply a drop. The rule
is asked again, on the copy as received, of the policy (stateless) or of the flow the packet
belongs to (flows.py; the packet rules too for a flow they watch), for a packet the filter keeps
or one without a reply (which was it: a drop, a reject the ceiling silenced, a replace that
could not be done, a segment held until its flow shows its name, a sender off the allow-list;
`why=` says when it is not a rule's drop). So the verdict is what happened, and the rule the
policy's answer a moment later: for a flow decided by a name or an inspector, the flow's rule.

The request: the supervisor writes `capture-request-SLOT.json` (a number, the filter, the most
packets, a deadline on the monotonic clock every process shares, the client's socket; or a
stop) and bumps H.CAPTURE_REQUEST; each worker reads its own file when the word changes and
takes a request numbered above the last it took and not above the word (a file left by an
earlier daemon is not taken). A worker restarted during a capture takes it up again; a new
request for the slot supersedes the one running; one that is over already, or a stop for a
capture not running here, is answered with an end at once, so that the client does not wait.

To the client: one datagram per batch (split at MAX_DATAGRAM_BYTES): DATA_HEAD (how many packets
and blocks), then whole Enhanced Packet Blocks, interface = the worker's slot; each packet's
block as received, then, when it was changed, the block as sent (outbound). A send the client's
socket cannot take now (it reads too slowly) is not retried: its packets are counted dropped
(Counter.CAPTURE_DROPPED; sent ones, CAPTURE_KEPT), and the data path goes on. The worker ends
the capture when it kept the packets asked for, at the deadline, on a stop, or when the client's
socket is gone (found by a send, or by an empty datagram once a second); it then sends one JSON
datagram, {"end": slot, "kept", "dropped", "reason"}, retried for END_RETRY_S while the client's
socket is full.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from appliance.batch import NO_REPLY, TRUNCATED, BatchIO
from appliance.capturefilter import CaptureView, FilterError, Predicate, compile_filter
from appliance.counters import Counter
from appliance.datapath import parse_datagram
from appliance.flowkey import flow_key
from appliance.flowverdict import DROP, PASS_INSPECT, PASS_PLAIN, REJECT, UNDECIDED
from appliance.inner import InnerPacket
from appliance.pcapng import packet_block, packet_options
from appliance.policy import DEFAULT_RULE, Verdict

if TYPE_CHECKING:
    from appliance.worker import Worker

# A datagram of packets: this head (packets, blocks), then the blocks, so that the client need
# not walk them to count unless it must stop among them.
DATA_HEAD = struct.Struct("<4sII")
DATA_MAGIC = b"GWCP"
MAX_DATAGRAM_BYTES = 192 << 10  # blocks per datagram to the client (one bigger block goes alone)
SEND_BUFFER_BYTES = 4 << 20  # the worker's side; more than a second's worth at a modest rate
PROBE_INTERVAL_NS = 1_000_000_000  # without a send for this long, an empty datagram asks
END_RETRY_S = 2.0
MAX_COUNT = 10_000_000
MAX_COMMENTS = 4096  # distinct comments kept encoded (verdict, rule, why, endpoint)
_KEPT, _DROPPED = int(Counter.CAPTURE_KEPT), int(Counter.CAPTURE_DROPPED)
_GONE = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET)
_KINDS = {
    Verdict.PASS: "pass",
    Verdict.DROP: "drop",
    Verdict.REWRITE: "rewrite",
    Verdict.UNREWRITABLE: "unrewritable",
    Verdict.REJECT: "reject",
    Verdict.PENDING: "pending",
    Verdict.INSPECT: "pending",
}
_FLOW_KINDS = {PASS_PLAIN: "pass", PASS_INSPECT: "pass", DROP: "drop", REJECT: "reject"}
# What a datagram without a reply was, by what the policy says of it: (verdict, why).
_UNANSWERED = {
    "drop": ("drop", ""),
    "reject": ("reject", "nothing-sent"),  # the reject ceiling, or nothing may answer it
    "unrewritable": ("unrewritable", ""),
    "rewrite": ("drop", "oversize"),  # the rewrite would pass 8500 bytes
    "pending": ("drop", "held"),  # held back until the flow shows its name (nameflow.py)
}


def request_path(runtime_dir: Path, slot: int) -> Path:
    return runtime_dir / f"capture-request-{slot}.json"


class Request(NamedTuple):
    """A capture as the supervisor asked it of one worker (module doc)."""

    number: int
    filter: str
    packets: int  # the most to keep
    deadline_ns: int  # time.monotonic_ns()
    socket: str  # the client's socket path
    stop: bool = False  # end the capture to `socket` instead

    @classmethod
    def read(cls, path: Path) -> Request:
        """The request in `path`; OSError or ValueError when there is none or it is not one."""
        raw: dict[str, Any] = orjson.loads(path.read_bytes())
        return cls(
            int(raw["number"]),
            str(raw.get("filter", "")),
            int(raw.get("packets", MAX_COUNT)),
            int(raw["deadline_ns"]),
            str(raw["socket"]),
            bool(raw.get("stop", False)),
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self._asdict())


class Capture:
    """A worker's part in `appliancectl capture`: the requests it saw, and the capture running.

    The heartbeat compares the stats table's H.CAPTURE_REQUEST with `seen` and calls `look` when
    they differ (supervisor/workerproc.py)."""

    def __init__(self, worker: Worker, slot: int, runtime_dir: Path) -> None:
        self.worker = worker
        self.slot = slot
        self.runtime_dir = runtime_dir
        self.seen = 0  # the last H.CAPTURE_REQUEST looked at
        self.taken = 0  # the number of the last request this worker took
        self.running: CapturingIO | None = None

    def look(self, number: int) -> str | None:
        """H.CAPTURE_REQUEST is now `number`: take this slot's request if it is new. What
        happened, in a sentence for the log, or None when nothing did."""
        self.seen = number
        try:
            request = Request.read(request_path(self.runtime_dir, self.slot))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no request for this slot
        if not self.taken < request.number <= number:
            return None
        self.taken = request.number
        running = self.running
        if request.stop:
            if running is not None and running.request.socket == request.socket:
                running.finish("stopped")
                return f"capture {running.request.number} stopped"
            self._tell_over(request.socket, "stopped")  # before it began here, or after its end
            return None
        if running is not None:
            running.finish("superseded")
        if time.monotonic_ns() >= request.deadline_ns:
            self._tell_over(request.socket, "seconds")  # over before this worker saw it
            return None
        return self.start(request)

    def start(self, request: Request) -> str:
        """Begin capturing for `request`: the worker's I/O goes through a CapturingIO."""
        try:
            predicate = compile_filter(request.filter) if request.filter.strip() else None
        except FilterError as error:  # the supervisor compiled it first: only a bad file
            return f"capture {request.number} not started: its filter is refused ({error})"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            _grow_send_buffer(sock)
            sock.connect(request.socket)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            return (
                f"capture {request.number} not started: {request.socket}: {error.strerror or error}"
            )
        inner = self.worker.io
        if isinstance(inner, CapturingIO):  # cannot be: one ends before the next starts
            inner = inner.inner
        self.running = CapturingIO(self, inner, request, predicate, sock)
        self.worker.io = self.running
        return (
            f"capture {request.number} started: filter {request.filter or '(all)'!r}, "
            f"up to {request.packets} packets, to {request.socket}"
        )

    def _tell_over(self, path: str, reason: str) -> None:
        """Tell a client waiting for this worker that its capture is over here (one try)."""
        end = {"end": self.slot, "kept": 0, "dropped": 0, "reason": reason}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # gone, or full: its own deadline ends it
                sock.sendto(orjson.dumps(end), path)

    def close(self) -> None:
        """End the capture running, if any (the worker is stopping)."""
        if self.running is not None:
            self.running.finish("stopped")
            if self.running is not None:  # its end waits for room: no more waiting
                self.running.close()

    def ended(self, capturing: CapturingIO) -> None:
        """`capturing` is over: the worker's own backend again."""
        if self.worker.io is capturing:
            self.worker.io = capturing.inner
        if self.running is capturing:
            self.running = None


def _grow_send_buffer(sock: socket.socket) -> None:
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER_BYTES)
            return
        except OSError:  # SO_SNDBUFFORCE needs CAP_NET_ADMIN; SO_SNDBUF stops at wmem_max
            continue


class CapturingIO:
    """The worker's BatchIO while a capture runs: the worker's own backend (`inner`) does the
    I/O; this keeps each batch as received and records it as decided (module doc)."""

    def __init__(
        self,
        owner: Capture,
        inner: BatchIO,
        request: Request,
        predicate: Predicate | None,
        sock: socket.socket,
    ) -> None:
        self.owner, self.inner, self.request = owner, inner, request
        self.size = inner.size
        self.predicate = predicate
        self.sock = sock
        self.kept = 0  # packets the client's socket took
        self.dropped = 0  # packets matched that it could not take
        self.ending: bytes | None = None  # the end message, while it waits for room
        self._end_by = 0.0
        self._probe_at = time.monotonic_ns() + PROBE_INTERVAL_NS
        self._n = 0  # the batch kept by receive (0: none)
        # Started by the heartbeat, after the receive of the batch in hand: that batch is kept
        # when the loop asks its results, before it changes any datagram.
        self._late = True
        self._starts: Sequence[int] = ()
        self._results: tuple[int, ...] = ()
        self._copies: list[bytearray] = []
        self._received_ns = 0
        self._extras: list[tuple[int, bytes]] = []
        self._names: tuple[object, tuple[str, ...]] = (None, ())
        self._comments: dict[tuple[str, int, str, bytes], tuple[bytes, bytes, bytes]] = {}

    # --- BatchIO -------------------------------------------------------------------------------

    def receive(self) -> int:
        n = self.inner.receive()
        self._n, self._late = 0, False
        now = time.monotonic_ns()
        if self.ending is not None:
            self._send_end()
        elif now >= self.request.deadline_ns:
            self.finish("seconds")
        else:
            if n:
                self._keep(n)
            if now >= self._probe_at:
                self._probe(now)
        return n

    def starts(self, n: int) -> Sequence[int]:
        return self._starts if n == self._n else self.inner.starts(n)

    def results(self, n: int) -> tuple[int, ...]:
        if self._late:
            self._late = False
            self._keep(n)
        return self._results if n == self._n else self.inner.results(n)

    def senders(self, n: int) -> tuple[int, ...]:
        return self.inner.senders(n)

    def destinations(self, n: int) -> tuple[int, ...]:
        return self.inner.destinations(n)

    def extra(self, i: int, datagram: bytes) -> None:
        if self._n:
            self._extras.append((i, datagram))
        self.inner.extra(i, datagram)

    def flush(self, n: int) -> tuple[int, list[int]]:
        if n == self._n and self.ending is None:
            self._record(n)
        self._n = 0
        self._copies = []
        self._extras.clear()
        return self.inner.flush(n)

    @property
    def buffer(self) -> bytearray:  # the backend's, whatever it holds now
        return self.inner.buffer

    @buffer.setter
    def buffer(self, value: bytearray) -> None:
        self.inner.buffer = value

    @property
    def replies(self) -> list[int]:
        return self.inner.replies

    @replies.setter
    def replies(self, value: list[int]) -> None:
        self.inner.replies = value

    @property
    def rx_dropped(self) -> int:
        return self.inner.rx_dropped

    # --- keeping and recording -----------------------------------------------------------------

    def _keep(self, n: int) -> None:
        """Copy the batch as it came, before the loop rewrites any of it."""
        inner, buffer = self.inner, self.buffer
        self._starts, self._results = starts, results = inner.starts(n), inner.results(n)
        self._copies = [buffer[s : s + results[2 * i + 1]] for i, s in enumerate(starts)]
        self._received_ns = time.time_ns()
        self._n = n

    def _record(self, n: int) -> None:
        """Send the client the packets of the batch the filter keeps, as decided."""
        sent_ns, wanted = time.time_ns(), self.request.packets - self.kept
        replies, buffer, starts, results = self.replies, self.buffer, self._starts, self._results
        extras: dict[int, list[bytes]] = {}
        for i, datagram in self._extras:
            extras.setdefault(i, []).append(datagram)
        chunk: list[bytes] = []
        size = packets = 0
        for i in range(n):
            if results[2 * i] & TRUNCATED:
                continue  # not whole: nothing to show
            received = self._copies[i]
            reply = replies[i]
            sent = bytes(buffer[starts[i] : starts[i] + reply]) if reply != NO_REPLY else None
            blocks = self._blocks(received, sent, extras.get(i, ()), i, n, sent_ns)
            if not blocks:
                continue
            length = sum(map(len, blocks))
            if chunk and size + length > MAX_DATAGRAM_BYTES:
                if not self._send(chunk, packets):
                    return
                wanted -= packets
                chunk, size, packets = [], 0, 0
            chunk += blocks
            size += length
            packets += 1
            if packets >= wanted:
                break
        if chunk and not self._send(chunk, packets):
            return
        if self.kept >= self.request.packets:
            self.finish("count")

    def _blocks(
        self,
        received: bytearray,
        sent: bytes | None,
        extras: Sequence[bytes],
        i: int,
        n: int,
        sent_ns: int,
    ) -> list[bytes]:
        """The pcapng blocks of datagram i if the filter keeps it: as received, then as sent
        when it was changed (and any extra datagram it caused); [] when it does not. The
        verdict comes from what the loop queued; the policy is asked for the rule only for a
        packet the filter kept, or for one without a reply (module doc)."""
        got = parse_datagram(received, 0, len(received))
        if isinstance(got, int):
            return []  # malformed: no inner packet to show (the counters say why)
        pkt, endpoint = got
        s = pkt.start
        decision = None
        why = ""
        if sent is None:
            decision = self._decision(received, pkt, endpoint)
            verdict, why = _UNANSWERED.get(decision[0], ("drop", ""))
            if decision[0] == "pass":
                why = "disallowed-source" if self._foreign(i, n) else "refused"
        elif sent == received:
            verdict = "pass"
        else:  # a rewrite keeps the source; a reject's answer comes from the destination
            at = slice(s + 12, s + 16) if pkt.version == 4 else slice(s + 8, s + 24)
            verdict = "rewrite" if sent[at] == received[at] else "reject"
        predicate = self.predicate
        if predicate is not None:
            if pkt.version == 4:
                src, dst = bytes(received[s + 12 : s + 16]), bytes(received[s + 16 : s + 20])
            else:
                src, dst = bytes(received[s + 8 : s + 24]), bytes(received[s + 24 : s + 40])
            view = CaptureView(
                pkt.version, pkt.protocol, src, dst, pkt.src_port, pkt.dst_port, endpoint, verdict
            )
            if not predicate(view):
                return []
        if decision is None:
            decision = self._decision(received, pkt, endpoint)
            if verdict == "pass" and decision[0] != "pass":
                why = decision[0]  # a flow not decided yet, say: its handshake goes through
        inbound, outbound, toward = self._options(verdict, decision[1], why, endpoint)
        slot = self.owner.slot
        blocks = [packet_block(slot, self._received_ns, received[s : pkt.end], inbound)]
        if sent is not None and verdict != "pass":
            blocks.append(packet_block(slot, sent_ns, sent[s:], outbound))
        for datagram in extras:  # the RST toward the server of a flow refused by name
            blocks.append(packet_block(slot, sent_ns, datagram[s:], toward))
        return blocks

    def _options(
        self, verdict: str, rule: int, why: str, endpoint: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """The encoded options (comment, direction) of a packet's blocks as received, as sent,
        and sent toward the server; the few distinct ones are kept (pcapng.packet_options)."""
        key = (verdict, rule, why, endpoint)
        if self._names[0] is not self.owner.worker.policy:
            self._comments.clear()  # a reload: rule numbers may name other rules now
        options = self._comments.get(key)
        if options is None:
            if len(self._comments) >= MAX_COMMENTS:
                self._comments.clear()
            comment = (
                f"verdict={verdict} rule={self._rule_name(rule)} endpoint={endpoint.hex()} "
                f"worker={self.owner.slot}" + (f" why={why}" if why else "")
            )
            options = (
                packet_options(comment + " as=received", False),
                packet_options(comment + " as=sent", True),
                packet_options(comment + " as=sent toward=server", True),
            )
            self._comments[key] = options
        return options

    def _decision(self, buf: bytearray, pkt: InnerPacket, endpoint: bytes) -> tuple[str, int]:
        """What the policy says of the packet now: a kind (_KINDS' words) and the rule index."""
        worker = self.owner.worker
        policy = worker.policy
        if not policy.stateful:
            decision = policy.decide(buf, pkt, endpoint)
            return _KINDS[decision.verdict], decision.rule
        try:
            key = flow_key(buf, pkt, endpoint)
        except ValueError:  # no 8-byte endpoint id (an unusual Geneve header)
            key = None
        flow = None if key is None else worker.flows.lookup(key)
        if flow is None:  # a later fragment, or a flow gone already
            decision = policy.decide(buf, pkt, endpoint)
            return _KINDS[decision.verdict], decision.rule
        if flow.verdict in UNDECIDED:
            return "pending", flow.rule
        if flow.verdict == PASS_INSPECT:
            decision = policy.decide_packet(buf, pkt, endpoint, flow.rule)
            if decision.verdict is not Verdict.PASS:
                return _KINDS[decision.verdict], decision.rule
        return _FLOW_KINDS.get(flow.verdict, "pass"), flow.rule

    def _rule_name(self, rule: int) -> str:
        policy = self.owner.worker.policy
        if self._names[0] is not policy:
            self._names = (policy, tuple(r.name for r in policy.rules))
        names = self._names[1]
        if 0 <= rule < len(names):
            return names[rule]
        return "default" if rule == DEFAULT_RULE else "-"

    def _foreign(self, i: int, n: int) -> bool:
        sources = self.owner.worker.sources
        return sources is not None and not sources(self.inner.senders(n)[2 * i + 1])

    # --- to the client -------------------------------------------------------------------------

    def _send(self, blocks: list[bytes], packets: int) -> bool:
        """Send `packets` packets' blocks in one datagram; False when the client is gone."""
        counters = self.owner.worker.counters
        try:
            self.sock.send(b"".join((DATA_HEAD.pack(DATA_MAGIC, packets, len(blocks)), *blocks)))
        except OSError as error:
            if error.errno in _GONE:
                self.close()
                return False
            self.dropped += packets  # EAGAIN: the client is behind; ENOBUFS, EMSGSIZE
            counters[_DROPPED] += packets
            return True
        self.kept += packets
        counters[_KEPT] += packets
        self._probe_at = time.monotonic_ns() + PROBE_INTERVAL_NS
        return True

    def _probe(self, now: int) -> None:
        self._probe_at = now + PROBE_INTERVAL_NS
        try:
            self.sock.send(b"")
        except OSError as error:
            if error.errno in _GONE:
                self.close()

    def finish(self, reason: str) -> None:
        """Tell the client the capture is over (retried while its socket is full), then stop."""
        self.ending = orjson.dumps(
            {"end": self.owner.slot, "kept": self.kept, "dropped": self.dropped, "reason": reason}
        )
        self._end_by = time.monotonic() + (END_RETRY_S if reason != "superseded" else 0.0)
        self._send_end()

    def _send_end(self) -> None:
        assert self.ending is not None
        try:
            self.sock.send(self.ending)
        except OSError as error:
            if error.errno not in _GONE and time.monotonic() < self._end_by:
                return  # full: again at the next receive (at least once a second)
        self.close()

    def close(self) -> None:
        """Over: the client's socket closed, the worker's own backend back in place."""
        self.sock.close()
        self.ending = self.ending or b""
        self.owner.ended(self)
