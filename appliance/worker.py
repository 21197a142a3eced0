"""The worker loop: receive a batch, decide each datagram, reply to GWLB in one batch.

The loop talks to its I/O only through appliance.batch.BatchIO, once per batch: it gets the buffer,
where each datagram starts and the kernel's results as flat tuples, and queues a reply by storing
its length into `replies`; the backend writes the outer headers and sends when it flushes.
Per packet the loop is flat: local-variable lookups, the fast path's one or two struct reads
(fastpath.FastPath.classify), and only for a packet some rule may touch the policy
(datapath.decide_parsed; for UDP, the fast path's lane when the policy has one:
fastpath.UdpLane) or the full parse (datapath.decide_in_place). When the policy decides
flows (policy.py), each packet is looked up in the worker's flow table (flows.py) by a key read
from its bytes; a packet of a flow already passed needs nothing more, and everything else goes to
`_judge` (judging.py: the slow path, mixed in). A datagram that is malformed is counted and
skipped; it never stops its neighbours in the batch. The receive waits at most the socket's
timeout (1 s) so that the heartbeat is stamped even when no traffic comes.
"""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Callable, Sequence

from appliance import counters as cnt
from appliance.batch import TRUNCATED, BatchIO
from appliance.batchio import SocketBatchIO
from appliance.counters import Counter
from appliance.datapath import (
    Outcome,
    carry_out,
    decide_in_place,
    decide_parsed,
)
from appliance.fastpath import GENEVE_V4, GENEVE_V6, FastPath, parse_usual
from appliance.flowkey import (
    TCP_BYTE,
    UDP_BYTE,
    USUAL_V4,
    USUAL_V6,
)
from appliance.flowlog import FlowLog
from appliance.flows import Flow, FlowTable
from appliance.flowverdict import PASS_INSPECT, PASS_PLAIN
from appliance.judging import Judging
from appliance.nameflow import HeldBytes
from appliance.policy import Policy
from appliance.reject import RejectBudget
from appliance.sources import SourceFilter

# Plain ints: an IntEnum member lookup per packet costs more than the increment it indexes.
_RECEIVED, _SENT, _PASSED, _REWRITTEN, _DROPPED, _BATCHES = (
    int(Counter.RECEIVED),
    int(Counter.SENT),
    int(Counter.PASSED),
    int(Counter.REWRITTEN),
    int(Counter.DROPPED),
    int(Counter.BATCHES),
)
_FLOWLOG_RECORDS, _FLOWLOG_DROPPED = int(Counter.FLOWLOG_RECORDS), int(Counter.FLOWLOG_DROPPED)
# What all the flows of a worker waiting for their name may hold of their clients' first bytes.
HELD_BYTES_CAP = 64 << 20
_FLOWS_ACTIVE, _FLOWS_CREATED, _FLOWS_EXPIRED, _FLOWS_EVICTED = (
    int(Counter.FLOWS_ACTIVE),
    int(Counter.FLOWS_CREATED),
    int(Counter.FLOWS_EXPIRED),
    int(Counter.FLOWS_EVICTED),
)
_RX_BUFFER_DROPS = int(Counter.RX_BUFFER_DROPS)
_OPT1, _OPT2, _OPT3 = 0x01080102, 0x01080202, 0x01080301  # GWLB's options, in order
_PASS, _REWRITE, _DROP = Outcome.PASS, Outcome.REWRITE, Outcome.DROP
# A flag of our own, above the backend's 32 bits: the sender is not on the allow-list. Marking it
# per batch leaves the loop one flags test for both reasons to skip a datagram.
_FOREIGN = 1 << 32
_SKIP = TRUNCATED | _FOREIGN


def _no_heartbeat() -> None:
    pass


class Worker(Judging):
    """One data-path loop over its own batch I/O (by default its UDP socket and a raw socket)."""

    def __init__(
        self,
        data_socket: socket.socket,
        raw_socket: socket.socket,
        policy: Policy,
        counters: memoryview,
        sources: SourceFilter | None = None,
        batch_size: int = 128,
        heartbeat: Callable[[], None] = _no_heartbeat,
    ) -> None:
        """A worker on its slot's UDP socket and a raw socket (how the supervisor boots one)."""
        io = SocketBatchIO(data_socket, raw_socket, batch_size)
        self._setup(io, policy, counters, sources, heartbeat)

    @classmethod
    def over(
        cls,
        io: BatchIO,
        policy: Policy,
        counters: memoryview,
        sources: SourceFilter | None = None,
        heartbeat: Callable[[], None] = _no_heartbeat,
    ) -> Worker:
        """A worker on any batch I/O backend (a fake in tests, a memory-mapped ring)."""
        worker = cls.__new__(cls)
        worker._setup(io, policy, counters, sources, heartbeat)
        return worker

    def _setup(
        self,
        io: BatchIO,
        policy: Policy,
        counters: memoryview,
        sources: SourceFilter | None,
        heartbeat: Callable[[], None],
    ) -> None:
        self.io = io
        self._held = HeldBytes(HELD_BYTES_CAP)  # client bytes of flows waiting for a name
        self.policy = policy  # replaced whole on reload (the setter recompiles the fast path)
        self.counters = counters
        self.sources = sources
        self.heartbeat = heartbeat
        self.stopping = False
        self._pending = 0  # datagrams processed whose replies are not flushed yet
        self._starts: Sequence[int] = ()  # where the batch's datagrams start
        self._audited: list[int] = []  # decide_flow's audit hits, counted and cleared each time
        self._last_audited: tuple[int, ...] = ()  # the last decision's, for its flow record
        # The packet rules' audit hits (policy.decide, decide_packet), counted at the batch end:
        # a flow record names only the audits that decided its flow (_audited).
        self._packet_audits: list[int] = []
        self.flowlog: FlowLog | None = None  # flow records, when the config keeps them
        self._freeze_at = 0  # when the flow table's objects are next moved out of the gc's way

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # Between two batches (the worker is single-threaded), so no packet sees half of it.
        self._fast = FastPath(policy)
        self._policy = policy
        settings: dict[str, float] | None = getattr(self, "_flow_settings", None)
        if settings is None or policy.flow_settings != settings:
            self.flows = FlowTable(**policy.flow_settings)  # the first, or new bounds: afresh
            self.flows.on_end = self._flow_ended
            self._held.held = 0
            self._flow_settings: dict[str, float] = policy.flow_settings
        else:
            self.flows.generation += 1  # every flow is judged again by this policy, next packet
        flowlog = getattr(self, "flowlog", None)
        if flowlog is not None:  # records name the rules of the policy that decided them
            flowlog.rule_names = tuple(rule.name for rule in policy.rules)
        rate = policy.reject_per_second
        budget = getattr(self, "_budget", None)
        if budget is None or budget.per_second != rate:
            # A tenth of a second's worth at once: a port scan's handful of SYNs in one batch
            # all get their RST; a flood gets at most rate + burst in its first second.
            self._budget = RejectBudget(rate, max(1, rate // 10), time.monotonic_ns())

    def run(self) -> None:
        """Loop until `stopping` is set (by a signal handler); the batch in hand is finished, and
        the flows still in the table get their records."""
        while not self.stopping:
            self.run_once()
        self.close_flows()

    def run_once(self) -> int:
        """Receive one batch (waiting at most the socket timeout) and answer it; return its size."""
        n = self.io.receive()
        self.heartbeat()
        if n:
            self.process(n)
            self.flush()
        else:
            self._end_batch(time.monotonic_ns())  # an idle worker still expires its flows
        return n

    def process(self, n: int) -> None:
        """Decide the first n datagrams of the batch and queue their replies (flush sends them).

        The hot loop: everything is a local, the batch's starts and results come as flat tuples
        (one call each per batch). Without flow rules the fast path's one or two struct reads
        vouch for a datagram and settle most. With them, a TCP or UDP packet in the usual layout
        is vouched for and keyed by one struct read, and a packet of a flow already passed, that
        no packet rule can touch, costs one dict lookup more (flows.py) and one list store; a
        flow the packet rules watch shows them the packet here. Anything else (a new flow, a
        flow decided under an older policy, a dropped or rejected flow, other layouts) goes to
        `_judge`.
        """
        io, c, flows = self.io, self.counters, self.flows
        buffer, replies = io.buffer, io.replies
        classify, seen, judge, lane = self._fast.classify, flows.seen, self._judge, self._fast.lane
        get, parse = flows.lookup, parse_usual
        generation, plain, inspect, skip = flows.generation, PASS_PLAIN, PASS_INSPECT, _SKIP
        decide_packet, audits = self._policy.decide_packet, self._packet_audits
        stateless, policy, other = not self._policy.stateful, self._policy, self._other
        pass_, rewrite, drop = _PASS, _REWRITE, _DROP
        rewritten = 0
        usual_v4, usual_v6, geneve_v4, geneve_v6 = USUAL_V4, USUAL_V6, GENEVE_V4, GENEVE_V6
        opt1, opt2, opt3 = _OPT1, _OPT2, _OPT3
        tcp_byte, udp_byte = TCP_BYTE, UDP_BYTE
        now = time.monotonic_ns()
        passed = 0
        results = io.results(n)
        if self.sources is not None:
            results = _mark_foreign(results, io.senders(n), self.sources)
        flat = iter(results)
        self._starts = starts = io.starts(n)  # for the rare datagram that needs its index
        for i, start, flags, length in zip(range(n), starts, flat, flat, strict=True):
            if flags & skip:
                self._skip(flags)
                continue
            if stateless:  # no rule decides flows: every packet on its own, as ever (policy.py)
                parsed = classify(buffer, start, length, lane)
                if parsed is True:
                    passed += 1
                    replies[i] = length
                    continue
                if isinstance(parsed, int):  # the UDP lane settled it (fastpath.UdpLane)
                    if parsed >= 0:
                        rewritten += 1
                        replies[i] = parsed
                    else:
                        c[_DROPPED] += 1
                        self._count_rule(~parsed)
                    continue
                if parsed is None:
                    outcome, detail, end = decide_in_place(
                        buffer, start, start + length, policy, audits
                    )
                else:
                    outcome, detail, end = decide_parsed(buffer, parsed, policy, None, audits)
            else:
                # TCP or UDP in the usual layout: proved well formed and keyed in one read
                # (flowkey.USUAL_V4 / USUAL_V6) with the checks classify makes; 0.14 us a
                # packet more than the stateless pass, against 0.37 for classify and a key read.
                if buffer[start + 2] == 8:  # Geneve protocol 0x0800: IPv4
                    (
                        g0,
                        t1,
                        endpoint,
                        t2,
                        t3,
                        ver,
                        total,
                        frag,
                        proto,
                        ends,
                        udp_len,
                        tcp_off,
                        tcp,
                    ) = usual_v4(buffer, start)
                    well = g0 == geneve_v4 and ver == 0x45 and total == length - 40
                    well = well and not frag & 0x3FFF
                    room = total - 20
                else:
                    (g0, t1, endpoint, t2, t3, first, room, proto, ends, udp_len, tcp_off, tcp) = (
                        usual_v6(buffer, start)
                    )
                    well = g0 == geneve_v6 and first >> 28 == 6 and room == length - 80
                if not (
                    well
                    and t1 == opt1
                    and t2 == opt2
                    and t3 == opt3
                    and (
                        (proto == tcp_byte and 20 <= (tcp_off >> 4) * 4 <= room)
                        or (proto == udp_byte and 8 <= udp_len == room)
                    )
                ):
                    answer = self._stateful_other(buffer, start, length, now)
                    if answer is not None:
                        replies[i] = answer
                    continue
                key = endpoint + proto + ends
                flow = get(key)
                # A packet of a passed flow, going its flow's way or answering it once answered,
                # with no FIN, SYN or RST: what FlowTable.seen does for it, inline (the call
                # costs 0.08 us of its 0.78, worker_profile --track-flows); anything else is
                # seen's to count. (Counting every verdict inline was slower for these.)
                if (
                    flow is not None
                    and flow.verdict == plain
                    and flow.generation == generation
                    and now - flow.last_ns < flow.timeout_ns
                    and not (proto == tcp_byte and tcp & 7)
                    and (key == flow.key or flow.rev_packets)
                ):
                    if key == flow.key:
                        flow.fwd_packets += 1
                        flow.fwd_bytes += length - 40
                    else:
                        flow.rev_packets += 1
                        flow.rev_bytes += length - 40
                    flow.last_ns = now
                    passed += 1
                    replies[i] = length
                    continue
                if flow is not None:  # (a new flow's miss is not asked twice)
                    flow = seen(key, now, length - 40, tcp if proto == tcp_byte else 0)
                if flow is None or flow.generation != generation:
                    # Parsed from the same read whatever the packet rules watch: _judge needs
                    # the parse for the flow rules (classify's True made it parse again).
                    answer = judge(
                        buffer, start, length, parse(buffer, start, length), key, flow, now
                    )
                    if answer is not None:
                        replies[i] = answer
                    continue
                verdict = flow.verdict
                if verdict == plain:
                    passed += 1
                    replies[i] = length
                    continue
                parsed = classify(buffer, start, length) if verdict == inspect else None
                if parsed is None:  # dropped or rejected (or, never, unparsed): _judge counts
                    answer = judge(buffer, start, length, parsed, key, flow, now)
                    if answer is not None:
                        replies[i] = answer
                    continue
                if parsed is True:  # no packet rule watches its ports
                    passed += 1
                    replies[i] = length
                    continue
                # The packet rules before the one that passed the flow act on it (policy.py).
                decision = decide_packet(buffer, parsed, endpoint, flow.rule, audits)
                outcome, detail, end = carry_out(buffer, parsed, decision)
            # A packet's own outcome, either way.
            if outcome is pass_:
                passed += 1
                replies[i] = length
            elif outcome is rewrite:
                rewritten += 1
                replies[i] = end - start  # rewritten where it lies: its ROOM has room
            elif outcome is drop:
                c[_DROPPED] += 1
                self._count_rule(detail)
            else:
                answer = other(buffer, start, outcome, detail, end)
                if answer is not None:
                    replies[i] = answer
        self._pending = n
        c[_RECEIVED] += n
        c[_BATCHES] += 1
        c[_PASSED] += passed
        c[_REWRITTEN] += rewritten
        c[_RX_BUFFER_DROPS] = io.rx_dropped  # the socket's drops, as of this batch (batchio.py)
        if audits:
            self._count_audits(audits)
            audits.clear()
        self._end_batch(now)

    def _end_batch(self, now: int) -> None:
        """Expire what is due (a slice of it) and publish the flow counters."""
        flows, c = self.flows, self.counters
        flows.sweep(now)
        if now >= self._freeze_at and flows.active:
            # Flows are never in reference cycles (they die by reference count), but each is an
            # object the cyclic collector walks: a full collection over 200,000 flows stalled
            # the worker 78-151 ms (deploy/bench/flow_profile.py). Frozen objects are left out
            # of it; gc.freeze costs ~2 us, and once a second bounds what a collection sees.
            gc.freeze()
            self._freeze_at = now + 1_000_000_000
        if self.flowlog is not None:
            self.flowlog.flush()
            self._publish_flowlog()
        c[_FLOWS_ACTIVE] = flows.active
        c[_FLOWS_CREATED] = flows.created
        c[_FLOWS_EXPIRED] = flows.expired
        c[_FLOWS_EVICTED] = flows.evicted_early + flows.evicted_idle

    def _flow_ended(self, flow: Flow, evicted: bool) -> None:
        """A flow left the table: what its watch held is free; its record, when they are kept."""
        if flow.watch is not None:
            flow.watch.release(self._held)
        if self.flowlog is not None:
            reason = "evicted" if evicted else ("closed" if flow.closing else "idle")
            self.flowlog.ended(flow, reason, time.monotonic_ns())

    def close_flows(self) -> None:
        """The worker stops: a record of every flow it still has, sent now."""
        if self.flowlog is None:
            return
        now = time.monotonic_ns()
        for flow in self.flows.flows():
            if flow.alive:
                self.flowlog.ended(flow, "shutdown", now)
        self.flowlog.flush()
        self._publish_flowlog()

    def _publish_flowlog(self) -> None:
        flowlog, c = self.flowlog, self.counters
        if flowlog is not None:
            c[_FLOWLOG_RECORDS] = flowlog.sent
            c[_FLOWLOG_DROPPED] = flowlog.dropped

    def flush(self) -> None:
        """Send the queued replies (in one sendmmsg on the socket backend)."""
        n, self._pending = self._pending, 0
        if not n:
            return
        c = self.counters
        sent, failures = self.io.flush(n)
        c[_SENT] += sent
        for code in failures:
            c[Counter.SEND_ERRORS] += 1
            c[cnt.send_errno_index(code)] += 1


def _mark_foreign(
    results: tuple[int, ...], senders: tuple[int, ...], sources: SourceFilter
) -> tuple[int, ...]:
    """`results` with _FOREIGN set in the flags of each datagram whose sender the allow-list
    refuses. Each distinct sender is asked once per batch; when all are allowed (the usual case)
    the loop gets `results` as they are and never looks at a sender."""
    peers = senders[1::2]
    if all(map(sources, set(peers))):
        return results
    marked = list(results)
    for i, peer in enumerate(peers):
        if not sources(peer):
            marked[2 * i] |= _FOREIGN
    return tuple(marked)
