"""One datagram in, one outcome out: the pure core of the worker (no I/O, no logging).

`decide_in_place` takes the UDP payload GWLB sent (Geneve onwards) in buf[start:end] and says
what to do with it. For PASS the datagram goes back exactly as it came; for REWRITE it has been
rewritten where it lies (the same Geneve header and options, the rewritten inner packet) and goes
back up to its new end. `handle_datagram` is the same decision on a copy, for callers that keep
their buffer (tests, tools).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from appliance.batch import ROOM
from appliance.errors import DecodeError
from appliance.geneve import check_geneve, endpoint_id, usual_endpoint_id
from appliance.inner import InnerPacket, parse_inner
from appliance.policy import Decision, Policy, Verdict
from appliance.reject import RejectKind, build_reject, reject_kind
from appliance.rewrite import rewrite_in_place

SCRATCH_BYTES = 9216  # room for a rewrite to grow to the 8500-byte limit


class Outcome(enum.IntEnum):
    PASS = 0  # send back unchanged
    REWRITE = 1  # send back the rewritten datagram
    DROP = 2  # a rule dropped it; detail = rule index (policy.DEFAULT_RULE: the default)
    MALFORMED = 3  # detail = errors.Reason
    OVERSIZE = 4  # a rewrite would exceed 8500 bytes of inner packet; detail = rule index
    UNREWRITABLE = 5  # a replace matched a fragment or routed packet; detail = rule index
    REJECT = 6  # dropped, and the sender is to be told; detail = rule index (or DEFAULT_RULE)


def decide_in_place(
    buf: bytearray, start: int, end: int, policy: Policy, audited: list[int] | None = None
) -> tuple[Outcome, int, int]:
    """(outcome, detail, end of the reply): the stateless decision, rewriting within the slot;
    the denials audit mode let pass are appended to `audited` (Policy.decide)."""
    parsed = parse_datagram(buf, start, end)
    if isinstance(parsed, int):
        return Outcome.MALFORMED, parsed, end
    pkt, endpoint = parsed
    return decide_parsed(buf, pkt, policy, endpoint, audited)


def parse_datagram(buf: bytearray, start: int, end: int) -> tuple[InnerPacket, bytes] | int:
    """The inner packet and the GWLB endpoint id of the datagram at buf[start:end], or the
    errors.Reason why it is malformed."""
    try:
        inner, protocol = check_geneve(buf, start, end)
        pkt = parse_inner(buf, inner, end, protocol)
    except DecodeError as error:
        return int(error.reason)
    return pkt, endpoint_id(buf, start, inner)


def decide_parsed(
    buf: bytearray,
    pkt: InnerPacket,
    policy: Policy,
    endpoint: bytes | None = None,
    audited: list[int] | None = None,
) -> tuple[Outcome, int, int]:
    """The policy's verdict on an already parsed packet, carried out in place (see above).
    Without `endpoint`, the datagram is in GWLB's usual layout (the fast path parsed it). The
    endpoint id is looked for only when a rule of the policy reads it."""
    if endpoint is None:
        endpoint = usual_endpoint_id(buf, pkt.start) if policy.needs_endpoint else b""
    return carry_out(buf, pkt, policy.decide(buf, pkt, endpoint, audited))


def carry_out(buf: bytearray, pkt: InnerPacket, decision: Decision) -> tuple[Outcome, int, int]:
    """Do what a decision says to the packet where it lies: (outcome, detail, end of the reply)."""
    end = pkt.end
    verdict, rule, replacements = decision
    if verdict is _PASS:
        return _PASSED, -1, end
    if verdict is _DROP:
        return _DROPPED, rule, end
    if verdict is _REJECT:
        return Outcome.REJECT, rule, end
    if verdict is _UNREWRITABLE:
        return Outcome.UNREWRITABLE, rule, end
    new_end = rewrite_in_place(buf, pkt, replacements)
    if new_end is None:
        return Outcome.OVERSIZE, rule, end
    return Outcome.REWRITE, rule, new_end


# Module constants: an enum member lookup per packet costs more than the comparison it feeds.
_PASS, _DROP, _UNREWRITABLE = Verdict.PASS, Verdict.DROP, Verdict.UNREWRITABLE
_REJECT = Verdict.REJECT
_PASSED, _DROPPED = Outcome.PASS, Outcome.DROP


def reject_in_place(buf: bytearray, start: int, end: int, allow: Callable[[], bool]) -> int | None:
    """Replace the rejected datagram at buf[start:end] with the answer to its sender (its Geneve
    header, then a TCP RST or an ICMP unreachable: appliance/reject.py) and return where that
    ends; None when nothing may answer it, or `allow` (the worker's ceiling, asked only for a
    packet that would get an answer) says no."""
    parsed = parse_datagram(buf, start, end)
    if isinstance(parsed, int):
        return None
    pkt = parsed[0]
    if reject_kind(buf, pkt) is RejectKind.NOTHING or not allow():
        return None
    return build_reject(buf, start, pkt, buf, start, start + ROOM)


def handle_datagram(
    buf: bytes | bytearray, start: int, end: int, policy: Policy
) -> tuple[Outcome, int, bytes | None]:
    """Decide the Geneve datagram buf[start:end] without touching `buf`: (outcome, detail, the
    rewritten datagram for REWRITE)."""
    length = end - start
    scratch = bytearray(max(SCRATCH_BYTES, length))
    scratch[:length] = buf[start:end]
    outcome, detail, new_end = decide_in_place(scratch, 0, length, policy)
    if outcome is Outcome.REWRITE:
        return outcome, detail, bytes(scratch[:new_end])
    return outcome, detail, None
