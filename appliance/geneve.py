"""Geneve (RFC 8926) as GWLB speaks it: header, option walk, and the three AWS options.

GWLB's packets carry option class 0x0108 with type 1 (GWLB endpoint id, 8 bytes), type 2 (attachment
id, 8 bytes) and type 3 (flow cookie, 4 bytes). A packet without all three did not come from GWLB.
The options are walked in whatever order they come; GWLB's usual layout is recognised with three
slice comparisons first because that is what nearly every packet looks like.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from appliance.checksum import Buffer
from appliance.errors import DecodeError, Reason

GENEVE_PORT = 6081
HEADER_LEN = 8
AWS_OPTION_CLASS = 0x0108
OPT_ENDPOINT_ID = 1
OPT_ATTACHMENT_ID = 2
OPT_FLOW_COOKIE = 3
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

_AWS_OPTION_LEN = {OPT_ENDPOINT_ID: 8, OPT_ATTACHMENT_ID: 8, OPT_FLOW_COOKIE: 4}
_HEADER = struct.Struct("!BBH")  # ver/opt_len, O/C/reserved, protocol type
_OPTION = struct.Struct("!HBB")  # class, type (C bit on top), reserved/length in words

# GWLB's layout: endpoint id, attachment id, flow cookie, in that order, 32 bytes of options.
_USUAL_WORDS = struct.Struct("!I4xI8xI8xI")  # first word, then each option's header
_USUAL_TAG_WORDS = (0x01080102, 0x01080202, 0x01080301)  # class 0x0108: type, length in words
_ENDPOINT_TAG = bytes.fromhex("01080102")


class GeneveHeader(NamedTuple):
    """What the appliance needs from a Geneve header; offsets are relative to its start."""

    length: int  # header plus options: where the inner packet starts
    protocol: int  # ETH_P_IP or ETH_P_IPV6
    endpoint_id: bytes
    attachment_id: bytes
    flow_cookie: int


def check_geneve(buf: Buffer, start: int, end: int) -> tuple[int, int]:
    """Validate the Geneve header at buf[start:end] as GWLB's; return (inner offset, protocol).

    The hot path's entry: GWLB's usual layout (version 0, no flags, its three options in order)
    is recognised with one struct read; anything else is checked field by field.
    """
    if end - start >= 40:
        word, t1, t2, t3 = _USUAL_WORDS.unpack_from(buf, start)
        if (
            word >> 16 == 0x0800
            and (t1, t2, t3) == _USUAL_TAG_WORDS
            and (word & 0xFFFF == ETH_P_IP or word & 0xFFFF == ETH_P_IPV6)
        ):
            return start + 40, word & 0xFFFF  # version 0, 8 words of GWLB's three options
    if end - start < HEADER_LEN:
        raise DecodeError("geneve", start, Reason.TRUNCATED, "shorter than the 8-byte header")
    first, flags, protocol = _HEADER.unpack_from(buf, start)
    if first >> 6:
        raise DecodeError("geneve", start, Reason.GENEVE_VERSION, f"version {first >> 6}")
    if flags & 0x80:
        raise DecodeError("geneve", start + 1, Reason.GENEVE_OAM, "O bit: control packet")
    length = HEADER_LEN + (first & 0x3F) * 4
    if start + length > end:
        raise DecodeError("geneve", start, Reason.GENEVE_OPTIONS_LENGTH, "options overrun")
    if protocol != ETH_P_IP and protocol != ETH_P_IPV6:
        raise DecodeError("geneve", start + 2, Reason.GENEVE_PROTOCOL, f"0x{protocol:04x}")
    _aws_options(buf, start, length)  # any other layout: walk every option
    return start + length, protocol


def endpoint_id(buf: Buffer, start: int, inner: int) -> bytes:
    """The GWLB endpoint id (option type 1, 8 bytes) of the Geneve header at buf[start:inner],
    which check_geneve has validated."""
    if inner - start == 40 and buf[start + 8 : start + 12] == _ENDPOINT_TAG:
        return bytes(buf[start + 12 : start + 20])  # GWLB's usual layout: the first option
    at, size = _aws_options(buf, start, inner - start)[OPT_ENDPOINT_ID]
    return bytes(buf[at : at + size])


def usual_endpoint_id(buf: Buffer, inner: int) -> bytes:
    """The endpoint id of a datagram in GWLB's usual layout (the fast path's), whose inner
    packet starts at `inner`: it lies 28 bytes before it."""
    return bytes(buf[inner - 28 : inner - 20])


def parse_geneve(buf: Buffer, start: int = 0, end: int | None = None) -> GeneveHeader:
    """Parse the Geneve header at buf[start:end] with the AWS options' values."""
    stop = len(buf) if end is None else end
    inner, protocol = check_geneve(buf, start, stop)
    view = memoryview(buf)
    bodies = {
        kind: bytes(view[at : at + size])
        for kind, (at, size) in _aws_options(buf, start, inner - start).items()
    }
    return GeneveHeader(
        inner - start,
        protocol,
        bodies[OPT_ENDPOINT_ID],
        bodies[OPT_ATTACHMENT_ID],
        int.from_bytes(bodies[OPT_FLOW_COOKIE], "big"),
    )


def _aws_options(buf: Buffer, start: int, length: int) -> dict[int, tuple[int, int]]:
    """Walk every option; return (offset, size) of each AWS option's body, all three present."""
    found: dict[int, tuple[int, int]] = {}
    offset = start + HEADER_LEN
    stop = start + length
    while offset < stop:
        if offset + 4 > stop:
            raise DecodeError("geneve", offset, Reason.GENEVE_OPTIONS_LENGTH, "option header cut")
        opt_class, opt_type, opt_len = _OPTION.unpack_from(buf, offset)
        body = offset + 4
        offset = body + (opt_len & 0x1F) * 4
        if offset > stop:
            raise DecodeError("geneve", body - 4, Reason.GENEVE_OPTIONS_LENGTH, "option overrun")
        if opt_class == AWS_OPTION_CLASS and opt_type in _AWS_OPTION_LEN:
            if offset - body != _AWS_OPTION_LEN[opt_type]:
                raise DecodeError(
                    "geneve", body - 4, Reason.GENEVE_AWS_OPTION_LENGTH, f"type {opt_type}"
                )
            found[opt_type] = (body, offset - body)
        elif opt_type & 0x80:
            # RFC 8926 §3.5: a critical option we do not understand means the packet must go.
            raise DecodeError(
                "geneve", body - 4, Reason.GENEVE_CRITICAL_OPTION, f"class 0x{opt_class:04x}"
            )
    if len(found) != 3:
        missing = sorted(set(_AWS_OPTION_LEN) - set(found))
        raise DecodeError(
            "geneve", start + HEADER_LEN, Reason.GENEVE_MISSING_AWS_OPTION, f"types {missing}"
        )
    return found
