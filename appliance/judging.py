"""What the worker does with a packet its loop does not settle by itself (worker.py): judge a
flow (policy.py) and carry out its verdict, hold a flow that waits for its name (nameflow.py),
show an inspector its packets (inspection.py), answer what is rejected (reject.py, answer.py),
and count each outcome.

Why apart from the loop: the loop (worker.Worker.process) is the part every packet runs and is
kept flat and short; everything here runs for a minority of packets (a new flow, a flow not
decided yet, a drop, a reject, a malformed datagram) and reads better as small methods. Worker
inherits them; they use the worker's state (its counters, flow table, policy, reject budget,
batch I/O), declared below.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from appliance import counters as cnt
from appliance.answer import reset_toward_server, write_dns_answer
from appliance.batch import ROOM, TRUNCATED, BatchIO
from appliance.conditions import Names
from appliance.counters import Counter
from appliance.datapath import (
    Outcome,
    carry_out,
    parse_datagram,
    reject_in_place,
)
from appliance.errors import Reason
from appliance.fastpath import FastPath
from appliance.flowkey import (
    TCP_FLAGS_V6,
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

_RULE_LAST = cnt.RULE_BASE + cnt.MAX_RULES - 1
# Plain ints: an IntEnum member lookup per packet costs more than the increment it indexes.
_PASSED, _REWRITTEN, _DROPPED, _DISALLOWED = (
    int(Counter.PASSED),
    int(Counter.REWRITTEN),
    int(Counter.DROPPED),
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
_DENIED = frozenset({DROP, REJECT})
_INSPECT_ERRORS, _INSPECT_OVERTIME = int(Counter.INSPECT_ERRORS), int(Counter.INSPECT_OVERTIME)
_HIT_BASE, _AUDIT_BASE = cnt.HIT_BASE, cnt.AUDIT_BASE
_SETTLED = frozenset({PASS_PLAIN, DROP, REJECT})  # verdicts carried out without a parse
_KEY_V4, _KEY_V6 = key_v4, key_v6
_PASS_VERDICT, _PENDING_VERDICT = Verdict.PASS, Verdict.PENDING
# A decide_flow verdict other than PASS and PENDING: the flow's code (flowverdict.py).
_FLOW_CODES = {Verdict.DROP: DROP, Verdict.REJECT: REJECT, Verdict.INSPECT: INSPECTING}


class Judging:
    """The worker's slow path (module doc); mixed into worker.Worker."""

    io: BatchIO
    counters: memoryview
    flows: FlowTable
    flowlog: FlowLog | None
    _policy: Policy
    _fast: FastPath
    _budget: RejectBudget
    _starts: Sequence[int]
    _held: HeldBytes
    _audited: list[int]
    _last_audited: tuple[int, ...]
    _packet_audits: list[int]

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
                buf,
                start,
                parsed,
                policy.decide_packet(buf, parsed, endpoint, flow.rule, self._packet_audits),
            )
        return self._judge(buf, start, length, parsed, key, flow, now)

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
            return self._carry(
                buf, start, pkt, policy.decide(buf, pkt, endpoint, self._packet_audits)
            )
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
            decision = policy.decide_packet(buf, pkt, endpoint, flow.rule, self._packet_audits)
            return self._carry(buf, start, pkt, decision)
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
                buf,
                start,
                pkt,
                self._policy.decide_packet(buf, pkt, endpoint, rule, self._packet_audits),
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

    def _decided(self, flow: Flow, now: int) -> None:
        """A flow's verdict was just reached: a record when it denies (or audit mode passed it)."""
        if self.flowlog is not None and (flow.verdict in _DENIED or self._last_audited):
            self.flowlog.denied(flow, now, self._last_audited)

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
            self._count_audits(audited)
            self._last_audited = tuple(audited)
            audited.clear()
        verdict, rule = decision.verdict, decision.rule
        if verdict is _PENDING_VERDICT:
            return (PER_QUERY if pkt.protocol == PROTO_UDP else PENDING), rule
        if rule >= 0:
            self.counters[_HIT_BASE + min(rule, _MAX_RULES - 1)] += 1
        if verdict is _PASS_VERDICT:  # the most common, asked first
            inspect = self._policy.inspects(buf, pkt, endpoint, rule)
            return (PASS_INSPECT if inspect else PASS_PLAIN), rule
        return _FLOW_CODES[verdict], rule  # drop, reject, inspect

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

    def _count_audits(self, audited: list[int]) -> None:
        """Denials audit mode let pass: each counted, and per rule (not the default's)."""
        c = self.counters
        for index in audited:
            c[_AUDITED] += 1
            if index >= 0:
                c[_AUDIT_BASE + min(index, _MAX_RULES - 1)] += 1

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
