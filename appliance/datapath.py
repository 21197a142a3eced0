"""One datagram in, one outcome out: the pure core of the worker (no I/O, no logging).

`handle_datagram` takes the UDP payload GWLB sent (Geneve onwards) in buf[start:end] and says
what to do with it. For PASS the datagram goes back exactly as it came; for REWRITE the returned
bytes (the same Geneve header and options, the rewritten inner packet) go back instead.
"""

from __future__ import annotations

import enum

from appliance.errors import DecodeError
from appliance.geneve import check_geneve
from appliance.inner import parse_inner
from appliance.policy import Policy, Verdict
from appliance.rewrite import rewrite_payload


class Outcome(enum.IntEnum):
    PASS = 0  # send back unchanged
    REWRITE = 1  # send back the returned bytes
    DROP = 2  # a rule dropped it; detail = rule index
    MALFORMED = 3  # detail = errors.Reason
    OVERSIZE = 4  # a rewrite would exceed 8500 bytes of inner packet; detail = rule index
    UNREWRITABLE = 5  # a replace matched a fragment or routed packet; detail = rule index


def handle_datagram(
    buf: bytes | bytearray, start: int, end: int, policy: Policy
) -> tuple[Outcome, int, bytearray | None]:
    """Decide what happens to the Geneve datagram buf[start:end]: (outcome, detail, new bytes)."""
    try:
        inner, protocol = check_geneve(buf, start, end)
        pkt = parse_inner(buf, inner, end, protocol)
    except DecodeError as error:
        return Outcome.MALFORMED, int(error.reason), None
    verdict, rule, replacements = policy.decide(buf, pkt)
    if verdict is Verdict.PASS:
        return Outcome.PASS, -1, None
    if verdict is Verdict.DROP:
        return Outcome.DROP, rule, None
    if verdict is Verdict.UNREWRITABLE:
        return Outcome.UNREWRITABLE, rule, None
    rewritten = rewrite_payload(buf, start, pkt, replacements)
    if rewritten is None:
        return Outcome.OVERSIZE, rule, None
    return Outcome.REWRITE, rule, rewritten
