"""The worker loop: receive a batch, decide each datagram, reply to GWLB in one batch.

The loop talks to its I/O only through appliance.batch.BatchIO, once per batch: it gets the buffer,
where each datagram starts and the kernel's results as flat tuples, and queues a reply by storing
its length into `replies`; the backend writes the outer headers and sends when it flushes.
Per packet the loop is flat: local-variable lookups, the fast path's one or two struct reads
(fastpath.FastPath.classify), and only for a packet some rule may touch the policy
(datapath.decide_parsed) or the full parse (datapath.decide_in_place). When the policy decides
flows (policy.py), each packet is looked up in the worker's flow table (flows.py) by a key read
from its bytes; a packet of a flow already passed needs nothing more, and everything else goes to
`_judge`. A datagram that is malformed is counted and skipped; it never stops its neighbours in
the batch. The receive waits at
most the socket's timeout (1 s) so that the heartbeat is stamped even when no traffic comes.
"""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Callable, Sequence
from typing import Literal

from appliance import counters as cnt
from appliance.answer import reset_toward_server, write_dns_answer
from appliance.batch import ROOM, TRUNCATED, BatchIO
from appliance.batchio import SocketBatchIO
from appliance.conditions import Names
from appliance.counters import Counter
from appliance.datapath import (
    Outcome,
    carry_out,
    decide_in_place,
    decide_parsed,
    parse_datagram,
    reject_in_place,
)
from appliance.errors import Reason
from appliance.fastpath import GENEVE_V4, GENEVE_V6, FastPath
from appliance.flowkey import (
    TCP_BYTE,
    TCP_FLAGS_V6,
    UDP_BYTE,
    USUAL_V4,
    USUAL_V6,
    FlowKey,
    flow_key,
    key_v4,
    key_v6,
    tcp_flags,
)
from appliance.flowlog import FlowLog
from appliance.flows import PROTOCOL_AT, Flow, FlowTable
from appliance.flowverdict import (
    DROP,
    INSPECTING,
    PASS_INSPECT,
    PASS_PLAIN,
    PENDING,
    PER_QUERY,
    REJECT,
    UNDECIDED,
)
from appliance.geneve import usual_endpoint_id
from appliance.inner import PROTO_TCP, PROTO_UDP, InnerPacket
from appliance.inspection import Packet
from appliance.nameflow import HeldBytes, NameWatch, possible, query_names
from appliance.names.dns import synthesize_answer
from appliance.policy import Decision, Policy, Verdict
from appliance.reject import RejectBudget
from appliance.sources import SourceFilter

_RULE_LAST = cnt.RULE_BASE + cnt.MAX_RULES - 1
# Plain ints: an IntEnum member lookup per packet costs more than the increment it indexes.
_RECEIVED, _SENT, _PASSED, _REWRITTEN, _DROPPED, _BATCHES, _DISALLOWED = (
    int(Counter.RECEIVED),
    int(Counter.SENT),
    int(Counter.PASSED),
    int(Counter.REWRITTEN),
    int(Counter.DROPPED),
    int(Counter.BATCHES),
    int(Counter.DISALLOWED_SOURCE),
)
_RULE_BASE, _MAX_RULES = cnt.RULE_BASE, cnt.MAX_RULES
_REJECTED, _REJECTS_SENT, _REJECTS_SUPPRESSED, _DEFAULT_DECIDED = (
    int(Counter.REJECTED),
    int(Counter.REJECTS_SENT),
    int(Counter.REJECTS_SUPPRESSED),
    int(Counter.DEFAULT_DECIDED),
)
_HELD, _AUDITED = int(Counter.NAME_HELD), int(Counter.AUDITED)
_FLOWLOG_RECORDS, _FLOWLOG_DROPPED = int(Counter.FLOWLOG_RECORDS), int(Counter.FLOWLOG_DROPPED)
_DENIED = frozenset({DROP, REJECT})
_INSPECT_ERRORS, _INSPECT_OVERTIME = int(Counter.INSPECT_ERRORS), int(Counter.INSPECT_OVERTIME)
_HIT_BASE, _AUDIT_BASE = cnt.HIT_BASE, cnt.AUDIT_BASE
_SETTLED = frozenset({PASS_PLAIN, DROP, REJECT})  # verdicts carried out without a parse
# What all the flows of a worker waiting for their name may hold of their clients' first bytes.
HELD_BYTES_CAP = 64 << 20
_FLOWS_ACTIVE, _FLOWS_CREATED, _FLOWS_EXPIRED, _FLOWS_EVICTED = (
    int(Counter.FLOWS_ACTIVE),
    int(Counter.FLOWS_CREATED),
    int(Counter.FLOWS_EXPIRED),
    int(Counter.FLOWS_EVICTED),
)
_RX_BUFFER_DROPS = int(Counter.RX_BUFFER_DROPS)
_KEY_V4, _KEY_V6 = key_v4, key_v6
_OPT1, _OPT2, _OPT3 = 0x01080102, 0x01080202, 0x01080301  # GWLB's options, in order
_PASS, _REWRITE, _DROP = Outcome.PASS, Outcome.REWRITE, Outcome.DROP
# A flag of our own, above the backend's 32 bits: the sender is not on the allow-list. Marking it
# per batch leaves the loop one flags test for both reasons to skip a datagram.
_FOREIGN = 1 << 32
_SKIP = TRUNCATED | _FOREIGN


def _no_heartbeat() -> None:
    pass


class Worker:
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
        classify, seen, judge = self._fast.classify, flows.seen, self._judge
        get = flows.lookup
        generation, plain, inspect, skip = flows.generation, PASS_PLAIN, PASS_INSPECT, _SKIP
        decide_packet = self._policy.decide_packet
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
                parsed = classify(buffer, start, length)
                if parsed is True:
                    passed += 1
                    replies[i] = length
                    continue
                if parsed is None:
                    outcome, detail, end = decide_in_place(buffer, start, start + length, policy)
                else:
                    outcome, detail, end = decide_parsed(buffer, parsed, policy)
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
                flow = seen(key, now, length - 40, tcp if proto == tcp_byte else 0)
                if flow is None or flow.generation != generation:
                    answer = judge(
                        buffer, start, length, classify(buffer, start, length), key, flow, now
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
                decision = decide_packet(buffer, parsed, endpoint, flow.rule)
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
        self._end_batch(now)

    def _stateful_other(self, buf: bytearray, start: int, length: int, now: int) -> int | None:
        """A packet, under a flow-deciding policy, that the loop's one read does not vouch for
        (ICMP, other protocols, anything the full path must parse): the reply's length, or
        None."""
        parsed = self._fast.classify(buf, start, length)
        if parsed is None:
            return self._judge(buf, start, length, None, None, None, now)
        if buf[start + 2] == 8:  # Geneve protocol 0x0800: IPv4
            key, tcp = _KEY_V4(buf, start), 0
        else:
            key = _KEY_V6(buf, start)
            tcp = buf[start + TCP_FLAGS_V6] if key[PROTOCOL_AT] == PROTO_TCP else 0
        flow = self.flows.seen(key, now, length - 40, tcp)
        if (
            flow is not None
            and flow.verdict == PASS_INSPECT
            and flow.generation == self.flows.generation
            and parsed is not True
        ):  # a flow the packet rules watch (the demo's echo requests): show them the packet
            policy = self._policy
            endpoint = usual_endpoint_id(buf, start + 40) if policy.needs_endpoint else b""
            return self._carry(
                buf, start, parsed, policy.decide_packet(buf, parsed, endpoint, flow.rule)
            )
        return self._judge(buf, start, length, parsed, key, flow, now)

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

    def _judge(
        self,
        buf: bytearray,
        start: int,
        length: int,
        parsed: InnerPacket | Literal[True] | None,
        key: FlowKey | None,
        flow: Flow | None,
        now: int,
    ) -> int | None:
        """Everything the hot loop does not settle: the reply's length, or None for no reply.

        `parsed`: the fast path's answer (None: another layout, parsed here in full); `key` and
        `flow`: the flow the hot loop found (None: not looked for, or no live flow)."""
        flows, policy = self.flows, self._policy
        if flow is not None and flow.generation == flows.generation and flow.verdict in _SETTLED:
            return self._apply(buf, start, length, flow.verdict, flow.rule)  # no parse needed
        if parsed is None or parsed is True:
            got = parse_datagram(buf, start, start + length)
            if isinstance(got, int):
                self._refuse(Outcome.MALFORMED, got)
                return None
            pkt, endpoint = got
            if key is None:
                key = flow_key(buf, pkt, endpoint)
                if key is not None:
                    flow = flows.seen(key, now, pkt.end - pkt.start, tcp_flags(buf, pkt))
        else:
            pkt, endpoint = parsed, usual_endpoint_id(buf, parsed.start)  # a rule may need it
        if key is None:  # a later fragment: no ports, no flow to go by; judged on its own
            return self._carry(buf, start, pkt, policy.decide(buf, pkt, endpoint))
        if flow is None or flow.generation != flows.generation:
            # What the flow has shown of the names the rules ask (nameflow.py); a flow judged
            # again after a reload keeps what it showed.
            watch = None if flow is None else flow.watch
            names = watch.names if watch is not None else possible(policy.name_kinds, pkt)
            verdict, rule = self._verdict(buf, pkt, endpoint, names)
            if flow is None:
                size = pkt.end - pkt.start
                flow = flows.open(key, now, size, verdict, rule, tcp_flags(buf, pkt))
            else:
                flows.decide(flow, verdict, rule)
            if verdict in UNDECIDED and watch is None:
                flow.watch = NameWatch(names)
            self._decided(flow, now)
        verdict = flow.verdict
        if verdict == PASS_INSPECT:
            return self._carry(buf, start, pkt, policy.decide_packet(buf, pkt, endpoint, flow.rule))
        if verdict in UNDECIDED:
            return self._undecided(buf, start, length, pkt, endpoint, key == flow.key, flow)
        return self._apply(buf, start, length, verdict, flow.rule)

    def _undecided(
        self,
        buf: bytearray,
        start: int,
        length: int,
        pkt: InnerPacket,
        endpoint: bytes,
        forward: bool,
        flow: Flow,
    ) -> int | None:
        """A packet of a flow not decided yet (flowverdict.py): shown to what decides it."""
        policy, watch = self._policy, flow.watch
        if flow.verdict == INSPECTING:
            return self._inspect(buf, start, length, pkt, endpoint, forward, flow)
        if not forward:  # the server's side: nothing waits on it (nameflow.py)
            self.counters[_PASSED] += 1
            return length
        if flow.verdict == PER_QUERY:  # DNS over UDP: each query by its own name
            names = query_names(policy.name_kinds, buf, pkt)
            verdict, rule = self._verdict(buf, pkt, endpoint, names)
            if names.get("dns_name"):
                watch.names["dns_name"] = names["dns_name"]  # the last one, for `flows`
            return self._act(buf, start, length, pkt, endpoint, forward, flow, verdict, rule)
        # PENDING: a client TCP segment; the handshake and bare ACKs go through.
        if pkt.protocol != PROTO_TCP or not watch.client_packet(
            buf, pkt, policy.name_settings, policy.name_kinds, self._held
        ):
            self.counters[_PASSED] += 1
            return length
        verdict, rule = self._verdict(buf, pkt, endpoint, watch.names)
        if verdict == PENDING:
            self.counters[_HELD] += 1  # kept in the watch; TCP sends it again
            return None
        stream_start = watch.head.start if watch.head is not None else None
        watch.release(self._held)
        self.flows.decide(flow, verdict, rule)
        self._decided(flow, time.monotonic_ns())
        if verdict == REJECT and stream_start is not None:
            return self._reset_both(buf, start, length, pkt, rule, stream_start)
        return self._act(buf, start, length, pkt, endpoint, forward, flow, verdict, rule)

    def _act(
        self,
        buf: bytearray,
        start: int,
        length: int,
        pkt: InnerPacket,
        endpoint: bytes,
        forward: bool,
        flow: Flow,
        verdict: int,
        rule: int,
    ) -> int | None:
        """Carry out a verdict just reached, on the packet that reached it."""
        if verdict == PASS_INSPECT:
            return self._carry(
                buf, start, pkt, self._policy.decide_packet(buf, pkt, endpoint, rule)
            )
        if verdict == INSPECTING:
            return self._inspect(buf, start, length, pkt, endpoint, forward, flow)
        if verdict == REJECT and flow.verdict == PER_QUERY:
            return self._answer_query(buf, start, pkt, rule)
        if verdict in UNDECIDED:  # cannot be: every name is known by now; let it be judged later
            verdict = PASS_PLAIN
        return self._apply(buf, start, length, verdict, rule)

    def _inspect(
        self,
        buf: bytearray,
        start: int,
        length: int,
        pkt: InnerPacket,
        endpoint: bytes,
        forward: bool,
        flow: Flow,
    ) -> int | None:
        """A packet of a flow an inspector judges (inspection.py): its verdict for this packet,
        and for the whole flow when it says so."""
        inspector = self._policy.rules[flow.rule].inspector
        view = Packet(
            buf, pkt, endpoint, forward, flow.watch.names, flow.fwd_packets + flow.rev_packets
        )
        errors, overtime = inspector.errors, inspector.overtime
        verdict, whole = inspector(view)  # never raises: on_error stands in (inspection.py)
        c = self.counters
        c[_INSPECT_ERRORS] += inspector.errors - errors
        c[_INSPECT_OVERTIME] += inspector.overtime - overtime
        if whole:
            if verdict == PASS_PLAIN and self._policy.inspects(buf, pkt, endpoint, flow.rule):
                verdict = PASS_INSPECT  # the packet rules before it still see its packets
            self.flows.decide(flow, verdict, flow.rule)
            self._last_audited = ()
            self._decided(flow, time.monotonic_ns())
        return self._apply(buf, start, length, verdict, flow.rule)

    def _answer_query(self, buf: bytearray, start: int, pkt: InnerPacket, rule: int) -> int | None:
        """A refused DNS query over UDP: answered (policy.dns_reject_rcode) in its place."""
        c = self.counters
        c[_REJECTED] += 1
        self._count_rule(rule)
        now = time.monotonic_ns()
        budget = self._budget
        try:
            answer = synthesize_answer(
                bytes(buf[pkt.payload : pkt.end]), self._policy.name_settings["dns_reject_rcode"]
            )
        except ValueError:
            answer = None  # no question to answer: an ICMP error instead
        if answer is None:
            end = self._reject(buf, start, pkt.end, rule, counted=True)
            return None if end is None else end - start
        if not budget.allow(now):
            c[_REJECTS_SUPPRESSED] += 1
            return None
        end = write_dns_answer(buf, start, pkt, answer, ROOM)
        c[_REJECTS_SENT if end is not None else _REJECTS_SUPPRESSED] += 1
        return None if end is None else end - start

    def _reset_both(
        self, buf: bytearray, start: int, length: int, pkt: InnerPacket, rule: int, seq: int
    ) -> int | None:
        """A TCP flow refused by name: a RST to the client (in the packet's place) and one to
        the server (answer.py), so that neither side waits; one reject against the ceiling."""
        toward_server = reset_toward_server(buf, start, pkt, seq)  # before the slot is rewritten
        end = self._reject(buf, start, start + length, rule)
        if end is not None:
            self.io.extra(self._starts.index(start), toward_server)
        return None if end is None else end - start

    def _flow_ended(self, flow: Flow, evicted: bool) -> None:
        """A flow left the table: what its watch held is free; its record, when they are kept."""
        if flow.watch is not None:
            flow.watch.release(self._held)
        if self.flowlog is not None:
            reason = "evicted" if evicted else ("closed" if flow.closing else "idle")
            self.flowlog.ended(flow, reason, time.monotonic_ns())

    def _decided(self, flow: Flow, now: int) -> None:
        """A flow's verdict was just reached: a record when it denies (or audit mode passed it)."""
        if self.flowlog is not None and (flow.verdict in _DENIED or self._last_audited):
            self.flowlog.denied(flow, now, self._last_audited)

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

    def _apply(
        self, buf: bytearray, start: int, length: int, verdict: int, rule: int
    ) -> int | None:
        """Carry out a flow's verdict that needs no look at the packet (pass, drop, reject):
        the reply's length, or None."""
        if verdict == PASS_PLAIN:
            self.counters[_PASSED] += 1
            return length
        if verdict == DROP:
            self.counters[_DROPPED] += 1
            self._count_rule(rule)
            return None
        answer = self._reject(buf, start, start + length, rule)  # REJECT
        return None if answer is None else answer - start

    def _other(
        self, buf: bytearray, start: int, outcome: Outcome, detail: int, end: int
    ) -> int | None:
        """A reject, or a refusal: the reply's length (a reject's answer), or None."""
        if outcome is Outcome.REJECT:
            answer = self._reject(buf, start, end, detail)
            return None if answer is None else answer - start
        self._refuse(outcome, detail)
        return None

    def _verdict(
        self, buf: bytearray, pkt: InnerPacket, endpoint: bytes, names: Names
    ) -> tuple[int, int]:
        """A flow's verdict code (flowverdict.py) and deciding rule, from its first packet (or
        the one that showed its name); each rule that decides is counted a hit, each audited
        denial an audit hit."""
        audited = self._audited
        decision = self._policy.decide_flow(buf, pkt, endpoint, names, audited)
        self._last_audited = ()
        if audited:
            c = self.counters
            for index in audited:
                c[_AUDITED] += 1
                if index >= 0:
                    c[_AUDIT_BASE + min(index, _MAX_RULES - 1)] += 1
            self._last_audited = tuple(audited)
            audited.clear()
        verdict, rule = decision.verdict, decision.rule
        if verdict is Verdict.PENDING:
            return (PER_QUERY if pkt.protocol == PROTO_UDP else PENDING), rule
        if rule >= 0:
            self.counters[_HIT_BASE + min(rule, _MAX_RULES - 1)] += 1
        if verdict is Verdict.DROP:
            return DROP, rule
        if verdict is Verdict.REJECT:
            return REJECT, rule
        if verdict is Verdict.INSPECT:
            return INSPECTING, rule
        inspect = self._policy.inspects(buf, pkt, endpoint, decision.rule)
        return (PASS_INSPECT if inspect else PASS_PLAIN), decision.rule

    def _carry(
        self, buf: bytearray, start: int, pkt: InnerPacket, decision: Decision
    ) -> int | None:
        """Carry out a packet's own decision: the reply's length, or None."""
        outcome, detail, end = carry_out(buf, pkt, decision)
        c = self.counters
        if outcome is Outcome.PASS:
            c[_PASSED] += 1
        elif outcome is Outcome.REWRITE:
            c[_REWRITTEN] += 1
        else:
            return self._other(buf, start, outcome, detail, end)
        return end - start

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

    def _count_rule(self, rule: int) -> None:
        """A hit of the deciding rule, or of policy.default (rule < 0)."""
        if rule < 0:
            self.counters[_DEFAULT_DECIDED] += 1
        else:
            self.counters[_RULE_BASE + rule if rule < _MAX_RULES else _RULE_LAST] += 1

    def _reject(
        self, buffer: bytearray, start: int, end: int, rule: int, counted: bool = False
    ) -> int | None:
        """Count a reject (unless `counted`) and turn the datagram into the answer to its
        sender: its new end, or None when nothing is sent (nothing may answer it, or the
        ceiling was reached)."""
        c = self.counters
        if not counted:
            c[_REJECTED] += 1
            self._count_rule(rule)
        budget, now = self._budget, time.monotonic_ns()
        if budget.spent(now):  # over the ceiling: not even worth parsing (a reject flood)
            c[_REJECTS_SUPPRESSED] += 1
            return None
        answer = reject_in_place(buffer, start, end, lambda: budget.allow(now))
        c[_REJECTS_SENT if answer is not None else _REJECTS_SUPPRESSED] += 1
        return answer

    def _skip(self, flags: int) -> None:
        if flags & TRUNCATED:
            self._refuse(Outcome.MALFORMED, Reason.DATAGRAM_TOO_BIG)
        else:
            self.counters[_DISALLOWED] += 1

    def _refuse(self, outcome: Outcome, detail: int) -> None:
        c = self.counters
        if outcome is Outcome.MALFORMED:
            c[Counter.MALFORMED] += 1
            c[cnt.MALFORMED_BASE + detail] += 1
        elif outcome is Outcome.DROP:
            c[Counter.DROPPED] += 1
            self._count_rule(detail)
        elif outcome is Outcome.OVERSIZE:
            c[Counter.OVERSIZE] += 1
        else:
            c[Counter.UNREWRITABLE] += 1


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
