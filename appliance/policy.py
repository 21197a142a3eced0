"""The policy engine: rules are data (from the config file), compiled once, asked per packet.

Semantics, in rule order:
- a rule matches when every condition it names holds (version, protocol, ports on either side or on
  one side, ICMP type, payload substring);
- `drop` and `drop_seq_multiple` (ICMP echo whose sequence number is a multiple of `every`) drop:
  the first matching drop wins, even over a replace that matched before it;
- `replace` rewrites every occurrence of `find` in the payload (it matches only when `find` is
  in the payload as it arrived); all matching replaces apply, in rule order, each to the result
  of the one before;
- `pass` stops the evaluation: later rules are not asked.
Fragments: a later fragment has no transport header and passes untouched; a first fragment is
subject to drop rules, but a replace cannot be done without reassembly, so it is dropped instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, Fragment, InnerPacket

REWRITABLE_PROTOCOLS = frozenset({PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6})


class Action(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    REPLACE = "replace"
    DROP_SEQ_MULTIPLE = "drop_seq_multiple"


class Verdict(enum.IntEnum):
    PASS = 0
    DROP = 1  # a rule dropped it: `rule` says which
    REWRITE = 2  # `replacements` say what to change
    UNREWRITABLE = 3  # a replace matched a fragment (or a routed IPv6 packet): dropped


@dataclass(frozen=True)
class Match:
    """Conditions of a rule; None means "any"."""

    ip_version: int | None = None
    protocol: int | None = None
    ports: frozenset[int] | None = None  # source or destination
    src_ports: frozenset[int] | None = None
    dst_ports: frozenset[int] | None = None
    icmp_types: frozenset[int] | None = None
    payload_contains: bytes | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    match: Match = field(default_factory=Match)
    find: bytes = b""  # replace
    replace: bytes = b""  # replace
    every: int = 0  # drop_seq_multiple


# A replacement as the rewrite needs it: find, replace, and how the payload's 16-bit word sum
# changes per occurrence at an even or an odd offset (None: the length changes by an odd count).
Replacement = tuple[bytes, bytes, tuple[int, int] | None]


class Decision(NamedTuple):
    verdict: Verdict
    rule: int  # index of the deciding rule, -1 when none decided
    replacements: tuple[Replacement, ...]


PASS_DECISION = Decision(Verdict.PASS, -1, ())


class Policy:
    """A compiled, immutable rule list. `decide` is called once per packet."""

    def __init__(self, rules: tuple[Rule, ...] | list[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        # Every decision a single rule can make is made here once, not per packet.
        self._drops = tuple(Decision(Verdict.DROP, i, ()) for i in range(len(self.rules)))
        # Rules that can match each transport protocol, in order: most packets meet one or two.
        self._compiled: tuple[tuple[_Compiled, ...], ...] = tuple(
            tuple(
                _compile(i, r)
                for i, r in enumerate(self.rules)
                if r.match.protocol is None or r.match.protocol == proto
            )
            for proto in range(256)
        )

    def decide(self, buf: bytes | bytearray, pkt: InnerPacket) -> Decision:
        """The verdict for the parsed inner packet `pkt` inside `buf`.

        Per packet, on the slow path: the rules are flat tuples and the packet's fields locals,
        because attribute lookups and a call per rule cost more than the comparisons.
        """
        (
            version,
            _,
            end,
            protocol,
            _,
            fragment,
            sport,
            dport,
            icmp_type,
            icmp_seq,
            payload,
            routed,
        ) = pkt
        if fragment == _LATER:
            return PASS_DECISION
        rewrite: Decision | None = None  # the first matching replace's, extended by later ones
        for (
            index,
            action,
            ip_version,
            ports,
            src_ports,
            dst_ports,
            icmp_types,
            contains,
            every,
            replacement,
            alone,
        ) in self._compiled[protocol]:
            if (
                (ip_version is not None and ip_version != version)
                or (ports is not None and sport not in ports and dport not in ports)
                or (src_ports is not None and sport not in src_ports)
                or (dst_ports is not None and dport not in dst_ports)
                or (icmp_types is not None and icmp_type not in icmp_types)
                or (contains is not None and buf.find(contains, payload, end) < 0)
            ):
                continue
            if action is _REPLACE:
                if buf.find(replacement[0], payload, end) >= 0:
                    if rewrite is None:
                        rewrite = alone
                    else:
                        rewrite = Decision(
                            _REWRITE, rewrite.rule, (*rewrite.replacements, replacement)
                        )
            elif action is _DROP:
                return self._drops[index]
            elif action is _DROP_SEQ_MULTIPLE:
                if icmp_seq >= 0 and icmp_seq % every == 0:
                    return self._drops[index]
            else:  # PASS
                break
        if rewrite is None:
            return PASS_DECISION
        if fragment != _WHOLE or routed or protocol not in REWRITABLE_PROTOCOLS:
            return Decision(Verdict.UNREWRITABLE, rewrite.rule, ())
        return rewrite


# Module constants: an enum member lookup per packet costs more than the comparison it feeds.
_LATER, _WHOLE, _REWRITE = Fragment.LATER, Fragment.NONE, Verdict.REWRITE
_REPLACE, _DROP, _DROP_SEQ_MULTIPLE = Action.REPLACE, Action.DROP, Action.DROP_SEQ_MULTIPLE


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


_Compiled = tuple[
    int,
    Action,
    "int | None",
    "frozenset[int] | None",
    "frozenset[int] | None",
    "frozenset[int] | None",
    "frozenset[int] | None",
    "bytes | None",
    int,
    Replacement,
    Decision,
]


def _compile(index: int, rule: Rule) -> _Compiled:
    m = rule.match
    replacement = (rule.find, rule.replace, word_changes(rule.find, rule.replace))
    return (
        index,
        rule.action,
        m.ip_version,
        m.ports,
        m.src_ports,
        m.dst_ports,
        m.icmp_types,
        m.payload_contains,
        rule.every,
        replacement,
        Decision(Verdict.REWRITE, index, (replacement,)),
    )
