"""Mutations of well-formed datagrams, and the seeded stream of what the fuzz sends.

Datagram k of a run with seed S is made by its own Random(f"{S}:{k}"), so any one of them can be
made again alone (wirefuzz.py --show S:K). Of every 100, about 38 go out as built (they exercise
the policy and the rewrite), 5 are consistent-but-short inner IPv4 packets (a whole IPv4 packet
of 0 to 19 bytes whose total length says just that: the class of the fast path's stale-slot bug,
b8df726), and the rest get one to three mutations, applied in layer order:

    options      the Geneve option chain: others' options (critical or not), AWS options with
                 a wrong length, duplicated, missing or reordered, R bits, a cut body, Opt Len off
    geneve_bits  version, O, C, reserved bits, the reserved byte, the VNI
    protocol     Geneve's protocol type: the other family or anything
    length       a length field of any layer: Geneve Opt Len, an option's length, IHL, IPv4 total
                 length, IPv6 payload length, an extension header's length, UDP length, TCP data
                 offset; off by one, two or eight, zero, all ones, or anything
    fragment     IPv4 flags and fragment offset; an IPv6 fragment header's offset and M flag
    bytes        1 to 4 header bytes of one layer set to anything
    bitflip      1 to 3 bits flipped in one layer
    tail         bytes appended: as they are, or with the IP length fixed, or the IP and UDP
                 lengths fixed (then the tail is payload, the policy's texts sometimes in it)
    truncate     cut inside any layer: as it is, or with the IP length fixed to match
    outer_udp    the outer UDP length (the kernel trims the datagram or drops it) or checksum
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from gwfuzz import packets
from gwfuzz.demo_policy import DROP_TEXT, FIND

_U16 = struct.Struct("!H")
SPECIAL_BYTES = (0x00, 0xFF, 0x80, 0x7F, 0x01, 0x45, 0x60, 0x11, 0x06)


@dataclass(slots=True)
class Made:
    index: int
    payload: bytes  # the UDP payload sent: Geneve onwards
    recipe: str  # what was built and done, for reports
    outer_length_delta: int = 0  # outer UDP length minus the true one
    outer_checksum: str = "zero"  # "zero", "correct" or "wrong"


def make(seed: int, index: int) -> Made:
    """Datagram `index` of the run with `seed`."""
    rng = random.Random(f"{seed}:{index}")
    roll = rng.random()
    if roll < 0.05:
        return _short_ipv4(rng, index)
    built = packets.build(rng)
    made = Made(index, b"", "")
    if roll >= 0.43:
        names = rng.choices(
            list(MUTATIONS), [w for w, _ in MUTATIONS.values()], k=rng.randint(1, 3)
        )
        for name in sorted(set(names), key=list(MUTATIONS).index):
            MUTATIONS[name][1](rng, built, made)
    made.payload = bytes(built.data)
    made.recipe = " ".join(built.recipe)
    if made.outer_checksum == "zero" and rng.random() < 0.2:
        made.outer_checksum = "correct"
    return made


def _short_ipv4(rng: random.Random, index: int) -> Made:
    """Geneve as GWLB sends it, then a whole IPv4 packet shorter than an IPv4 header: a real
    header cut to 0-19 bytes, its total length saying just that. Only a reader that checks the
    header's size before anything else refuses it without looking at bytes it does not have
    (a receive slot holds an earlier datagram's bytes there)."""
    size = rng.randrange(0, 20)
    protocol = rng.choice((17, 6, 1, 47, 50, rng.randrange(0, 256)))
    flags = rng.choice((0x4000, 0x4000, 0, 0x2000))
    first = 0x45 if rng.random() < 0.9 else rng.choice((0x40, 0x44, 0x4F, 0x46))
    header = struct.pack(
        "!BBHHHBBH", first, 0, size, rng.getrandbits(16), flags, 64, protocol, rng.getrandbits(16)
    )
    inner = (header + rng.randbytes(8))[:size]
    geneve = packets.geneve_header(packets.aws_options(rng), 0x0800)
    return Made(index, geneve + inner, f"v4/short-consistent({size}, protocol {protocol})")


def _region(rng: random.Random, b: packets.Built) -> tuple[int, int, str]:
    """A layer to hit: (start, end, name)."""
    end = len(b.data)
    regions = [
        (0, 8, "geneve-header"),
        (8, b.geneve_len, "geneve-options"),
        (b.geneve_len, b.l4, "ip-header"),
        (b.l4, b.l4 + 20, "transport-header"),
        (0, end, "anywhere"),
    ]
    start, stop, name = rng.choices(regions, (25, 20, 30, 15, 10))[0]
    stop = min(stop, end)
    if stop <= start:
        return 0, end, "anywhere"
    return start, stop, name


def _bitflip(rng: random.Random, b: packets.Built, made: Made) -> None:
    start, stop, name = _region(rng, b)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(start, stop)
        bit = rng.randrange(8)
        b.data[at] ^= 1 << bit
        b.recipe.append(f"flip@{at}.{bit}({name})")


def _bytes(rng: random.Random, b: packets.Built, made: Made) -> None:
    start, stop, name = _region(rng, b)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(start, stop)
        b.data[at] = rng.choice((*SPECIAL_BYTES, rng.getrandbits(8)))
        b.recipe.append(f"byte@{at}={b.data[at]:02x}({name})")


def _length(rng: random.Random, b: packets.Built, made: Made) -> None:
    name, at, kind = rng.choice(b.fields)
    if at + 2 > len(b.data):
        return
    if kind == "u16":
        old = _U16.unpack_from(b.data, at)[0]
        new = _near(rng, old, 0xFFFF)
        _U16.pack_into(b.data, at, new)
    else:
        bits, shift = {"low6": (6, 0), "low5": (5, 0), "ihl": (4, 0), "doff": (4, 4)}.get(
            kind, (8, 0)
        )
        mask = (1 << bits) - 1
        old = b.data[at] >> shift & mask
        new = _near(rng, old, mask)
        b.data[at] = b.data[at] & ~(mask << shift) & 0xFF | new << shift
    b.recipe.append(f"{name}:{old}->{new}")


def _near(rng: random.Random, old: int, top: int) -> int:
    step = rng.choice((1, 1, 2, 8, 20))
    value = rng.choice((old + step, old - step, 0, top, rng.randrange(0, top + 1)))
    return min(max(value, 0), top)


def _geneve_bits(rng: random.Random, b: packets.Built, made: Made) -> None:
    what = rng.choice(("version", "o", "c", "reserved", "reserved-byte", "vni", "vni"))
    if what == "version":
        b.data[0] |= rng.randrange(1, 4) << 6
    elif what == "o":
        b.data[1] |= 0x80
    elif what == "c":
        b.data[1] |= 0x40
    elif what == "reserved":
        b.data[1] |= rng.randrange(1, 0x40)
    elif what == "reserved-byte":
        b.data[7] = rng.randrange(1, 256)
    else:
        b.data[4:7] = rng.choice((b"\0\0\x01", rng.randbytes(3)))
    b.recipe.append(f"geneve-{what}")


def _protocol(rng: random.Random, b: packets.Built, made: Made) -> None:
    value = rng.choice((0x86DD if b.data[2:4] == b"\x08\x00" else 0x0800, 0x6558, 0x0806, 0))
    _U16.pack_into(b.data, 2, value)
    b.recipe.append(f"geneve-protocol={value:04x}")


def _fragment(rng: random.Random, b: packets.Built, made: Made) -> None:
    at = b.geneve_len
    if b.version == 4 and len(b.data) >= at + 8:
        value = rng.choice(
            (
                0x2000,
                0x2000 | rng.randrange(1, 0x2000),
                rng.randrange(1, 0x2000),
                0x8000,
                0x6000,
                rng.getrandbits(16),
            )
        )
        _U16.pack_into(b.data, at + 6, value)
        b.recipe.append(f"ipv4-flags-offset={value:04x}")
        return
    fragment_header = _ipv6_fragment_header(b)
    if fragment_header >= 0:
        value = rng.choice((1, rng.randrange(1, 0x2000) << 3, rng.getrandbits(16)))
        _U16.pack_into(b.data, fragment_header + 2, value)
        b.recipe.append(f"ipv6-fragment={value:04x}")


def _ipv6_fragment_header(b: packets.Built) -> int:
    """Where the first fragment header is (the chain as built), -1 without one."""
    at, next_header = b.geneve_len + 40, b.data[b.geneve_len + 6]
    while next_header in (0, 43, 44, 51, 60, 135, 139, 140) and at + 8 <= len(b.data):
        if next_header == 44:
            return at
        size = (b.data[at + 1] + 2) * 4 if next_header == 51 else (b.data[at + 1] + 1) * 8
        next_header, at = b.data[at], at + size
    return -1


def _tail(rng: random.Random, b: packets.Built, made: Made) -> None:
    size = rng.choice((1, 2, 7, 8, rng.randrange(1, 64), rng.randrange(64, 600)))
    tail = rng.randbytes(size)
    if rng.random() < 0.3:
        tail = (tail + rng.choice((DROP_TEXT, FIND, FIND + FIND)))[-max(size, 7) :]
    b.data += tail
    mode = rng.choice(("raw", "ip", "ip+udp"))
    if mode != "raw":
        _fix_ip_length(b)
    if mode == "ip+udp" and b.protocol == 17 and b.l4 + 8 <= len(b.data):
        _U16.pack_into(b.data, b.l4 + 4, len(b.data) - b.l4)
    b.recipe.append(f"tail+{len(tail)}({mode})")


def _truncate(rng: random.Random, b: packets.Built, made: Made) -> None:
    start, stop, name = _region(rng, b)
    if name == "anywhere" or rng.random() < 0.25:
        start, stop, name = b.l4, len(b.data), "payload"
    cut = rng.randrange(start, max(stop, start + 1))
    del b.data[cut:]
    consistent = rng.random() < 0.5
    if consistent:
        _fix_ip_length(b)
    b.recipe.append(f"cut@{cut}({name}{', ip length fixed' if consistent else ''})")


def _fix_ip_length(b: packets.Built) -> None:
    s = b.geneve_len
    size = len(b.data) - s
    if b.version == 4 and size >= 4:
        _U16.pack_into(b.data, s + 2, min(size, 0xFFFF))
    elif b.version == 6 and size >= 6:
        _U16.pack_into(b.data, s + 4, min(max(size - 40, 0), 0xFFFF))


def _outer_udp(rng: random.Random, b: packets.Built, made: Made) -> None:
    roll = rng.random()
    if roll < 0.3:
        made.outer_checksum = "wrong"
    elif roll < 0.7:
        made.outer_length_delta = -rng.randint(1, min(40, len(b.data) + 8))  # the kernel trims
    else:
        made.outer_length_delta = rng.choice((1, 2, 100))  # longer than the datagram: dropped
    b.recipe.append(f"outer-udp({made.outer_checksum}, length{made.outer_length_delta:+d})")


OPTION_EDITS = ("critical", "other", "aws-length", "duplicate", "missing", "reorder", "r-bits",
                "cut-body", "opt-len")  # fmt: skip


def _options(rng: random.Random, b: packets.Built, made: Made) -> None:
    options = _split_options(bytes(b.data[8 : b.geneve_len]))
    what = rng.choice(OPTION_EDITS)
    opt_len_delta = _edit_options(rng, options, what)
    body = b"".join(options)[:252]
    words = min(max(len(body) // 4 + opt_len_delta, 0), 63)
    header = bytes(((b.data[0] & 0xC0) | words,)) + bytes(b.data[1:8])
    _replace_geneve(b, header + body)
    b.recipe.append(f"options-{what}")


def _edit_options(rng: random.Random, options: list[bytes], what: str) -> int:
    """Edit the option chain in place; how many words Opt Len shall be off by."""
    aws = [i for i, o in enumerate(options) if o[:2] == b"\x01\x08" and o[2] in (1, 2, 3)]
    if what in ("critical", "other"):
        kind = rng.randrange(0x80, 0x100) if what == "critical" else rng.randrange(0, 0x80)
        words = rng.randrange(0, 4)
        cls = rng.choice((0x0108, rng.getrandbits(16)))
        option = struct.pack("!HBB", cls, kind, words) + rng.randbytes(words * 4)
        options.insert(rng.randrange(0, len(options) + 1), option)
    elif what == "aws-length" and aws:
        i = rng.choice(aws)
        words = rng.choice((0, 1, 3, 4))
        options[i] = options[i][:3] + bytes((words,)) + rng.randbytes(words * 4)
    elif what == "duplicate" and aws:
        options.insert(rng.randrange(0, len(options) + 1), options[rng.choice(aws)])
    elif what == "missing" and aws:
        del options[rng.choice(aws)]
    elif what == "reorder":
        rng.shuffle(options)
    elif what == "r-bits" and options:
        i = rng.randrange(len(options))  # R bits: ignored on receipt; the length stays
        old = options[i]
        options[i] = old[:3] + bytes((old[3] | rng.randrange(1, 8) << 5,)) + old[4:]
    elif what == "cut-body" and options:
        i = rng.randrange(len(options))
        if len(options[i]) > 4:
            cut = 4 * rng.randint(1, (len(options[i]) - 4) // 4)
            options[i] = options[i][: len(options[i]) - cut]  # its length field now lies
    elif what == "opt-len":
        return rng.choice((-2, -1, 1, 2))
    return 0


def _split_options(raw: bytes) -> list[bytes]:
    options, at = [], 0
    while at + 4 <= len(raw):
        size = 4 + (raw[at + 3] & 0x1F) * 4
        options.append(raw[at : at + size])
        at += size
    return options


def _replace_geneve(b: packets.Built, geneve: bytes) -> None:
    """Put a new Geneve header in front; every offset behind it moves."""
    delta = len(geneve) - b.geneve_len
    b.data[: b.geneve_len] = geneve
    b.fields = [
        (name, at + delta if at >= b.geneve_len else at, kind)
        for name, at, kind in b.fields
        if not name.startswith("geneve.option_len")
    ]
    b.geneve_len += delta
    b.l4 += delta


Mutation = Callable[[random.Random, packets.Built, Made], None]
# In the order they apply, with their weights.
MUTATIONS: dict[str, tuple[int, Mutation]] = {
    "options": (10, _options),
    "geneve_bits": (8, _geneve_bits),
    "protocol": (3, _protocol),
    "length": (18, _length),
    "fragment": (4, _fragment),
    "bytes": (10, _bytes),
    "bitflip": (14, _bitflip),
    "tail": (10, _tail),
    "truncate": (14, _truncate),
    "outer_udp": (2, _outer_udp),
}
