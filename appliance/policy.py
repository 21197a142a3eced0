"""The policy engine: rules are data (from the config file), compiled once, asked per packet.

A rule is a name, an action and its conditions (appliance/conditions.py: one class per `match`
key). Semantics, in rule order:
- a rule matches when every condition it names holds;
- `drop`, `reject` and `drop_seq_multiple` (ICMP echo whose sequence number is a multiple of
  `every`) decide: the first matching one wins, even over a replace that matched before it;
- `replace` rewrites every occurrence of `find` in the payload (it matches only when `find` is
  in the payload as it arrived); all matching replaces apply, in rule order, each to the result
  of the one before;
- `pass` stops the evaluation: later rules are not asked;
- what no rule decides gets `policy.default`: pass (the default), drop or reject; under a
  default that denies, only a `pass` rule lets a packet through (a replace decides nothing).
Fragments: a later fragment has no transport header and passes untouched; a first fragment is
subject to drop rules, but a replace cannot be done without reassembly, so it is dropped instead.

With a flow table (the worker's), the same rules are asked in two parts, so that a verdict sticks
to a whole flow: the FLOW rules (pass, drop or reject, with no payload condition) decide a flow
once, at its first packet (`decide_flow`), and every later packet of it, either way, gets that
verdict; the PACKET rules (replace, drop_seq_multiple, and any rule with payload_contains) still
act on each packet of a flow that passes (`decide_packet`), as far as the rule that passed the
flow: a `pass` rule stops the evaluation as it always did. A packet's fate is the one `decide`
gives; only the rule a drop is counted under may differ, when a later flow rule and an earlier
payload rule both drop it.

Names and inspectors are flow rules too, asked at the flow's level only. A rule with a name
condition (conditions.NameCondition: the TLS server name, HTTP Host or DNS question the flow
shows) whose other conditions hold waits for that name: decide_flow answers PENDING, and the
worker asks again once the flow has shown it (nameflow.py). An `inspect` rule that matches hands
the flow to its inspector (inspection.py): INSPECT. A rule in audit mode that would deny is
counted and skipped; under policy.mode = "audit" every denial is counted and passes. The
stateless `decide` never asks a name or an inspector: neither can say anything of one packet.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from appliance.conditions import (
    REGISTRY,
    Buffer,
    Check,
    Condition,
    Endpoint,
    IcmpType,
    IpVersion,
    NameCondition,
    Names,
    PayloadContains,
    Port,
    Protocol,
    SrcPort,
)
from appliance.conditions import DstPort as _DstPort
from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, Fragment, InnerPacket

REWRITABLE_PROTOCOLS = frozenset({PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6})


class Action(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    REJECT = "reject"  # drop, and tell the sender at once (a TCP RST or an ICMP unreachable)
    REPLACE = "replace"
    DROP_SEQ_MULTIPLE = "drop_seq_multiple"
    INSPECT = "inspect"  # an inspector written in Python decides the flow (inspection.py)


class Verdict(enum.IntEnum):
    PASS = 0
    DROP = 1  # a rule (or the default) dropped it: `rule` says which
    REWRITE = 2  # `replacements` say what to change
    UNREWRITABLE = 3  # a replace matched a fragment (or a routed IPv6 packet): dropped
    REJECT = 4  # dropped, and the sender is told
    PENDING = 5  # decide_flow: `rule` waits for a name the flow has not shown yet
    INSPECT = 6  # decide_flow: `rule`'s inspector judges the flow's packets


DEFAULTS = {"pass": Verdict.PASS, "drop": Verdict.DROP, "reject": Verdict.REJECT}
DEFAULT_RULE = -2  # the `rule` of a decision made by policy.default
# A flow waiting for its name (nameflow.py): the client's first bytes read for it, the packets it
# may send before the name must be known (else the flow is decided without it), and the DNS
# response code a refused query is answered with (5 REFUSED, 3 NXDOMAIN).
NAME_DEFAULTS: dict[str, int] = {"name_bytes": 16384, "name_packets": 16, "dns_reject_rcode": 5}
_NO_NAMES: dict[str, str | None] = {}
REJECTS_PER_SECOND = 1000
# GWLB's own idle timeouts (DESIGN.md section 1), and a bound: ~500 bytes a flow (flows.py).
FLOW_DEFAULTS: dict[str, Any] = {
    "max_flows": 200_000,
    "tcp_timeout_s": 350.0,
    "other_timeout_s": 120.0,
    "closing_linger_s": 10.0,
}


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    match: tuple[Condition, ...] = ()
    find: bytes = b""  # replace
    replace: bytes = b""  # replace
    every: int = 0  # drop_seq_multiple
    inspector: Any = None  # inspect: an inspection.Inspector
    audit: bool = False  # count what it would deny, let it pass, go on to the next rule

    def names(self) -> tuple[NameCondition, ...]:
        """Its conditions on names the flow shows (TLS server name, HTTP Host, DNS question)."""
        return tuple(c for c in self.match if isinstance(c, NameCondition))

    def protocols(self) -> frozenset[int] | None:
        """The protocols a matching packet can have (every condition's narrowing); None: any."""
        allowed: frozenset[int] | None = None
        for condition in self.match:
            narrowed = condition.protocols()
            if narrowed is not None:
                allowed = narrowed if allowed is None else allowed & narrowed
        return allowed

    def ports(self) -> frozenset[int] | None:
        """Ports, one of which (either side) a matching packet has; None: any port."""
        sets = [s for c in self.match if (s := c.ports()) is not None]
        return min(sets, key=len) if sets else None

    def icmp_types(self) -> frozenset[int] | None:
        sets = [s for c in self.match if (s := c.icmp_types()) is not None]
        return min(sets, key=len) if sets else None


def Match(**conditions: Any) -> tuple[Condition, ...]:  # capitalised: reads as a table
    """Conditions from keyword arguments, for code that builds rules by hand (tests, tools):
    the config's keys, or the older plural names (`ports`, `icmp_types`, ...) with sets."""
    built: list[Condition] = []
    for key, value in conditions.items():
        if value is None:
            continue
        kind = _BY_KEYWORD.get(key) or REGISTRY[key]
        built.append(kind(value) if key in _BY_KEYWORD else kind.from_config(value))  # type: ignore[call-arg]
    return tuple(built)


_BY_KEYWORD: dict[str, Any] = {
    "ip_version": IpVersion,
    "protocol": Protocol,
    "ports": Port,
    "src_ports": SrcPort,
    "dst_ports": _DstPort,
    "icmp_types": IcmpType,
    "payload_contains": PayloadContains,
}


# A replacement as the rewrite needs it: find, replace, and how the payload's 16-bit word sum
# changes per occurrence at an even or an odd offset (None: the length changes by an odd count).
Replacement = tuple[bytes, bytes, tuple[int, int] | None]


class LaneRule(NamedTuple):
    """A rule as fastpath.UdpLane asks it of a UDP packet: `decide`'s checks as plain values."""

    rule: int  # its index in the policy
    version: int  # `ip_version`; 0: either
    ports: frozenset[int] | None  # `port` (either side); None: any
    src_ports: frozenset[int] | None
    dst_ports: frozenset[int] | None
    needles: tuple[bytes, ...]  # `payload_contains`: each must be in the payload
    action: Action  # pass, drop, reject or replace
    replacement: Replacement


class Decision(NamedTuple):
    verdict: Verdict
    rule: int  # index of the deciding rule; -1 when none decided, DEFAULT_RULE for the default
    replacements: tuple[Replacement, ...]


PASS_DECISION = Decision(Verdict.PASS, -1, ())


class _Compiled(NamedTuple):
    """A rule as the per-packet loop reads it: its checks (the protocol already known), what it
    does, and every decision it can make, made once."""

    rule: int  # its index in the policy
    flow_checks: tuple[Check, ...]  # its flow-wide checks: a flow they fail is spared the rule
    checks: tuple[Check, ...]
    action: Action
    every: int
    replacement: Replacement
    decided: Decision  # drop, reject, pass, the rewrite it starts, or its inspection
    names: tuple[NameCondition, ...]  # asked of the names a flow shows (decide_flow)
    audit: bool


class Policy:
    """A compiled, immutable rule list. `decide` is called once per packet on the slow path."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        default: Verdict = Verdict.PASS,
        reject_per_second: int = REJECTS_PER_SECOND,
        flow_settings: dict[str, float] | None = None,
        track_flows: bool = False,
        audit: bool = False,
        name_settings: dict[str, int] | None = None,
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.audit = audit  # policy.mode = "audit": every denial is counted and passes
        # How long a flow may wait for its name, and what a refused DNS query is answered with.
        self.name_settings: dict[str, int] = {**NAME_DEFAULTS, **(name_settings or {})}
        # The kinds of name some rule asks (conditions.NAME_KEYS): a flow waits only for these.
        self.name_kinds = frozenset(c.key for r in self.rules for c in r.names())
        self.inspects_flows = any(r.action is Action.INSPECT for r in self.rules)
        # The worker's flow table: FlowTable's keyword arguments (max_flows, timeouts).
        self.flow_settings: dict[str, Any] = {**FLOW_DEFAULTS, **(flow_settings or {})}
        self.default = default
        self.reject_per_second = reject_per_second  # each worker's ceiling on generated rejects
        # Finding the endpoint id costs a slice per packet: only when a condition reads it.
        self.needs_endpoint = any(c.needs_endpoint for r in self.rules for c in r.match)
        self.default_decision = (
            PASS_DECISION if default is Verdict.PASS else Decision(default, DEFAULT_RULE, ())
        )
        compiled = [_compile(i, r) for i, r in enumerate(self.rules)]
        decides_flows = [_decides_flows(r) for r in self.rules]
        # Rules that can match each transport protocol, in order: most packets meet one or two.
        # `decide` asks every rule a packet alone can answer: not names, not inspectors.
        alone = [not r.names() and r.action is not Action.INSPECT for r in self.rules]
        # Then per endpoint id (_by_endpoint): a packet meets only the rules its endpoint can
        # match, as an index of rule lists, with the endpoint check left out of them.
        asked_alone = _by_protocol(compiled, self.rules, alone)
        self._by_protocol = _by_endpoint(asked_alone, self.rules)
        self._flow_rules = _by_endpoint(
            _by_protocol(compiled, self.rules, decides_flows), self.rules
        )
        self._packet_rules = _by_endpoint(
            _by_protocol(compiled, self.rules, [not d for d in decides_flows]), self.rules
        )
        # Flows are tracked only when something decides them: a flow rule, a default that
        # denies, or an operator who asked (policy.track_flows, for `appliancectl flows`).
        # Without, every packet is judged alone and a passing packet costs what it always did.
        self.stateful = track_flows or default is not Verdict.PASS or audit or any(decides_flows)
        self.packet_rules = tuple(
            r for r, d in zip(self.rules, decides_flows, strict=True) if not d
        )
        # `decide` for UDP as plain data, when every rule it asks of UDP has a shape the lane
        # reads (fastpath.UdpLane); None: UDP takes `decide`. Only under a default that passes:
        # a denying default makes the policy stateful, and the lane answers for `decide` alone.
        self.udp_lane = (
            _udp_lane(asked_alone[PROTO_UDP], self.rules) if default is Verdict.PASS else None
        )

    def decide(
        self,
        buf: Buffer,
        pkt: InnerPacket,
        endpoint: bytes = b"",
        audited: list[int] | None = None,
    ) -> Decision:
        """The verdict for the parsed inner packet `pkt` inside `buf`, from GWLB endpoint
        `endpoint` (its 8-byte id), by every rule: the stateless answer. A denial that audit
        mode lets pass is appended to `audited` (its rule, or DEFAULT_RULE)."""
        return self._evaluate(
            self._by_protocol, buf, pkt, endpoint, _ALL, self.default_decision, audited
        )

    def decide_flow(
        self,
        buf: Buffer,
        pkt: InnerPacket,
        endpoint: bytes = b"",
        names: Names = _NO_NAMES,
        audited: list[int] | None = None,
    ) -> Decision:
        """The verdict for the flow whose packet `pkt` is (its first, or the one that showed its
        name), by the flow rules: PASS (with the deciding `pass` rule's index, or -1 when none
        decided and the default passes), DROP or REJECT; INSPECT when an inspect rule matches
        (its inspector decides); PENDING when a rule's other conditions hold and it asks a name
        `names` (conditions.Names) does not know yet: ask again once the flow shows it.
        Audit: a rule in audit mode that would deny is appended to `audited` and the next rule
        asked; under policy.mode = "audit" a denial is appended and PASS returned."""
        by_endpoint, others = self._flow_rules[pkt.protocol]
        entries = by_endpoint.get(endpoint, others) if by_endpoint else others
        for index, _, checks, action, _, _, decided, named, audit in entries:
            for check in checks:
                if not check(buf, pkt, endpoint):
                    break
            else:
                if named:
                    if any(c.key not in names for c in named):
                        return Decision(Verdict.PENDING, index, ())
                    if not all(c.matches(names[c.key]) for c in named):
                        continue
                if action is _PASS:
                    return decided  # made once (_compile): a NamedTuple's __new__ is Python
                if audit and action is not Action.INSPECT:
                    if audited is not None:
                        audited.append(index)
                    continue
                return self._enforced(decided, audited)
        return self._enforced(self.default_decision, audited)

    def _enforced(self, decision: Decision, audited: list[int] | None) -> Decision:
        """`decision`, or under policy.mode = "audit" a pass when it denies (counted)."""
        if not self.audit or decision.verdict not in _DENIALS:
            return decision
        if audited is not None:
            audited.append(decision.rule)
        return Decision(_PASS_VERDICT, decision.rule, ())

    def decide_packet(
        self,
        buf: Buffer,
        pkt: InnerPacket,
        endpoint: bytes,
        upto: int,
        audited: list[int] | None = None,
    ) -> Decision:
        """What the packet rules before rule `upto` (the one that passed the flow; -1: none)
        do to this packet of a passing flow: PASS, DROP, REWRITE or UNREWRITABLE; audit as
        `decide`."""
        limit = _ALL if upto < 0 else upto
        return self._evaluate(self._packet_rules, buf, pkt, endpoint, limit, PASS_DECISION, audited)

    def inspects(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes, upto: int) -> bool:
        """Whether a packet rule before `upto` may act on packets of the flow `pkt` opens: its
        flow-wide conditions hold for it. False spares every later packet of the flow the
        packet rules (a demo flow to port 53 never needs the port-3000 payload rules)."""
        limit = _ALL if upto < 0 else upto
        by_endpoint, others = self._packet_rules[pkt.protocol]
        for entry in by_endpoint.get(endpoint, others) if by_endpoint else others:
            if entry.rule >= limit:
                break
            if all(check(buf, pkt, endpoint) for check in entry.flow_checks):
                return True
        return False

    def _evaluate(
        self,
        table: _Index,
        buf: Buffer,
        pkt: InnerPacket,
        endpoint: bytes,
        limit: int,
        otherwise: Decision,
        audited: list[int] | None,
    ) -> Decision:
        if pkt.fragment == _LATER:
            return PASS_DECISION
        rewrite: Decision | None = None  # the first matching replace's, extended by later ones
        passed = False  # a `pass` rule decided: the default does not apply
        by_endpoint, others = table[pkt.protocol]
        entries = by_endpoint.get(endpoint, others) if by_endpoint else others
        for index, _, checks, action, every, replacement, decided, _, audit in entries:
            if index >= limit:
                break
            for check in checks:
                if not check(buf, pkt, endpoint):
                    break
            else:
                if action is _REPLACE:
                    if buf.find(replacement[0], pkt.payload, pkt.end) >= 0:
                        if rewrite is None:
                            rewrite = decided
                        else:
                            rewrite = Decision(
                                _REWRITE, rewrite.rule, (*rewrite.replacements, replacement)
                            )
                elif action is _PASS:
                    passed = True
                    break
                elif action is not _DROP_SEQ_MULTIPLE or (
                    pkt.icmp_seq >= 0 and pkt.icmp_seq % every == 0
                ):  # a denial: drop, reject, or an echo whose sequence number is a multiple
                    if not (audit or self.audit):
                        return decided
                    if audited is not None:  # audit mode: counted, and the next rule asked
                        audited.append(index)
        if not passed and otherwise.verdict is not _PASS_VERDICT:
            # Default deny: a replace is no decision to let a flow through.
            if not self.audit:
                return otherwise
            if audited is not None:
                audited.append(otherwise.rule)
            return PASS_DECISION
        if rewrite is None:
            return PASS_DECISION
        if pkt.fragment != _WHOLE or pkt.routed or pkt.protocol not in REWRITABLE_PROTOCOLS:
            return Decision(Verdict.UNREWRITABLE, rewrite.rule, ())
        return rewrite


# Module constants: an enum member lookup per packet costs more than the comparison it feeds.
_LATER, _WHOLE, _REWRITE = Fragment.LATER, Fragment.NONE, Verdict.REWRITE
_REPLACE, _DROP_SEQ_MULTIPLE, _PASS = Action.REPLACE, Action.DROP_SEQ_MULTIPLE, Action.PASS
_PASS_VERDICT = Verdict.PASS
_DENIALS = frozenset({Verdict.DROP, Verdict.REJECT})
_ALL = 1 << 30  # no rule limit


def _decides_flows(rule: Rule) -> bool:
    """A flow rule: pass, drop, reject or inspect on what a flow is, not on one packet's
    payload."""
    return rule.action in _FLOW_ACTIONS and not any(c.per_packet for c in rule.match)


_FLOW_ACTIONS = frozenset({Action.PASS, Action.DROP, Action.REJECT, Action.INSPECT})


def _by_protocol(
    compiled: list[_Compiled], rules: tuple[Rule, ...], chosen: list[bool]
) -> tuple[tuple[_Compiled, ...], ...]:
    """Per IP protocol, the chosen rules that can match it, in order."""
    return tuple(
        tuple(
            c
            for c, r, keep in zip(compiled, rules, chosen, strict=True)
            if keep and ((allowed := r.protocols()) is None or proto in allowed)
        )
        for proto in range(256)
    )


# Per IP protocol: the rule lists of the endpoint ids some rule names (endpoint checks left out),
# and the list of every other endpoint id (the rules that name none).
_Index = tuple[tuple[dict[bytes, tuple[_Compiled, ...]], tuple[_Compiled, ...]], ...]


def _by_endpoint(table: tuple[tuple[_Compiled, ...], ...], rules: tuple[Rule, ...]) -> _Index:
    """`table` (rule lists per protocol) indexed by endpoint id as well. A rule's `endpoint`
    conditions hold for a packet exactly when its endpoint id is in each of their sets, so the
    list for an id holds the rules whose sets all have it, and rules with none; any other id
    meets only the rules with none. The order within a list is the policy's, so the evaluation
    is the one over every rule (tests/unit/test_rule_index.py). The firewall's policy (62 rules
    over 4 endpoints, firewall_profile.py): decide_flow 5.4 us a new TCP flow, 2.8 us so.
    Protocols with the same rules share one index (most of the 256 have the same: the rules
    that name no protocol), and a rule's checks are compiled without `endpoint` once: the
    index holds a reference per rule and endpoint id a rule list can meet."""
    made: dict[tuple[int, ...], tuple[dict[bytes, tuple[_Compiled, ...]], tuple[_Compiled, ...]]]
    made = {}
    stripped: dict[int, _Compiled] = {}
    for entries in table:
        rule_ids = tuple(entry.rule for entry in entries)
        if rule_ids not in made:
            made[rule_ids] = _endpoint_lists(entries, rules, stripped)
    return tuple(made[tuple(entry.rule for entry in entries)] for entries in table)


def _endpoint_lists(
    entries: tuple[_Compiled, ...], rules: tuple[Rule, ...], stripped: dict[int, _Compiled]
) -> tuple[dict[bytes, tuple[_Compiled, ...]], tuple[_Compiled, ...]]:
    allowed: list[frozenset[bytes] | None] = []
    for entry in entries:
        sets = [c.ids for c in rules[entry.rule].match if type(c) is Endpoint]
        allowed.append(frozenset.intersection(*sets) if sets else None)
    if all(ids is None for ids in allowed):
        return {}, entries
    named = set().union(*(ids for ids in allowed if ids is not None))
    by_endpoint = {
        endpoint: tuple(
            _without_endpoint(entry, rules[entry.rule], stripped)
            for entry, ids in zip(entries, allowed, strict=True)
            if ids is None or endpoint in ids
        )
        for endpoint in sorted(named)
    }
    others = tuple(entry for entry, ids in zip(entries, allowed, strict=True) if ids is None)
    return by_endpoint, others


def _without_endpoint(entry: _Compiled, rule: Rule, stripped: dict[int, _Compiled]) -> _Compiled:
    """`entry` for packets of an endpoint id its `endpoint` conditions hold: without them
    (made once per rule, kept in `stripped`)."""
    if not any(type(c) is Endpoint for c in rule.match):
        return entry
    if entry.rule not in stripped:
        kept = [c for c in rule.match if type(c) is not Endpoint]
        flow_checks = _checks(c for c in kept if c.flow_wide)
        stripped[entry.rule] = entry._replace(flow_checks=flow_checks, checks=_checks(kept))
    return stripped[entry.rule]


def _udp_lane(
    entries: tuple[_Compiled, ...], rules: tuple[Rule, ...]
) -> tuple[LaneRule, ...] | None:
    """The rules `decide` asks of a UDP packet (`entries`, in order) as LaneRules; None when one
    has a shape the lane does not read (another condition, audit mode, an empty find): then
    every UDP packet takes `decide`, as before the lane."""
    lane = []
    for entry in entries:
        rule = rules[entry.rule]
        if rule.action is Action.DROP_SEQ_MULTIPLE:
            continue  # acts on ICMP echo only: never on UDP (`_evaluate`)
        if rule.audit or rule.action not in _LANE_ACTIONS:
            return None
        if rule.action is Action.REPLACE and not rule.find:
            return None
        fields = _lane_fields(rule.match)
        if fields is None:
            return None
        lane.append(LaneRule(entry.rule, *fields, rule.action, entry.replacement))
    return tuple(lane)


_LANE_ACTIONS = frozenset({Action.PASS, Action.DROP, Action.REJECT, Action.REPLACE})


_LaneFields = tuple[
    int, frozenset[int] | None, frozenset[int] | None, frozenset[int] | None, tuple[bytes, ...]
]


def _lane_fields(match: tuple[Condition, ...]) -> _LaneFields | None:
    """(version, ports, src_ports, dst_ports, needles) of a rule's conditions, or None when one
    is of a kind the lane does not read, or a kind other than payload_contains comes twice.
    Exact types: a subclass may test something else."""
    version, needles = 0, []
    sets: dict[type[Condition], frozenset[int]] = {}
    for condition in match:
        if type(condition) is Protocol:
            continue  # the lane is UDP's: `entries` are the rules that can match UDP
        if type(condition) is PayloadContains:
            needles.append(condition.needle)
        elif type(condition) is IpVersion and not version and condition.version in (4, 6):
            version = condition.version
        elif type(condition) in (Port, SrcPort, _DstPort) and type(condition) not in sets:
            sets[type(condition)] = condition.set  # type: ignore[attr-defined]
        else:
            return None
    return version, sets.get(Port), sets.get(SrcPort), sets.get(_DstPort), tuple(needles)


def word_changes(find: bytes, replace: bytes) -> tuple[int, int] | None:
    """How a payload's 16-bit word sum changes when `find` becomes `replace` at an even or an
    odd offset; None when the length changes by an odd number of bytes (the rest would shift by
    one byte, so the rewrite sums the payload again instead)."""
    if (len(replace) - len(find)) & 1:
        return None
    # Reduced modulo 0xFFFF (the sum's modulus), so the rewrite adds small integers.
    even = (_aligned_sum(replace, 0) - _aligned_sum(find, 0)) % 0xFFFF
    odd = (_aligned_sum(replace, 1) - _aligned_sum(find, 1)) % 0xFFFF
    return even, odd


def _aligned_sum(data: bytes, odd: int) -> int:
    """The 16-bit word sum of `data` placed at an even (odd=0) or odd (odd=1) offset."""
    value = int.from_bytes(data, "big")
    return value << 8 if (len(data) + odd) & 1 else value


def _checks(conditions: Iterable[Condition]) -> tuple[Check, ...]:
    """The per-packet checks of these conditions, in their order. The protocol index already
    guarantees the protocol; name conditions are asked apart, of what the flow has shown
    (decide_flow)."""
    return tuple(c.compile() for c in conditions if not isinstance(c, (Protocol, NameCondition)))


def _compile(index: int, rule: Rule) -> _Compiled:
    replacement = (rule.find, rule.replace, word_changes(rule.find, rule.replace))
    if rule.action is Action.REPLACE:
        decided = Decision(Verdict.REWRITE, index, (replacement,))
    elif rule.action is Action.REJECT:
        decided = Decision(Verdict.REJECT, index, ())
    elif rule.action is Action.INSPECT:
        decided = Decision(Verdict.INSPECT, index, ())
    elif rule.action is Action.PASS:
        decided = Decision(Verdict.PASS, index, ())  # decide_flow's; _evaluate stops first
    else:
        decided = Decision(Verdict.DROP, index, ())
    checks = _checks(rule.match)
    flow_checks = _checks(c for c in rule.match if c.flow_wide)
    return _Compiled(
        index,
        flow_checks,
        checks,
        rule.action,
        rule.every,
        replacement,
        decided,
        rule.names(),
        rule.audit,
    )
