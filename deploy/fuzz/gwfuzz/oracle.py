"""Per datagram: what a strict appliance answers, and what the product is expected to answer.
Per reply: is it an acceptable answer to the datagram it answers?

A strict appliance answers a datagram that breaks no rule of strict.py and that the demo policy
passes or rewrites. The product is expected to answer what breaks only the rules it tolerates
(tolerances.py) in the same way. A reply is acceptable when its outer IPv4 and UDP headers are
as DESIGN.md §1 says, its Geneve header and options are the datagram's byte for byte, and its
inner packet is the datagram's unchanged (pass) or the policy's rewrite of it, with every length
fixed and each checksum wrong by exactly as much as it came (RFC 1624's incremental update keeps
that; a zero UDP checksum over IPv4 stays zero, over IPv6 it must become correct).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from gwfuzz.checksum import pseudo_v4, pseudo_v6, residue
from gwfuzz.demo_policy import Outcome, Verdict, judge, rewrite
from gwfuzz.strict import Decoded, Inner, decode
from gwfuzz.tolerances import TOLERATED

GENEVE_PORT = 6081
_WORD = struct.Struct("!H")
_UDP = struct.Struct("!HHHH")


@dataclass(slots=True)
class Prediction:
    decoded: Decoded
    hard: tuple[str, ...]  # rules broken that the product does not tolerate
    tolerated: tuple[str, ...]
    verdict: Verdict | None  # the policy's, when the parse reached the transport

    @property
    def strict_answers(self) -> bool:
        return not self.decoded.violations and self.lenient_answers

    @property
    def lenient_answers(self) -> bool:
        return not self.hard and self.verdict is not None and self.verdict.outcome.answered


def predict(d: bytes) -> Prediction:
    """What should become of the datagram `d` (the UDP payload the appliance receives)."""
    decoded = decode(d)
    hard = tuple(v for v in decoded.violations if v not in TOLERATED)
    tolerated = tuple(v for v in decoded.violations if v in TOLERATED)
    inner = decoded.inner
    verdict = None if decoded.stopped or inner is None else judge(d, inner)
    return Prediction(decoded, hard, tolerated, verdict)


class Outer(NamedTuple):
    """How a datagram was sent: the reply must come from `local` to `peer`, from `port`."""

    local: bytes  # the address the datagram was sent to
    peer: bytes  # the sender's address
    port: int  # the sender's UDP port


def outer_problems(reply: bytes, outer: Outer) -> tuple[list[str], bytes]:
    """What is wrong with the reply's outer IPv4 and UDP headers; the UDP payload."""
    if len(reply) < 28 or reply[0] >> 4 != 4:
        return ["outer.ip_header"], b""
    ihl = (reply[0] & 0x0F) * 4
    if ihl < 20 or ihl + 8 > len(reply):
        return ["outer.ip_header"], b""
    checks = (
        (_WORD.unpack_from(reply, 2)[0] == len(reply), "outer.ip_total_length"),
        (residue(reply[:ihl]) == 0, "outer.ip_checksum"),
        (not _WORD.unpack_from(reply, 6)[0] & 0x3FFF, "outer.ip_fragment"),
        (reply[8] > 0 and reply[9] == 17, "outer.ip_ttl_or_protocol"),
        (reply[12:16] == outer.local, "outer.ip_source"),
        (reply[16:20] == outer.peer, "outer.ip_destination"),
    )
    problems = [name for ok, name in checks if not ok]
    sport, dport, length, checksum = _UDP.unpack_from(reply, ihl)
    segment = reply[ihl:]
    if sport != outer.port or dport != GENEVE_PORT:
        problems.append("outer.udp_ports")
    if length != len(segment):
        problems.append("outer.udp_length")
    if checksum and residue(pseudo_v4(reply, 17, len(segment)), segment):
        problems.append("outer.udp_checksum")
    return problems, segment[8:]


def payload_problems(d: bytes, prediction: Prediction, payload: bytes) -> list[str]:
    """What is wrong with `payload` (Geneve onwards) as the answer the verdict calls for."""
    head = prediction.decoded.geneve_len
    if not head or payload[:head] != d[:head]:
        return ["geneve.not_identical"]
    verdict, inner = prediction.verdict, prediction.decoded.inner
    if verdict is None or inner is None or not verdict.outcome.answered:
        return [] if payload == d else ["inner.changed_but_unparsed"]
    if verdict.outcome is Outcome.PASS:
        return [] if payload == d else ["inner.not_identical"]
    return rewrite_problems(d, inner, payload)


def rewrite_problems(d: bytes, inner: Inner, reply: bytes) -> list[str]:
    """What is wrong with `reply` as the rewrite of `d`."""
    expected = rewrite(d, inner)
    if len(reply) != len(expected):
        return ["rewrite.length"]
    ip_sum = inner.start + 10 if inner.version == 4 else -1
    udp_sum = inner.l4 + 6
    if _masked(reply, ip_sum, udp_sum) != _masked(expected, ip_sum, udp_sum):
        return ["rewrite.bytes"]
    problems = []
    if inner.version == 4:
        header = slice(inner.start, inner.start + inner.header_len)
        if residue(reply[header]) != residue(d[header]):
            problems.append("rewrite.ipv4_checksum")
    old = _WORD.unpack_from(d, udp_sum)[0]
    new = _WORD.unpack_from(reply, udp_sum)[0]
    if inner.version == 4 and not old:
        if new:
            problems.append("rewrite.udp_checksum_not_zero")  # RFC 768: zero stays "none"
    elif not new:
        problems.append("rewrite.udp_checksum_zero")
    else:
        error = _udp_residue(d, inner, len(d)) if old else 0  # a zero over IPv6: made correct
        if _udp_residue(reply, inner, len(reply)) != error:
            problems.append("rewrite.udp_checksum")
    return problems


def _udp_residue(d: bytes, inner: Inner, end: int) -> int:
    ip, segment = d[inner.start : inner.l4], d[inner.l4 : end]
    pseudo = pseudo_v4 if inner.version == 4 else pseudo_v6
    return residue(pseudo(ip, 17, len(segment)), segment)


def _masked(data: bytes, *offsets: int) -> bytes:
    out = bytearray(data)
    for at in offsets:
        if at >= 0:
            out[at : at + 2] = b"\0\0"
    return bytes(out)
