"""A minimal pcapng writer (draft-ietf-opsawg-pcapng) for `appliancectl capture`: one section, its
interfaces, and their packets with a timestamp, a comment and a direction each.

Why pcapng and not classic pcap: a captured packet carries the appliance's reason with it (the
verdict and the rule, as `opt_comment`, which Wireshark shows as `frame.comment` and tshark
filters on), whether it came from GWLB or went back to it (`epb_flags`), and which interface it was
seen on, where one file may hold several (one per worker, or inbound and outbound apart).

Why blocks as bytes: `section_header_block`, `interface_description_block` and
`enhanced_packet_block` are pure functions, so a worker can build packet blocks and send them over
a socket to whoever writes the file, which adds the section and interface blocks once. The
`PcapngWriter` is the same functions writing to one stream (a file, a pipe into `tshark -r -`).

Choices the format leaves open:
- little-endian throughout, stated rather than native: a reader learns the order from the section
  header's byte-order magic, so either is valid, but one fixed order keeps the bytes testable;
- the section length is -1 (unknown): a stream cannot go back to fill it in;
- timestamps are nanoseconds since the Unix epoch (`time.time_ns()`, not the monotonic clock),
  and every interface says so with `if_tsresol` = 9. The microsecond default would throw away
  what the worker has and merge packets: a worker spends 0.6 to 3.5 us on a packet (the
  bench's figures), so neighbours in a batch often share a microsecond. 2**64 ns lasts until
  the year 2554;
- captured lengths are at most 262144 bytes (MAX_SNAPLEN): Wireshark refuses a larger packet
  record ("pcapng: cap_len 262145 is larger than 262144"), and no inner packet GWLB hands us
  (inside one UDP datagram) is longer than 65535 anyway;
- an option's value is at most 65535 bytes (its length is 16 bits); a longer comment or name is
  refused with ValueError rather than cut.
"""

from __future__ import annotations

import struct
from typing import IO

LINKTYPE_RAW = 101  # an IPv4 or IPv6 packet, no link layer: what GWLB's Geneve carries
MAX_SNAPLEN = 262144
MAX_OPTION_LEN = 0xFFFF
TSRESOL_NS = 9  # if_tsresol: 10**-9 s

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9
EPB_FLAGS = 2
EPB_INBOUND = 0b01  # epb_flags bits 0-1: the direction
EPB_OUTBOUND = 0b10

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_BLOCK_HEAD = struct.Struct("<II")  # block type, block total length
_OPTION_HEAD = struct.Struct("<HH")  # option code, value length
_SHB_BODY = struct.Struct("<IHHq")  # byte-order magic, major, minor, section length
_IDB_BODY = struct.Struct("<HHI")  # link type, reserved, snaplen
_EPB_BODY = struct.Struct("<IIIII")  # interface id, timestamp high, low, captured, original
_END_OF_OPTIONS = _OPTION_HEAD.pack(OPT_ENDOFOPT, 0)
_EPB_HEAD = struct.Struct("<IIIIIII")  # _BLOCK_HEAD then _EPB_BODY, in one
_PADS = (b"", b"\0", b"\0\0", b"\0\0\0")  # by padding length
_FLAGS = {
    False: _OPTION_HEAD.pack(EPB_FLAGS, 4) + _U32.pack(EPB_INBOUND),
    True: _OPTION_HEAD.pack(EPB_FLAGS, 4) + _U32.pack(EPB_OUTBOUND),
}


def _padding(length: int) -> bytes:
    return b"\0" * (-length & 3)


def _option(code: int, value: bytes, name: str) -> bytes:
    if len(value) > MAX_OPTION_LEN:
        raise ValueError(f"{name} is {len(value)} bytes; an option holds at most {MAX_OPTION_LEN}")
    return _OPTION_HEAD.pack(code, len(value)) + value + _padding(len(value))


def _block(block_type: int, body: bytes, options: bytes) -> bytes:
    """A whole block: its type and length, the body (already 32-bit aligned), the options (ended
    by opt_endofopt when there are any), and the length again."""
    if options:
        options += _END_OF_OPTIONS
    total = 12 + len(body) + len(options)
    return _BLOCK_HEAD.pack(block_type, total) + body + options + _U32.pack(total)


def section_header_block(application: str = "gwlb-appliance") -> bytes:
    """The Section Header Block that opens a file: version 1.0, length unknown, `shb_userappl`."""
    body = _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(BLOCK_SHB, body, _option(SHB_USERAPPL, application.encode(), "shb_userappl"))


def interface_description_block(
    name: str, linktype: int = LINKTYPE_RAW, snaplen: int = MAX_SNAPLEN
) -> bytes:
    """An Interface Description Block: its link type, snap length, `if_name`, and nanosecond
    timestamps (`if_tsresol` 9). Interfaces are numbered from 0 in the order of these blocks."""
    if not 0 <= linktype <= 0xFFFF:
        raise ValueError(f"a link type is 0-65535, not {linktype}")
    if not 1 <= snaplen <= MAX_SNAPLEN:
        raise ValueError(f"snaplen must be 1-{MAX_SNAPLEN}, not {snaplen}")
    options = _option(IF_NAME, name.encode(), "if_name") + _option(
        IF_TSRESOL, bytes((TSRESOL_NS,)), "if_tsresol"
    )
    return _block(BLOCK_IDB, _IDB_BODY.pack(linktype, 0, snaplen), options)


def enhanced_packet_block(
    interface: int,
    timestamp_ns: int,
    data: bytes | bytearray | memoryview,
    original_length: int | None = None,
    comment: str | None = None,
    outbound: bool | None = False,
    snaplen: int = MAX_SNAPLEN,
) -> bytes:
    """An Enhanced Packet Block for interface number `interface`: the first `snaplen` bytes of
    `data`, which was `original_length` bytes long on the wire (default: all of `data`), seen at
    `timestamp_ns` (nanoseconds since the Unix epoch). `comment` becomes `opt_comment` (UTF-8);
    `outbound` sets the direction in `epb_flags`: False inbound (from GWLB), True outbound (back
    to it), None leaves the flags out."""
    if not 0 <= interface <= 0xFFFFFFFF:
        raise ValueError(f"an interface number is 0-{0xFFFFFFFF}, not {interface}")
    if not 0 <= timestamp_ns <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"a timestamp is 0-2**64-1 ns since the epoch, not {timestamp_ns}")
    if not 1 <= snaplen <= MAX_SNAPLEN:
        raise ValueError(f"snaplen must be 1-{MAX_SNAPLEN}, not {snaplen}")
    original = len(data) if original_length is None else original_length
    if original < len(data):
        raise ValueError(f"original length {original} is shorter than the {len(data)} bytes given")
    if original > 0xFFFFFFFF:
        raise ValueError(f"an original length is at most {0xFFFFFFFF} bytes, not {original}")
    captured = bytes(data[:snaplen])
    options = b"" if outbound is None else _FLAGS[outbound]
    if comment is not None:
        options = _option(OPT_COMMENT, comment.encode(), "opt_comment") + options
    body = (
        _EPB_BODY.pack(
            interface, timestamp_ns >> 32, timestamp_ns & 0xFFFFFFFF, len(captured), original
        )
        + captured
        + _padding(len(captured))
    )
    return _block(BLOCK_EPB, body, options)


def packet_options(comment: str | None = None, outbound: bool | None = False) -> bytes:
    """The options of an Enhanced Packet Block (`opt_comment`, `epb_flags`, the end), encoded
    once for `packet_block`: a capture's packets share a few comments between them."""
    options = b"" if outbound is None else _FLAGS[outbound]
    if comment is not None:
        options = _option(OPT_COMMENT, comment.encode(), "opt_comment") + options
    return options + _END_OF_OPTIONS if options else b""


def packet_block(
    interface: int, timestamp_ns: int, data: bytes | bytearray, options: bytes
) -> bytes:
    """`enhanced_packet_block` for a caller that has checked its arguments (data of at most
    MAX_SNAPLEN bytes, a timestamp and interface in range) and encoded its options with
    `packet_options`: the same bytes, in a third of the time (the capture's per-packet cost)."""
    captured = len(data)
    pad = -captured & 3
    total = 32 + captured + pad + len(options)
    head = _EPB_HEAD.pack(
        BLOCK_EPB,
        total,
        interface,
        timestamp_ns >> 32,
        timestamp_ns & 0xFFFFFFFF,
        captured,
        captured,
    )
    return b"".join((head, data, _PADS[pad], options, _U32.pack(total)))


def split_blocks(data: bytes | bytearray | memoryview) -> list[tuple[int, memoryview]]:
    """The whole blocks `data` holds, in order, as (block type, the block's bytes), for a reader
    of blocks this module wrote (little-endian); ValueError when a length is not a block's."""
    view, at, found = memoryview(data), 0, []
    while at < len(view):
        if len(view) - at < 12:
            raise ValueError(f"{len(view) - at} bytes at offset {at} are not a whole block")
        block_type, total = _BLOCK_HEAD.unpack_from(view, at)
        if total < 12 or total % 4 or at + total > len(view):
            raise ValueError(f"a block at offset {at} claims {total} bytes")
        found.append((block_type, view[at : at + total]))
        at += total
    return found


def is_outbound(block: bytes | bytearray | memoryview) -> bool:
    """Whether an Enhanced Packet Block's `epb_flags` say it went out (back to GWLB)."""
    (captured,) = _U32.unpack_from(block, 20)
    at, end = 28 + captured + (-captured & 3), len(block) - 4
    while at + 4 <= end:
        code, length = _OPTION_HEAD.unpack_from(block, at)
        if code == OPT_ENDOFOPT:
            break
        if code == EPB_FLAGS and length == 4:
            return bool(_U32.unpack_from(block, at + 4)[0] & EPB_OUTBOUND)
        at += 4 + length + (-length & 3)
    return False


class PcapngWriter:
    """Writes one pcapng section to `stream` (a file, a pipe, a socket's makefile("wb")): the
    section header at once, then interfaces and packets as they are added. Nothing is buffered
    here; the stream's own buffering applies (call its flush() to hand a reader what was written
    so far)."""

    def __init__(self, stream: IO[bytes], application: str = "gwlb-appliance") -> None:
        self._stream = stream
        self._snaplens: list[int] = []
        stream.write(section_header_block(application))

    def add_interface(
        self, name: str, linktype: int = LINKTYPE_RAW, snaplen: int = MAX_SNAPLEN
    ) -> int:
        """Describe an interface; returns its number, for `packet`."""
        self._stream.write(interface_description_block(name, linktype, snaplen))
        self._snaplens.append(snaplen)
        return len(self._snaplens) - 1

    def packet(
        self,
        interface: int,
        timestamp_ns: int,
        data: bytes | bytearray | memoryview,
        original_length: int | None = None,
        comment: str | None = None,
        outbound: bool | None = False,
    ) -> None:
        """Write one packet seen on `interface`, cut to that interface's snaplen (see
        `enhanced_packet_block` for the rest)."""
        if not 0 <= interface < len(self._snaplens):
            raise ValueError(f"no interface {interface}: {len(self._snaplens)} added so far")
        block = enhanced_packet_block(
            interface,
            timestamp_ns,
            data,
            original_length,
            comment,
            outbound,
            self._snaplens[interface],
        )
        self._stream.write(block)
