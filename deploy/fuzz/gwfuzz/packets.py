"""Well-formed GWLB datagrams from a seeded Random: the fuzz's starting points.

Each is what GWLB could send (DESIGN.md §1): Geneve with the three AWS options (in GWLB's order
mostly; else reordered, or among options of other classes that are not critical), then an IPv4
packet (with options or fragmented at times) or an IPv6 one (with chains of extension headers at
times) carrying UDP (port 3000 and the demo policy's texts often), TCP, ICMP or ICMPv6 echoes and
others, or another protocol; sizes from empty payloads to the 8500-byte limit and past it.
`Built.fields` says where every length field is, for the mutations (mutate.py).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from gwfuzz.checksum import field as checksum_field
from gwfuzz.checksum import pseudo_v4, pseudo_v6
from gwfuzz.demo_policy import DROP_TEXT, FIND, PORT

AWS_OPTIONS = ((1, 8), (2, 8), (3, 4))
# Near misses of the policy's texts: a rule must not match them.
NEAR_MISSES = (b"drop  me", b"Drop me", b"drop m", b"weakly  typed", b"weakly typ", b"eakly typed")
SIZE_TARGETS = (8497, 8498, 8499, 8500, 8501, 8502, 8800, 8933)  # inner bytes: around the limit
EXT_KINDS = (60, 43, 44, 51, 135, 139, 140, 60)  # after an optional hop-by-hop header
_U16 = struct.Struct("!H")


@dataclass(slots=True)
class Built:
    data: bytearray  # Geneve onwards
    recipe: list[str]
    geneve_len: int
    version: int
    protocol: int  # transport, after any extension headers
    l4: int  # the transport header (or a later fragment's data)
    fields: list[tuple[str, int, str]] = field(default_factory=list)  # (name, offset, kind)


def build(rng: random.Random) -> Built:
    """One well-formed datagram."""
    version = 4 if rng.random() < 0.6 else 6
    geneve, opt_fields = _geneve(rng, version)
    recipe: list[str] = []
    inner, inner_fields, protocol, l4 = _inner(rng, version, len(geneve), recipe)
    fields = [("geneve.opt_len", 0, "low6"), *opt_fields, *inner_fields]
    return Built(bytearray(geneve + inner), recipe, len(geneve), version, protocol, l4, fields)


def aws_options(rng: random.Random) -> list[bytes]:
    return [
        struct.pack("!HBB", 0x0108, kind, size // 4) + rng.randbytes(size)
        for kind, size in AWS_OPTIONS
    ]


def geneve_header(options: list[bytes], protocol: int, first_flags: int = 0) -> bytes:
    words = sum(len(o) for o in options) // 4
    return struct.pack("!BBHI", words & 0x3F, first_flags, protocol, 0) + b"".join(options)


def _geneve(rng: random.Random, version: int) -> tuple[bytes, list[tuple[str, int, str]]]:
    options = aws_options(rng)
    if rng.random() < 0.25:
        rng.shuffle(options)
    for _ in range(rng.choice((0, 0, 0, 1, 2))):  # others' options, not critical
        words = rng.choice((0, 1, 2, rng.randrange(0, 20)))
        kind = rng.randrange(0, 0x80)
        opt_class = rng.choice((0x0108, rng.randrange(0, 0x10000)))
        if opt_class == 0x0108 and kind in (1, 2, 3):
            kind += 3
        flags = rng.choice((0, 0, rng.randrange(0, 8))) << 5  # R bits: ignored on receipt
        extra = struct.pack("!HBB", opt_class, kind, flags | words) + rng.randbytes(words * 4)
        options.insert(rng.randrange(0, len(options) + 1), extra)
    while sum(len(o) for o in options) > 252:  # Opt Len holds 63 words
        options.pop(next(i for i, o in enumerate(options) if o[:2] != b"\x01\x08" or o[2] > 3))
    header = geneve_header(options, 0x0800 if version == 4 else 0x86DD)
    fields, at = [], 8
    for option in options:
        fields.append(("geneve.option_len", at + 3, "low5"))
        at += len(option)
    return header, fields


def _inner(
    rng: random.Random, version: int, start: int, recipe: list[str]
) -> tuple[bytes, list[tuple[str, int, str]], int, int]:
    kind = rng.choices(("udp3000", "udp", "tcp", "echo", "icmp", "other"), (34, 14, 12, 20, 8, 6))[
        0
    ]
    protocol = {"tcp": 6, "other": _other_protocol(rng, version)}.get(
        kind, 17 if kind.startswith("udp") else 1 if version == 4 else 58
    )
    fragment = rng.choices(("whole", "first", "later"), (88, 6, 6))[0]
    recipe.append(f"v{version}/{kind}" + ("" if fragment == "whole" else f"/{fragment}"))
    if version == 4:
        return _ipv4_packet(rng, kind, protocol, fragment, start, recipe)
    return _ipv6_packet(rng, kind, protocol, fragment, start, recipe)


def _other_protocol(rng: random.Random, version: int) -> int:
    cross = 58 if version == 4 else 1  # ICMPv6 in IPv4, ICMP in IPv6: not "icmp" for the rules
    return rng.choice((47, 50, 132, 103, cross, rng.randrange(0, 256)))


def _payload_size(rng: random.Random, overhead: int) -> int:
    roll = rng.random()
    if roll < 0.55:
        return rng.randrange(0, 64)
    if roll < 0.80:
        return rng.randrange(64, 1500)
    if roll < 0.93:
        return rng.randrange(1500, 8400)
    return max(0, rng.choice(SIZE_TARGETS) - overhead)


def _text(rng: random.Random, size: int, policy: bool) -> bytes:
    """`size` bytes, with the policy's texts and near misses among filler when `policy`."""
    pieces: list[bytes] = []
    if policy:
        if rng.random() < 0.15:
            pieces.append(DROP_TEXT)
        pieces += [FIND] * rng.choice((0, 1, 1, 1, 2, 3, rng.randrange(0, 40)))
        if rng.random() < 0.2:
            pieces.append(rng.choice(NEAR_MISSES))
        rng.shuffle(pieces)
    body = b"".join(p + rng.choice((b" ", b"", rng.randbytes(rng.randrange(0, 9)))) for p in pieces)
    if len(body) > size:
        return body[:size]
    filler = rng.randbytes(size - len(body)) if rng.random() < 0.5 else b"x" * (size - len(body))
    cut = rng.randrange(0, len(filler) + 1)
    return filler[:cut] + body + filler[cut:]


def _transport(
    rng: random.Random, kind: str, version: int, payload_size: int
) -> tuple[bytes, int, str]:
    """The transport header and payload, checksum field zero; where the checksum goes (-1: none)
    and the checksum's kind ("pseudo" or "plain")."""
    if kind.startswith("udp"):
        ports = [PORT, rng.choice((53, 443, 4789, rng.randrange(1, 65536)))]
        if kind == "udp":
            ports[0] = rng.choice((3001, 2999, 80, rng.randrange(0, 65536)))
        rng.shuffle(ports)
        body = _text(rng, payload_size, kind == "udp3000")
        return struct.pack("!HHHH", *ports, 8 + len(body), 0) + body, 6, "pseudo"
    if kind == "tcp":
        words = rng.choice((5, 5, 5, 6, 8, 15))
        tcp_ports = (rng.choice((PORT, 443, rng.randrange(0, 65536))), rng.randrange(0, 65536))
        header = struct.pack(
            "!HHIIBBHHH",
            *tcp_ports,
            rng.getrandbits(32),
            rng.getrandbits(32),
            words << 4,
            rng.getrandbits(8),
            rng.getrandbits(16),
            0,
            0,
        )
        options = bytes([1] * (words * 4 - 20))
        return header + options + _text(rng, payload_size, True), 16, "pseudo"
    if kind in ("echo", "icmp"):
        types = (8, 0) if version == 4 else (128, 129)
        kind_byte = rng.choice(types) if kind == "echo" else rng.choice((3, 11, 1, 2, 4, 135, 13))
        seq = rng.choice((0, 5, 10, 65535, 4, 6, rng.randrange(0, 65536), rng.randrange(0, 50)))
        code = 0 if rng.random() < 0.9 else rng.randrange(0, 256)
        header = struct.pack("!BBHHH", kind_byte, code, 0, rng.getrandbits(16), seq)
        body = rng.randbytes(payload_size)
        return header + body, 2, "plain" if version == 4 else "pseudo"
    return rng.randbytes(payload_size), -1, ""


def _finish_checksum(
    rng: random.Random, segment: bytearray, at: int, mode: str, pseudo: bytes, recipe: list[str]
) -> None:
    if at < 0:
        return
    roll = rng.random()
    if roll < 0.10 and at == 6 and mode == "pseudo":
        recipe.append("udp-checksum-0")
        return  # no checksum (RFC 768); over IPv6 invalid, which the decoder says
    value = checksum_field(pseudo if mode == "pseudo" else b"", bytes(segment))
    if roll < 0.22:
        value = rng.randrange(1, 0x10000)
        recipe.append("bad-checksum")
    _U16.pack_into(segment, at, value)


def _addresses(rng: random.Random, version: int) -> bytes:
    """Source and destination: 10.0.0.0/8 and 198.18.0.0/15, or fd00::/8 (never routed: these
    are bytes inside a tunnel)."""
    if version == 4:
        return bytes((10, *rng.randbytes(3), 198, 18 + rng.getrandbits(1), *rng.randbytes(2)))
    return b"\xfd" + rng.randbytes(15) + b"\xfd" + rng.randbytes(15)


def _header_len(protocol: int, segment: bytes) -> int:
    return (segment[12] >> 4) * 4 if protocol == 6 else 8


def _split_fragment(rng: random.Random, segment: bytes, header: int) -> bytes:
    """The part of `segment` a first fragment carries: the transport header, and data up to a
    multiple of 8 bytes, less than the whole."""
    if len(segment) < header + 16:
        segment += bytes(header + 16 - len(segment))
    return segment[: rng.randrange(header + 8, len(segment), 8) // 8 * 8]


def _ipv4_options(rng: random.Random) -> bytes:
    kind = rng.choice(("nop", "rr", "ts", "alert", "lsrr", "tlv"))
    if kind == "nop":
        options = b"\x01" * rng.randrange(1, 8)
    elif kind in ("rr", "lsrr"):
        count = rng.randrange(1, 9)
        options = bytes((7 if kind == "rr" else 131, 3 + 4 * count, 4)) + rng.randbytes(4 * count)
    elif kind == "ts":
        count = rng.randrange(1, 9)
        options = bytes((68, 4 + 4 * count, 5, 0)) + bytes(4 * count)
    elif kind == "alert":
        options = b"\x94\x04\x00\x00"
    else:
        size = rng.randrange(2, 12)
        options = bytes((rng.randrange(2, 256), size)) + rng.randbytes(size - 2)
    return options + bytes(-len(options) % 4)  # end of list, then padding


def _segment(
    rng: random.Random, kind: str, version: int, protocol: int, fragment: str, size: int
) -> tuple[bytes, bytes, int, str, bool]:
    """(the whole transport segment, the part this packet carries, where its checksum goes,
    the checksum's kind, more fragments to come). A later fragment carries opaque data."""
    if fragment == "later":
        more = rng.random() < 0.5
        data = rng.randbytes(size // 8 * 8 if more else size)
        return data, data, -1, "", more
    whole, at, mode = _transport(rng, kind, version, size)
    carried = whole
    if fragment == "first":
        carried = _split_fragment(rng, whole, _header_len(protocol, whole))
        whole = whole if len(whole) >= len(carried) else carried
    return whole, carried, at, mode, fragment == "first"


def _ipv4_packet(
    rng: random.Random, kind: str, protocol: int, fragment: str, start: int, recipe: list[str]
) -> tuple[bytes, list[tuple[str, int, str]], int, int]:
    options = _ipv4_options(rng) if rng.random() < 0.15 else b""
    if options:
        recipe.append("ipv4-options")
    ihl = 20 + len(options)
    size = _payload_size(rng, ihl + 8)
    flags = 0x4000 if rng.random() < 0.7 else 0  # DF
    whole, segment, at, mode, more = _segment(rng, kind, 4, protocol, fragment, size)
    if fragment != "whole":
        flags = (0x2000 if more else 0) | (rng.randrange(1, 1100) if fragment == "later" else 0)
    header = _ipv4_header(rng, ihl + len(segment), flags, protocol, options)
    data = bytearray(whole)
    final = bytes(header)
    if options[:1] == b"\x83":  # loose source route: the pseudo-header's is the last hop's
        final = final[:16] + options[options[1] - 4 : options[1]]
    _finish_checksum(rng, data, at, mode, pseudo_v4(final, protocol, len(whole)), recipe)
    if rng.random() < 0.05:
        _U16.pack_into(header, 10, rng.randrange(0, 0x10000))  # decides nothing: passed on
        recipe.append("bad-ip-checksum")
    l4 = start + ihl
    fields = [("ipv4.ihl", start, "ihl"), ("ipv4.total_length", start + 2, "u16")]
    fields += _transport_fields(protocol, l4, fragment)
    return bytes(header) + bytes(data[: len(segment)]), fields, protocol, l4


def _ipv4_header(
    rng: random.Random, total: int, flags: int, protocol: int, options: bytes
) -> bytearray:
    """An IPv4 header with its checksum."""
    addresses = _addresses(rng, 4)
    first = 0x40 | (20 + len(options)) // 4
    tos = rng.choice((0, 0, rng.getrandbits(8)))
    ident = rng.getrandbits(16)
    ttl = rng.randrange(1, 256)
    header = bytearray(
        struct.pack("!BBHHHBBH", first, tos, total, ident, flags, ttl, protocol, 0)
        + addresses
        + options
    )
    _U16.pack_into(header, 10, checksum_field(bytes(header)))
    return header


def _transport_fields(protocol: int, l4: int, fragment: str) -> list[tuple[str, int, str]]:
    if fragment == "later":
        return []
    if protocol == 17:
        return [("udp.length", l4 + 4, "u16")]
    if protocol == 6:
        return [("tcp.data_offset", l4 + 12, "doff")]
    return []


def _tlvs(rng: random.Random, size: int) -> bytes:
    """`size` bytes of hop-by-hop or destination options (RFC 8200 §4.2)."""
    out = bytearray()
    while len(out) < size:
        room = size - len(out)
        roll = rng.random()
        if room == 1 or roll < 0.2:
            out.append(0)  # Pad1
        elif roll < 0.6:
            n = rng.randrange(0, room - 1)
            out += bytes((1, n)) + bytes(n)  # PadN
        else:
            n = rng.randrange(0, min(room - 1, 12))
            out += bytes((rng.choice((5, 0x1E, 0x3E, 0x7E, 0xBE, 0xFE, 0xC2)), n))
            out += rng.randbytes(n)
    return bytes(out)


def _extension(rng: random.Random, kind: int) -> bytearray:
    """One extension header of `kind`, its next header left 0."""
    if kind == 44:
        return bytearray(8)  # the caller fills in offset and flags
    if kind == 51:
        words = rng.choice((4, 6, 8))  # 64-bit aligned over IPv6 (RFC 4302)
        return bytearray(bytes((0, words - 2, 0, 0)) + rng.randbytes(words * 4 - 4))
    units = rng.choice((0, 0, 1, 2, rng.randrange(0, 8)))
    size = (units + 1) * 8
    if kind in (0, 60):
        return bytearray(bytes((0, units)) + _tlvs(rng, size - 2))
    if kind == 43:
        left = rng.choice((0, 0, 0, 1, rng.randrange(0, 256)))
        kind_byte = rng.choice((0, 2, 3, 4, rng.randrange(0, 256)))
        return bytearray(bytes((0, units, kind_byte, left)) + rng.randbytes(size - 4))
    return bytearray(bytes((0, units)) + rng.randbytes(size - 2))


def _chain(rng: random.Random, fragment: str) -> list[int]:
    kinds = [0] if rng.random() < 0.12 else []
    if rng.random() < 0.3:
        count = rng.choice((1, 1, 2, 3, rng.randrange(0, 22) if rng.random() < 0.15 else 1))
        kinds += [rng.choice(EXT_KINDS[:2] + EXT_KINDS[3:]) for _ in range(count)]
    if fragment != "whole" or rng.random() < 0.03:  # or an atomic fragment (RFC 6946)
        low = max(len(kinds) // 2, 1 if kinds[:1] == [0] else 0)  # hop-by-hop stays first
        kinds.insert(rng.randrange(low, len(kinds) + 1), 44)
    return kinds


def _ipv6_packet(
    rng: random.Random, kind: str, protocol: int, fragment: str, start: int, recipe: list[str]
) -> tuple[bytes, list[tuple[str, int, str]], int, int]:
    kinds = _chain(rng, fragment)
    if kinds:
        recipe.append("ext:" + ",".join(map(str, kinds)))
    present = kinds[: kinds.index(44) + 1] if fragment == "later" else kinds
    headers = [_extension(rng, k) for k in present]
    for i, header in enumerate(headers):
        header[0] = kinds[i + 1] if i + 1 < len(kinds) else protocol
    size = _payload_size(rng, 48 + sum(map(len, headers)))
    whole, segment, at, mode, more = _segment(rng, kind, 6, protocol, fragment, size)
    if fragment == "later":
        headers[-1][2:4] = _U16.pack(rng.randrange(1, 1100) << 3 | more)
    elif 44 in kinds:
        headers[kinds.index(44)][2:4] = _U16.pack(more)
    for i, k in enumerate(present):
        if k == 44:
            headers[i][4:8] = rng.randbytes(4)  # identification
    extensions = b"".join(headers)
    first_word = 0x60000000 | rng.choice((0, rng.getrandbits(28)))
    ipv6 = struct.pack(
        "!IHBB",
        first_word,
        len(extensions) + len(segment),
        kinds[0] if kinds else protocol,
        rng.randrange(1, 256),
    )
    ipv6 += _addresses(rng, 6)
    data = bytearray(whole)
    _finish_checksum(rng, data, at, mode, pseudo_v6(ipv6, protocol, len(whole)), recipe)
    l4 = start + 40 + len(extensions)
    fields = [("ipv6.payload_length", start + 4, "u16")]
    at_ext = start + 40
    for k, h in zip(present, headers, strict=True):
        if k != 44:
            fields.append(("ipv6.extension_length", at_ext + 1, "byte"))
        at_ext += len(h)
    fields += _transport_fields(protocol, l4, fragment)
    return ipv6 + extensions + bytes(data[: len(segment)]), fields, protocol, l4
