"""The `reject` action's packet (appliance/reject.py) against scapy and the RFCs.

scapy builds the offending packets; our codec parses them as the worker does (check_geneve,
parse_inner) and builds the reject; scapy dissects the reject and recomputes its lengths and
checksums. What is expected comes from an oracle written here from the RFCs (RFC 9293 §3.10.7.1
for the RST, RFC 792/1812 and RFC 4443 for the ICMP errors and what never gets one), reading the
offending packet with scapy and `ipaddress`, never with the product.

The same oracle (`problems`) runs over a corpus for the product and for hand-made mutants of the
product's source: the product must pass, every mutant must fail.
"""

from __future__ import annotations

import ipaddress
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import GRE
from scapy.packet import Packet, Raw

import appliance.reject as product
from appliance.geneve import check_geneve
from appliance.inner import parse_inner

SLOT = 9216  # the worker's receive slot (batchio.SLOT_BYTES)
HEADROOM = 28  # where the datagram starts in a slot, after the reply's outer header
FILL = 0xA5  # what an untouched slot holds
RST, ACK, SYN, FIN = 0x04, 0x10, 0x02, 0x01
V4_NOT_ONE_HOST = [
    ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
]
V6_NOT_ONE_HOST = [ipaddress.ip_network(n) for n in ("::/128", "::1/128", "ff00::/8")]
ICMP_ERRORS = {3, 4, 5, 11, 12}  # RFC 1812 §4.3.2.7 / RFC 792
A4, B4 = "10.1.0.5", "10.2.0.9"
A6, B6 = "fd00:a::5", "fd00:b::9"


# ---- the oracle ---------------------------------------------------------------------------------


class Offending(NamedTuple):
    """The offending packet as the RFCs see it, read with scapy and by hand, not by the product."""

    version: int
    protocol: int
    l4: int  # offset of the transport header in the inner packet
    later: bool  # a fragment with offset > 0
    first: bool  # offset 0, more fragments
    routed: bool  # IPv6 routing header with segments left
    src: str
    dst: str


def dissect(inner: bytes) -> Offending:
    if inner[0] >> 4 == 4:
        ip = IP(inner)
        frag_first = ip.frag == 0 and bool(ip.flags.MF)
        return Offending(4, ip.proto, ip.ihl * 4, ip.frag > 0, frag_first, False, ip.src, ip.dst)
    ip6 = IPv6(inner)
    nh, at, later, first, routed = ip6.nh, 40, False, False, False
    while nh in (0, 43, 44, 51, 60, 135, 139, 140):  # RFC 8200 §4, RFC 7045: walked by hand
        if nh == 44:
            offset, more = int.from_bytes(inner[at + 2 : at + 4], "big") >> 3, inner[at + 3] & 1
            later, first, size = offset > 0, offset == 0 and more == 1, 8
        elif nh == 51:
            size = (inner[at + 1] + 2) * 4
        else:
            routed |= nh == 43 and inner[at + 3] > 0
            size = (inner[at + 1] + 1) * 8
        nh, at = inner[at], at + size
        if later:
            break  # what follows a later fragment's header is data, not another header
    return Offending(6, nh, at, later, first, routed, ip6.src, ip6.dst)


def expected_kind(inner: bytes) -> str:
    """One of "nothing", "rst" or "icmp", from the RFCs (the product's docstring has the list)."""
    o = dissect(inner)
    nets = V4_NOT_ONE_HOST if o.version == 4 else V6_NOT_ONE_HOST
    if o.later or any(ipaddress.ip_address(a) in n for a in (o.src, o.dst) for n in nets):
        return "nothing"
    if o.protocol == 1 and o.version == 4 and inner[o.l4] in ICMP_ERRORS:
        return "nothing"
    if o.protocol == 58 and o.version == 6 and (inner[o.l4] < 128 or 133 <= inner[o.l4] <= 137):
        return "nothing"
    if o.protocol == 6:
        if inner[o.l4 + 13] & RST:
            return "nothing"
        if not o.first and not o.routed:
            return "rst"
    return "icmp"


def rfc_rst(inner: bytes, o: Offending) -> tuple[int, int, int]:
    """RFC 9293 §3.10.7.1: (seq, ack, flags) of the RST for an unacceptable segment."""
    tcp = TCP(inner[o.l4 :])
    seg_len = len(inner) - o.l4 - tcp.dataofs * 4 + (1 if tcp.flags.S else 0) + int(tcp.flags.F)
    if tcp.flags.A:
        return tcp.ack, 0, RST
    return 0, (tcp.seq + seg_len) % 2**32, RST | ACK


def recomputed(pkt: Packet) -> bytes:
    """`pkt` rebuilt by scapy with every length and checksum derived afresh."""
    copy = pkt.copy()
    layer = copy
    while layer:
        for name in ("len", "plen", "chksum", "cksum"):
            if name in {f.name for f in layer.fields_desc}:
                delattr(layer, name)
        layer = layer.payload
    return bytes(raw(copy))


def check_rst(inner: bytes, reply: bytes) -> list[str]:
    o = dissect(inner)
    if o.version == 4:
        ip: Any = IP(reply)
        off: Any = IP(inner)
        size = 40
        header: tuple[int, ...] = (
            ip.ihl,
            ip.tos,
            ip.len,
            ip.id,
            int(ip.flags),
            ip.frag,
            ip.ttl,
            ip.proto,
        )
        wanted: tuple[int, ...] = (5, 0, 40, 0, 2, 0, 64, 6)
    else:
        ip, off, size = IPv6(reply), IPv6(inner), 60
        header, wanted = (ip.tc, ip.fl, ip.plen, ip.nh, ip.hlim), (0, 0, 20, 6, 64)
    tcp, sent = ip[TCP], TCP(inner[o.l4 :])
    found = {
        "size": (len(reply), size),
        "ip header": (header, wanted),
        "addresses": ((ip.src, ip.dst), (off.dst, off.src)),
        "ports": ((tcp.sport, tcp.dport), (sent.dport, sent.sport)),
        "seq/ack/flags": ((tcp.seq, tcp.ack, int(tcp.flags)), rfc_rst(inner, o)),
        "offset/window/urgent": ((tcp.dataofs, tcp.reserved, tcp.window, tcp.urgptr), (5, 0, 0, 0)),
        "checksums": (reply, recomputed(ip)),
    }
    return [
        f"rst {name}: {got!r:.80} != {want!r:.80}"
        for name, (got, want) in found.items()
        if got != want
    ]


def check_icmp(inner: bytes, reply: bytes, quote_len: int) -> list[str]:
    o = dissect(inner)
    if o.version == 4:
        size, ceiling = 28, 576
        ip: Any = IP(reply[:size])
        off: Any = IP(inner)
        header: tuple[int, ...] = (
            ip.ihl,
            ip.tos,
            ip.len,
            ip.id,
            int(ip.flags),
            ip.frag,
            ip.ttl,
            ip.proto,
        )
        wanted: tuple[int, ...] = (5, 0, len(reply), 0, 2, 0, 64, 1)
        icmp: Packet = ip[ICMP]
        kind = (icmp.type, icmp.code, raw(icmp)[4:8])
    else:
        size, ceiling = 48, 1280
        ip, off = IPv6(reply[:size]), IPv6(inner)
        header, wanted = (ip.tc, ip.fl, ip.plen, ip.nh, ip.hlim), (0, 0, len(reply) - 40, 58, 64)
        icmp = ip[ICMPv6DestUnreach]
        kind = (icmp.type, icmp.code, raw(icmp)[4:8])
    icmp.add_payload(Raw(reply[size:]))  # the quote as bytes: scapy would dissect it as packets
    found = {
        "size": (len(reply), size + quote_len),
        "within RFC size": (len(reply) <= ceiling, True),
        "ip header": (header, wanted),
        "addresses": ((ip.src, ip.dst), (off.dst, off.src)),
        "type/code/unused": (kind, (3, 13, bytes(4)) if o.version == 4 else (1, 1, bytes(4))),
        "quote": (reply[size:], inner[:quote_len]),
        "checksums": (reply, recomputed(ip)),
    }
    return [
        f"icmp {name}: {got!r:.80} != {want!r:.80}"
        for name, (got, want) in found.items()
        if got != want
    ]


def problems(
    build: Callable[..., int | None], datagram: bytes, out_start: int = HEADROOM, slot: int = SLOT
) -> list[str]:
    """Everything wrong with build(...)'s reject for `datagram` at out[out_start:slot]."""
    geneve_len = GENEVE(datagram).optionlen * 4 + 8
    inner = datagram[geneve_len:]
    at, protocol = check_geneve(datagram, 0, len(datagram))
    pkt = parse_inner(datagram, at, len(datagram), protocol)
    out = bytearray([FILL]) * (slot + 64)  # room past the slot, to see an overrun
    try:
        end = build(datagram, 0, pkt, out, out_start, slot)
    except Exception as error:
        return [f"raised {error!r}"]
    kind, o = expected_kind(inner), dissect(inner)
    reply_at = out_start + geneve_len
    room = slot - reply_at
    if kind == "rst" and room < (40 if o.version == 4 else 60):
        kind = "nothing"  # no room in the slot
    quote_len = 0
    if kind == "icmp":
        quote_len = min(
            len(inner), 548 if o.version == 4 else 1232, room - (28 if o.version == 4 else 48)
        )
        if quote_len < min(len(inner), o.l4 + 8):  # RFC 792's minimum does not fit
            kind = "nothing"
    if kind == "nothing":
        untouched = out == bytearray([FILL]) * len(out)
        return [] if end is None and untouched else [f"wrote where nothing may go or fit: {end}"]
    if end is None:
        return [f"no {kind} reply"]
    found = [] if out[out_start:reply_at] == datagram[:geneve_len] else ["geneve differs"]
    if end > slot or end - reply_at > 8500 or any(b != FILL for b in out[end:]):
        return [*found, f"past the slot: {end} > {slot}"]
    reply = bytes(out[reply_at:end])
    try:
        if kind == "rst":
            return found + check_rst(inner, reply)
        return found + check_icmp(inner, reply, quote_len)
    except Exception as error:  # scapy could not read it as the right kind
        return [*found, f"{kind} reply unreadable: {error!r}"]


# ---- offending packets --------------------------------------------------------------------------


def _cases() -> dict[str, Packet]:
    ip4, ip6 = IP(src=A4, dst=B4), IPv6(src=A6, dst=B6)
    opts4 = IP(src=A4, dst=B4, options=[IPOption_RR(routers=["10.9.9.9"]), IPOption_NOP()])
    cases = {
        "tcp4-syn": ip4 / TCP(sport=40000, dport=443, flags="S", seq=1000),
        "tcp4-syn-data": ip4 / TCP(sport=40000, dport=443, flags="S", seq=7) / b"fast open",
        "tcp4-syn-seq-wraps": ip4 / TCP(flags="S", seq=2**32 - 1),
        "tcp4-syn-fin-data-odd": ip4 / TCP(flags="SF", seq=2**32 - 3) / b"abc",
        "tcp4-fin": ip4 / TCP(flags="F", seq=5000),
        "tcp4-psh-no-ack": ip4 / TCP(flags="P", seq=5000) / b"data",
        "tcp4-ack-data": ip4 / TCP(sport=40000, dport=80, flags="PA", seq=9, ack=77) / b"GET /",
        "tcp4-syn-ack": ip4 / TCP(flags="SA", seq=1, ack=2**32 - 1),
        "tcp4-fin-ack": ip4 / TCP(flags="FA", seq=1, ack=3),
        "tcp4-options-syn": opts4 / TCP(flags="S", seq=3, options=[("MSS", 1460), ("NOP", None)]),
        "tcp4-big-ack": ip4 / TCP(flags="A", seq=1, ack=99) / (b"b" * 8460),
        "tcp4-big-syn": ip4 / TCP(flags="S", seq=10) / (b"b" * 8460),
        "tcp6-syn": ip6 / TCP(sport=40000, dport=443, flags="S", seq=1000),
        "tcp6-ack-data": ip6 / TCP(flags="PA", seq=1, ack=0xDEADBEEF) / b"hello",
        "tcp6-syn-data-big": ip6 / TCP(flags="S", seq=123) / (b"s" * 8440),
        "tcp6-ext-headers": ip6
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=[B6], segleft=0)
        / TCP(flags="S", seq=42)
        / b"x",
        "tcp6-atomic-fragment": ip6 / IPv6ExtHdrFragment(offset=0, m=0) / TCP(flags="F", seq=8),
        "tcp6-ah": ip6 / AH(nh=6, payloadlen=4, spi=5, seq=1, icv=b"\x01" * 12) / TCP(flags="S"),
        "tcp6-routed": ip6 / IPv6ExtHdrRouting(addresses=["fd00:c::1"], segleft=1) / TCP(flags="S"),
        "udp4": ip4 / UDP(sport=5353, dport=53) / b"query",
        "udp4-options-odd": opts4 / UDP(sport=1, dport=2) / (b"o" * 333),
        "udp4-big": ip4 / UDP() / (b"u" * 8472),
        "udp4-empty": ip4 / UDP(),
        "udp4-quote-exactly-548": ip4 / UDP() / (b"e" * 520),
        "udp4-quote-549": ip4 / UDP() / (b"e" * 521),
        "udp6": ip6 / UDP(sport=5353, dport=53) / b"query",
        "udp6-big-ext": ip6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP() / (b"u" * 8400),
        "udp6-quote-exactly-1232": ip6 / UDP() / (b"e" * 1184),
        "udp6-quote-1233": ip6 / UDP() / (b"e" * 1185),
        "gre4": ip4 / GRE() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(),
        "gre6": ip6 / GRE() / b"tunnelled",
        "proto253-short": IP(src=A4, dst=B4, proto=253) / b"ab",
        "proto253-v6-empty": IPv6(src=A6, dst=B6, nh=253),
        "ah4-other": ip4 / AH(nh=17, payloadlen=4, spi=5, seq=1, icv=b"\x01" * 12) / UDP(),
        "icmp4-echo": ip4 / ICMP(type=8, id=1, seq=1) / b"ping",
        "icmp4-echo-reply": ip4 / ICMP(type=0, id=1, seq=1),
        "icmp4-timestamp": ip4 / ICMP(type=13),
        "icmp6-echo": ip6 / ICMPv6EchoRequest(id=1, seq=1, data=b"ping"),
        "icmp6-type-138": IPv6(src=A6, dst=B6, nh=58) / bytes([138, 0, 0, 0, 0, 0, 0, 0]),
        "icmp-in-v6": IPv6(src=A6, dst=B6, nh=1) / bytes([3, 13, 0, 0, 0, 0, 0, 0]),
        "icmp6-in-v4": IP(src=A4, dst=B4, proto=58) / bytes([1, 1, 0, 0, 0, 0, 0, 0]),
        "link-local-v6": IPv6(src="fe80::1", dst="fe80::2") / UDP(),
        "v4-255.255.255.254-dst": IP(src=A4, dst="223.255.255.255") / UDP(),
    }
    first4 = fragment(ip4 / UDP(sport=1, dport=2) / (b"f" * 300), fragsize=96)
    first6 = fragment6(ip6 / IPv6ExtHdrFragment() / TCP(flags="S") / (b"g" * 3000), 1280)
    tcp4_frags = fragment(ip4 / TCP(flags="PA", seq=1, ack=2) / (b"t" * 300), fragsize=96)
    cases |= {
        "first-fragment-udp4": first4[0],
        "first-fragment-tcp4": tcp4_frags[0],
        "first-fragment-tcp6-syn": first6[0],
    }
    excluded = {
        "later-fragment-udp4": first4[1],
        "last-fragment-udp4": first4[-1],
        "later-fragment-tcp4": tcp4_frags[1],
        "later-fragment-tcp6": first6[1],
        "first-fragment-tcp4-rst": fragment(ip4 / TCP(flags="R") / (b"r" * 300), fragsize=96)[0],
        "tcp4-rst": ip4 / TCP(flags="R", seq=1),
        "tcp4-rst-ack": ip4 / TCP(flags="RA", seq=1, ack=1),
        "tcp6-rst": ip6 / TCP(flags="R"),
        "tcp6-routed-rst": ip6 / IPv6ExtHdrRouting(addresses=[B6], segleft=1) / TCP(flags="R"),
        "src-0.0.0.0": IP(src="0.0.0.0", dst=B4) / UDP(sport=68, dport=67),
        "src-0.1.2.3": IP(src="0.1.2.3", dst=B4) / UDP(),
        "src-127.0.0.1": IP(src="127.0.0.1", dst=B4) / TCP(flags="S"),
        "src-240.0.0.1": IP(src="240.0.0.1", dst=B4) / TCP(flags="S"),
        "src-224.0.0.5": IP(src="224.0.0.5", dst=B4) / UDP(),
        "src-broadcast": IP(src="255.255.255.255", dst=B4) / UDP(),
        "dst-broadcast": IP(src=A4, dst="255.255.255.255") / UDP(sport=68, dport=67),
        "dst-multicast-v4": IP(src=A4, dst="239.1.2.3") / UDP(),
        "dst-multicast-v4-syn": IP(src=A4, dst="224.0.0.1") / TCP(flags="S"),
        "dst-0.0.0.0": IP(src=A4, dst="0.0.0.0") / UDP(),
        "dst-loopback": IP(src=A4, dst="127.0.0.1") / UDP(),
        "src-unspecified-v6": IPv6(src="::", dst=B6) / UDP(),
        "src-loopback-v6": IPv6(src="::1", dst=B6) / TCP(flags="S"),
        "src-multicast-v6": IPv6(src="ff02::1", dst=B6) / UDP(),
        "dst-multicast-v6": IPv6(src=A6, dst="ff02::1:ff00:9") / UDP(),
        "dst-multicast-v6-syn": IPv6(src=A6, dst="ff05::2") / TCP(flags="S"),
    }
    for icmp_type in sorted(ICMP_ERRORS):
        error = ICMP(type=icmp_type) / IP(src=B4, dst=A4) / UDP()
        excluded[f"icmp4-error-{icmp_type}"] = ip4 / error
    for icmp_type in (1, 2, 3, 4, 127, 133, 134, 135, 136, 137):
        body = bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0]) + raw(IPv6(src=B6, dst=A6) / UDP())
        excluded[f"icmp6-type-{icmp_type}"] = IPv6(src=A6, dst=B6, nh=58) / body
    return cases | {f"excluded-{name}": pkt for name, pkt in excluded.items()}


CASES = _cases()


@pytest.fixture(scope="module")
def datagrams(gwlb: Any) -> dict[str, bytes]:
    return {name: gwlb.wrap(pkt) for name, pkt in CASES.items()}


def test_cases_cover_every_kind(datagrams: dict[str, bytes]) -> None:
    kinds = {name: expected_kind(d[40:]) for name, d in datagrams.items()}
    assert {n for n, k in kinds.items() if k == "nothing"} == {n for n in kinds if "excluded" in n}
    assert sum(k == "rst" for k in kinds.values()) >= 15
    assert sum(k == "icmp" for k in kinds.values()) >= 20
    assert max(len(d) - 40 for d in datagrams.values()) == 8500


@pytest.mark.parametrize("name", sorted(CASES))
def test_reject_agrees_with_the_rfcs_and_scapy(datagrams: dict[str, bytes], name: str) -> None:
    assert problems(product.build_reject, datagrams[name]) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_reject_kind_agrees_with_the_oracle(datagrams: dict[str, bytes], name: str) -> None:
    datagram = datagrams[name]
    at, protocol = check_geneve(datagram, 0, len(datagram))
    pkt = parse_inner(datagram, at, len(datagram), protocol)
    kinds = {"nothing": 0, "rst": 1, "icmp": 2}
    assert product.reject_kind(datagram, pkt) == kinds[expected_kind(datagram[40:])]


# ---- the RFC's numbers, spelled out --------------------------------------------------------------


def reply_of(gwlb: Any, inner: Packet) -> Packet:
    datagram = gwlb.wrap(inner)
    at, protocol = check_geneve(datagram, 0, len(datagram))
    out = bytearray(SLOT)
    end = product.build_reject(
        datagram, 0, parse_inner(datagram, at, len(datagram), protocol), out, 0
    )
    assert end is not None
    reply = bytes(out[40:end])
    return IP(reply) if reply[0] >> 4 == 4 else IPv6(reply)


@pytest.mark.parametrize(
    ("flags", "seq", "ack", "payload", "want"),
    [
        ("S", 1000, 0, b"", (0, 1001, "RA")),  # SYN counts one
        ("S", 1000, 0, b"12345", (0, 1006, "RA")),  # SYN + data
        ("F", 1000, 0, b"", (0, 1001, "RA")),  # FIN counts one
        ("SF", 2**32 - 1, 0, b"ab", (0, 3, "RA")),  # SYN + FIN + 2 bytes, modulo 2**32
        ("P", 1000, 0, b"abc", (0, 1003, "RA")),
        ("A", 1000, 555, b"abc", (555, 0, "R")),  # with ACK: SEQ=SEG.ACK, no ACK flag
        ("SA", 1000, 2**32 - 1, b"", (2**32 - 1, 0, "R")),
    ],
)
def test_rst_numbers(gwlb: Any, flags: str, seq: int, ack: int, payload: bytes, want: Any) -> None:
    sent = IP(src=A4, dst=B4) / TCP(sport=40000, dport=443, flags=flags, seq=seq, ack=ack) / payload
    tcp = reply_of(gwlb, sent)[TCP]
    assert (tcp.seq, tcp.ack, str(tcp.flags), tcp.sport, tcp.dport) == (*want, 443, 40000)


def test_icmp_sizes_are_the_rfc_ceilings(gwlb: Any) -> None:
    v4 = reply_of(gwlb, IP(src=A4, dst=B4) / UDP() / (b"x" * 4000))
    v6 = reply_of(gwlb, IPv6(src=A6, dst=B6) / UDP() / (b"x" * 4000))
    assert (len(v4), len(v6)) == (576, 1280)
    assert (v4[ICMP].type, v4[ICMP].code, v6.type, v6.code) == (3, 13, 1, 1)
    small = reply_of(gwlb, IP(src=A4, dst=B4) / UDP() / b"x")
    assert len(small) == 28 + 29  # the whole offending packet, no padding


# ---- the slot, and writing in place -------------------------------------------------------------


@pytest.mark.parametrize("name", ["tcp4-syn", "tcp6-ack-data", "udp4-big", "udp6-big-ext", "gre4"])
@pytest.mark.parametrize("spare", [-1, 0, 1, 8, 9, 100, 547, 1231])
def test_reply_fits_the_slot_or_is_none(datagrams: dict[str, bytes], name: str, spare: int) -> None:
    """Slots around each threshold: the RST's size, RFC 792's minimum quote, a partial quote."""
    datagram = datagrams[name]
    version = datagram[40] >> 4
    headers = {("rst", 4): 40, ("rst", 6): 60, ("icmp", 4): 28 + 28, ("icmp", 6): 48 + 48}
    slot = HEADROOM + 40 + headers[expected_kind(datagram[40:]), version] + spare
    assert problems(product.build_reject, datagram, HEADROOM, slot) == []


def test_out_end_past_the_buffer_is_clipped(datagrams: dict[str, bytes]) -> None:
    datagram = datagrams["udp4-big"]
    at, protocol = check_geneve(datagram, 0, len(datagram))
    pkt = parse_inner(datagram, at, len(datagram), protocol)
    out = bytearray(200)
    end = product.build_reject(datagram, 0, pkt, out, 10, 10**6)
    assert end == 200


IN_PLACE = ("tcp4-syn-data", "tcp6-syn-data-big", "udp4-big", "udp6-big-ext", "gre6")
SHIFTS = (-28, -1, 0, 3, 40)


def in_place_problems(build: Callable[..., int | None], datagram: bytes, shift: int) -> list[str]:
    """The reject written over the datagram it answers (shifted by `shift` bytes, through a
    bytearray and through a memoryview of it) is the one written to a fresh buffer."""
    at, protocol = check_geneve(datagram, 0, len(datagram))
    pkt = parse_inner(datagram, at, len(datagram), protocol)
    fresh = bytearray(SLOT)
    end = build(datagram, 0, pkt, fresh, 0)
    moved = pkt._replace(
        start=pkt.start + 100, end=pkt.end + 100, l4=pkt.l4 + 100, payload=pkt.payload + 100
    )
    found = []
    for view in (False, True):
        slot = bytearray(SLOT)
        slot[100 : 100 + len(datagram)] = datagram
        got = build(memoryview(slot) if view else slot, 100, moved, slot, 100 + shift)
        if end is None or got != end + 100 + shift or slot[100 + shift : got] != fresh[:end]:
            found.append(f"in place, shift {shift}, view {view}: differs")
    return found


@pytest.mark.parametrize("name", IN_PLACE)
@pytest.mark.parametrize("shift", SHIFTS)
def test_in_place_equals_a_fresh_buffer(datagrams: dict[str, bytes], name: str, shift: int) -> None:
    """The worker may write the reject over the packet it answers, in its receive slot."""
    assert in_place_problems(product.build_reject, datagrams[name], shift) == []


# ---- hypothesis: random offending packets ------------------------------------------------------

# Mostly one-host addresses, so that most examples get a reply to check; the rest never do.
V4_ADDRESSES = st.sampled_from([A4, B4, "1.1.1.1", "223.255.255.255"]) | st.sampled_from(
    ["0.0.0.0", "0.0.0.1", "127.0.0.1", "224.0.0.1", "239.255.255.255", "240.0.0.0",
     "255.255.255.255"]
)  # fmt: skip
V6_ADDRESSES = st.sampled_from([A6, B6, "::2", "fe80::1", "feff::1", "::ffff:10.0.0.1"]) | (
    st.sampled_from(["::", "::1", "ff02::1", "ff0e::1"])
)
TCP_FLAGS = st.integers(0, 0xFF).map(lambda flags: flags & ~RST) | st.integers(0, 0xFF)


def extension_header(draw: st.DrawFn, name: str) -> Packet:
    if name == "rt":
        return IPv6ExtHdrRouting(addresses=[B6], segleft=draw(st.integers(0, 1)))
    if name == "frag":
        return IPv6ExtHdrFragment(offset=draw(st.sampled_from([0, 0, 5])), m=draw(st.booleans()))
    return IPv6ExtHdrHopByHop() if name == "hbh" else IPv6ExtHdrDestOpt()


@st.composite
def offending(draw: st.DrawFn) -> Packet:
    """Random IPv4/IPv6 packets of every kind: the ones answered and the ones never answered."""
    v6 = draw(st.booleans())
    addresses = V6_ADDRESSES if v6 else V4_ADDRESSES
    src, dst = draw(addresses), draw(addresses)
    if draw(st.booleans()):
        src, dst = (A6, B6) if v6 else (A4, B4)
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    size = draw(st.sampled_from([0, 1, 7, 8, 9, 500, 1300]) | st.integers(0, 8380))
    payload = draw(st.binary(min_size=0, max_size=16)) * (size // 16 + 1)
    payload = payload[:size] if payload else bytes(size)
    if kind == "tcp":
        flags = draw(TCP_FLAGS)
        seq, ack = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        layer: Packet = TCP(flags=flags, seq=seq, ack=ack) / payload
    elif kind == "udp":
        layer = UDP() / payload
    elif kind == "icmp":
        type_code = bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))])
        layer = Raw(type_code + bytes(6) + payload)
    else:
        layer = Raw(payload)
    protocol = {"tcp": 6, "udp": 17, "icmp": 58 if v6 else 1, "other": draw(st.integers(0, 255))}
    if v6:
        if protocol[kind] in (0, 43, 44, 51, 60):  # an extension header number: not a protocol
            protocol["other"] = 253
        ip: Packet = IPv6(src=src, dst=dst, nh=protocol[kind])
        for header in draw(st.lists(st.sampled_from(["hbh", "dst", "rt", "frag"]), max_size=3)):
            ip = ip / extension_header(draw, header)
        if len(ip.layers()) > 1:  # scapy's nh chain: the last header names the protocol
            ip.lastlayer().nh = protocol[kind]
    else:
        opts = [IPOption_NOP()] * draw(st.sampled_from([0, 0, 4, 40]))
        frag = draw(st.sampled_from([0, 0, 0, 3]))
        mf = draw(st.sampled_from([0, 0, 1]))
        ip = IP(src=src, dst=dst, proto=protocol[kind], options=opts, frag=frag, flags=mf)
    pkt = ip / layer
    if len(raw(pkt)) > 8500:
        pkt = ip / Raw(raw(layer)[: 8500 - (len(raw(pkt)) - len(raw(layer)))])
    return pkt


SCAPY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SCAPY
@given(pkt=offending(), out_start=st.sampled_from([0, HEADROOM, 77]), room=st.integers(0, 9216))
def test_random_offending_packets(gwlb: Any, pkt: Packet, out_start: int, room: int) -> None:
    datagram = gwlb.wrap(pkt)
    try:
        at, protocol = check_geneve(datagram, 0, len(datagram))
        parse_inner(datagram, at, len(datagram), protocol)
    except ValueError:
        return  # the worker drops it as malformed before any rule sees it
    slot = min(out_start + 40 + room, SLOT)
    event(expected_kind(datagram[40:]))
    assert problems(product.build_reject, datagram, out_start, slot) == []


@settings(max_examples=1000, deadline=None)
@given(
    inner=st.binary(min_size=20, max_size=200),
    version=st.sampled_from([4, 6]),
    slot=st.integers(0, 400),
)
def test_random_bytes_never_raise_nor_overrun(
    gwlb: Any, inner: bytes, version: int, slot: int
) -> None:
    """Whatever parse_inner accepts, build_reject handles within the slot, without raising."""
    data = bytearray(inner if version == 4 else inner + bytes(20))
    if version == 4:
        data[0] = 0x40 | max(5, data[0] & 0x0F)
        data[2:4] = len(data).to_bytes(2, "big")
    else:
        data[0] = 0x60 | (data[0] & 0x0F)
        data[4:6] = (len(data) - 40).to_bytes(2, "big")
    datagram = gwlb.wrap(bytes(data))
    try:
        at, protocol = check_geneve(datagram, 0, len(datagram))
        pkt = parse_inner(datagram, at, len(datagram), protocol)
    except ValueError:
        return
    out = bytearray([FILL]) * (slot + 64)
    end = product.build_reject(datagram, 0, pkt, out, 0, slot)
    assert end is None or (40 < end <= slot and out[:40] == datagram[:40])
    assert all(b == FILL for b in out[slot if end is None else end :])


# ---- the budget ---------------------------------------------------------------------------------

S = 1_000_000_000


def budget_problems(budget_class: Any) -> list[str]:
    """A flood against RejectBudget: the bound, the refill, the cap, the counts."""
    found = []
    for per_second, burst in ((100, 1), (100, 10), (7, 1), (1000, 50)):
        budget = budget_class(per_second, burst, now_ns=0)
        times = [t * 250_000 for t in range(4 * 4000)]  # a packet every 250 µs for 4 s
        allowed = [t for t in times if budget.allow(t)]
        if (budget.allowed, budget.refused) != (len(allowed), len(times) - len(allowed)):
            found.append(f"counts {budget.allowed}, {budget.refused} for {len(allowed)} allowed")
        # Any window [t, t + T]: at most burst + T * per_second / 1e9 (see the docstring).
        for i, first in enumerate(allowed):
            for span in (S - 1, S // 3, 10 * S):
                count = sum(1 for t in allowed[i:] if t <= first + span)
                if count > burst + span * per_second // S:
                    found.append(f"{count} in {span} ns at {first} ({per_second}/s, {burst})")
                    break
            if found:
                break
        if len(allowed) < 4 * per_second:  # a steady flood gets the whole rate
            found.append(f"only {len(allowed)} in 4 s at {per_second}/s")
        # Quiet for a minute: the bucket is full again, with burst tokens and no more.
        later = times[-1] + 60 * S
        got = sum(budget.allow(later) for _ in range(burst + 5))
        if got != burst:
            found.append(f"after a quiet minute {got} at once, burst {burst}")
    zero = budget_class(0, 1, now_ns=0)
    if any(zero.allow(t * S) for t in range(5)) or zero.refused != 5:
        found.append("a zero budget allowed something")
    # A clock stepping back neither adds credit nor takes any away.
    backwards = budget_class(10, 2, now_ns=10 * S)
    steps = [backwards.allow(t) for t in (10 * S, 5 * S, 5 * S, 10 * S, 10 * S + S // 10)]
    if steps != [True, True, False, False, True]:
        found.append(f"a clock stepping back: {steps}")
    return found


def test_budget_bounds_refills_and_counts() -> None:
    assert budget_problems(product.RejectBudget) == []


def test_budget_default_is_at_most_n_in_any_second() -> None:
    budget = product.RejectBudget(50)
    allowed = [t for t in range(0, 3 * S, S // 1000) if budget.allow(t)]
    assert max(sum(1 for t in allowed if a <= t < a + S) for a in allowed) == 50
    assert budget.refused == 3000 - len(allowed)


@pytest.mark.parametrize(("per_second", "burst"), [(-1, 1), (10, 0)])
def test_budget_refuses_nonsense(per_second: int, burst: int) -> None:
    with pytest.raises(ValueError):
        product.RejectBudget(per_second, burst)


# ---- mutants: each must fail the oracle ---------------------------------------------------------

MUTANTS = {
    "syn-not-counted": ("(flags >> 1 & 1) + ", ""),
    "fin-not-counted": (" + (flags & TCP_FIN)", ""),
    "ack-case-uses-seq": (
        "seq, ack, ctl = seg_ack, 0, TCP_RST",
        "seq, ack, ctl = seg_seq, 0, TCP_RST",
    ),
    "no-ack-case-without-ack-flag": ("TCP_RST | TCP_ACK", "TCP_RST"),
    "ack-case-with-ack-flag": ("seg_ack, 0, TCP_RST\n", "seg_ack, 0, TCP_RST | TCP_ACK\n"),
    "ack-not-modulo": ("& 0xFFFFFFFF", "& 0x1FFFFFFFF"),
    "rst-ports-not-swapped": ("b, a,\n            dport, sport", "b, a,\n            sport, dport"),
    "rst-v6-addresses-not-swapped": (
        "b1, b2, a1, a2,\n            dport",
        "a1, a2, b1, b2,\n            dport",
    ),
    "rst-no-pseudo-header": ("finish(tcp_sum + a + b)", "finish(tcp_sum)"),
    "rst-v6-no-pseudo-header": ("finish(tcp_sum + a1 + a2 + b1 + b2)", "finish(tcp_sum)"),
    "rst-ip-checksum-forgets-ttl": (
        "RST_V4_BYTES + (HOP_LIMIT << 8 | PROTO_TCP)",
        "RST_V4_BYTES + PROTO_TCP",
    ),
    "ttl-255": ("HOP_LIMIT = 64", "HOP_LIMIT = 255"),
    "no-df": ("_DONT_FRAGMENT = 0x4000", "_DONT_FRAGMENT = 0"),
    "tos-not-zero": ("_VERSION_IHL_TOS = 0x4500", "_VERSION_IHL_TOS = 0x4510"),
    "icmp-576-off-by-one": ("ICMP_MAX_BYTES = 576", "ICMP_MAX_BYTES = 577"),
    "icmpv6-1500": ("ICMPV6_MAX_BYTES = 1280", "ICMPV6_MAX_BYTES = 1500"),
    "icmp-quote-not-shrunk-to-slot": (", limit - inner - headers)", ")"),
    "icmp-no-minimum": ("if size < min(end - ip, l4 - ip + 8)", "if size < 0"),
    "odd-quote-not-padded": ("<< (8 if size & 1 else 0)", ""),
    "icmpv6-pseudo-length-missing": ("+ length + PROTO_ICMPV6", "+ PROTO_ICMPV6"),
    "icmp-code-wrong": ("ICMP_ADMIN_PROHIBITED = 3, 13", "ICMP_ADMIN_PROHIBITED = 3, 10"),
    "icmpv6-code-wrong": ("ICMPV6_ADMIN_PROHIBITED = 1, 1", "ICMPV6_ADMIN_PROHIBITED = 1, 0"),
    "rst-geneve-written-first": (
        "    # The reply's ports",
        "    out[out_start:inner] = geneve\n    # The reply's ports",
    ),
    "icmp-geneve-written-first": (
        "    quote_sum = int",
        "    out[out_start:inner] = geneve\n    quote_sum = int",
    ),
    "icmp-quote-a-view": (
        "quote = bytes(src[ip : ip + size])",
        "quote = memoryview(src)[ip : ip + size]",
    ),
    "rst-slot-not-checked": ("    if end_out > limit:\n        return None\n", ""),
    "answers-icmp-redirect": ("frozenset({3, 4, 5, 11, 12})", "frozenset({3, 4, 11, 12})"),
    "answers-icmpv6-127": ("0 <= icmp_type < 128", "0 <= icmp_type < 127"),
    "answers-nd-redirect": ("range(133, 138)", "range(133, 137)"),
    "answers-rst": ("if buf[l4 + 13] & TCP_RST:", "if False:"),
    "answers-later-fragments": ("if fragment == _LATER:", "if False:"),
    "rst-for-first-fragment": ("if fragment == _WHOLE and not routed:", "if not routed:"),
    "rst-for-routed": (
        "if fragment == _WHOLE and not routed:",
        "if fragment == _WHOLE:",
    ),
    "answers-multicast-destination": (
        "_one_host_v4(src) and _one_host_v4(dst)",
        "_one_host_v4(src)",
    ),
    "answers-v6-multicast-destination": (" and _one_host_v6(dst_hi, dst_lo)", ""),
    "answers-loopback": ("top != 127", "top != 128"),
    "answers-class-e": ("0 < top < 224", "0 < top < 256"),
    "answers-v6-loopback": ("low > 1", "low > 0"),
    "budget-no-cap": (
        "min(self._capacity, self._credit + elapsed * self.per_second)",
        "(self._credit + elapsed * self.per_second)",
    ),
    "budget-no-refill": ("self._credit + elapsed * self.per_second)", "self._credit)"),
    "budget-uncounted-refusal": (
        "        self.refused += 1\n        return False",
        "        return False",
    ),
    "budget-back-in-time-takes": ("if elapsed > 0:", "if True:"),
    "budget-back-in-time-adds": (
        "elapsed = now_ns - self._last_ns",
        "elapsed = abs(now_ns - self._last_ns)",
    ),
}

SOURCE = Path(product.__file__).read_text()
SLOTS = [SLOT, HEADROOM + 40 + 60, HEADROOM + 40 + 39, HEADROOM + 40 + 28 + 100]


def mutant(old: str, new: str) -> types.ModuleType:
    """The product's source with `old` replaced by `new` (once), as a fresh module."""
    assert not old or SOURCE.count(old) == 1, f"mutation site gone: {old!r}"
    module = types.ModuleType("appliance.reject_mutant")
    exec(compile(SOURCE.replace(old, new, 1), "reject_mutant.py", "exec"), module.__dict__)
    return module


def corpus_problems(module: Any, datagrams: dict[str, bytes]) -> Iterator[str]:
    for name, datagram in datagrams.items():
        for slot in SLOTS:
            for found in problems(module.build_reject, datagram, HEADROOM, slot):
                yield f"{name} in {slot}: {found}"
        if name in IN_PLACE:
            for shift in SHIFTS:
                yield from in_place_problems(module.build_reject, datagram, shift)
    yield from budget_problems(module.RejectBudget)


def test_the_unmutated_source_passes_the_corpus(datagrams: dict[str, bytes]) -> None:
    assert list(corpus_problems(mutant("", ""), datagrams)) == []


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_every_mutant_fails(datagrams: dict[str, bytes], name: str) -> None:
    module = mutant(*MUTANTS[name])
    assert next(corpus_problems(module, datagrams), None) is not None, f"mutant {name} survived"


def test_spent_says_what_allow_would_without_spending() -> None:
    budget = product.RejectBudget(10, 1, now_ns=0)
    assert not budget.spent(0)
    assert budget.allowed == budget.refused == 0  # a peek spends and counts nothing
    assert budget.allow(0)
    assert budget.spent(0) and not budget.allow(0)
    assert budget.spent(99_999_999) and not budget.spent(100_000_000)  # one token in 0.1 s
