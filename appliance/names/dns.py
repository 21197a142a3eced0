"""The question name of a DNS query, and the answer the appliance sends in a resolver's place.

Why it refuses so much: the name is the first question's QNAME, and a query a resolver would
read differently from us must not pass as another name. A query is a message with QR clear and
OPCODE QUERY (anything else, a response, NOTIFY or UPDATE, is OTHER_PROTOCOL, for the policy to
judge as traffic it cannot name). MALFORMED: fewer than 12 bytes, more than one question (RFC
9619: a query has QDCOUNT 1 and a responder answers more with FORMERR), a question that runs
past the message, a label over 63 octets or of another type, a compression pointer (the first
question has nothing before it to point at, so a pointer there can only loop or point into the
header), a name over 255 octets on the wire, and labels that are not host name labels
(hostname.py: a label holding a dot, a space or a NUL). A query with no question (QDCOUNT 0, as
a client asking only for a DNS cookie sends, RFC 7873 §5.4) is COMPLETE with no name; a query
for the root is COMPLETE with the name "".

Over UDP a datagram is a whole message; over TCP each message has a 2-byte length before it
(RFC 1035 §4.2.2), and only the connection's first message is read here: a client may send
more queries on the same connection (RFC 7766 §6.2.1.1) and the same holds for a UDP flow's
later datagrams, so a name decided for a flow covers only its first query.

The synthesised answer (REFUSED or NXDOMAIN) copies the query's id, question (byte for byte, so
a client that randomises the case of its query still accepts it), RD and CD; it sets RA when RD
was set (we answer as the recursive resolver the client asked), has no records at all (no SOA,
so a resolver does not cache the negative answer; no OPT, so an EDNS client sees a server
without EDNS, which it must accept, RFC 6891 §7).
"""

from __future__ import annotations

import struct

from appliance.names.hostname import normalise
from appliance.names.result import MALFORMED, OTHER_PROTOCOL, NameResult, complete, need_more

HEADER = struct.Struct("!HHHHHH")  # id, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
HEADER_LEN = HEADER.size
TCP_LENGTH_LEN = 2
MAX_MESSAGE_LEN = 0xFFFF
QUESTION_TAIL_LEN = 4  # QTYPE, QCLASS

FLAG_QR = 0x8000
OPCODE_MASK = 0x7800
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_CD = 0x0010
RCODE_MASK = 0x000F
OPCODE_QUERY = 0

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
REFUSED = 5

MAX_LABEL_LEN = 63  # a length byte over it is a pointer (0xC0) or a retired label type
MAX_WIRE_NAME_LEN = 255

NOT_DNS = OTHER_PROTOCOL

Bytes = bytes | bytearray | memoryview


def parse_query(message: Bytes) -> NameResult:
    """The first question's name of a DNS query message (a UDP payload): COMPLETE with the
    name (None without a question), NOT_DNS when it is no query, or MALFORMED (module doc)."""
    found = _question(memoryview(message).cast("B"))
    return found if isinstance(found, NameResult) else complete(found[0])


def parse_tcp_query(stream: Bytes) -> NameResult:
    """The same for the start of a DNS-over-TCP stream: NEED_MORE (with the bytes the first
    message takes, its length prefix included) until the first message is whole."""
    view = memoryview(stream).cast("B")
    if len(view) < TCP_LENGTH_LEN:
        return need_more(TCP_LENGTH_LEN + HEADER_LEN)
    length = view[0] << 8 | view[1]
    if length < HEADER_LEN:
        return MALFORMED
    if len(view) < TCP_LENGTH_LEN + length:
        return need_more(TCP_LENGTH_LEN + length)
    return parse_query(view[TCP_LENGTH_LEN : TCP_LENGTH_LEN + length])


def tcp_message(stream: Bytes) -> bytes | None:
    """The first whole message of a DNS-over-TCP stream, without its length; None before it is
    whole."""
    view = memoryview(stream).cast("B")
    if len(view) < TCP_LENGTH_LEN:
        return None
    end = TCP_LENGTH_LEN + (view[0] << 8 | view[1])
    return bytes(view[TCP_LENGTH_LEN:end]) if len(view) >= end else None


def add_length_prefix(message: Bytes) -> bytes:
    """`message` as DNS over TCP sends it: its 2-byte length first."""
    if len(message) > MAX_MESSAGE_LEN:
        raise ValueError(f"a DNS message over TCP is at most {MAX_MESSAGE_LEN} bytes")
    return len(message).to_bytes(TCP_LENGTH_LEN, "big") + bytes(message)


def synthesize_answer(query: Bytes, rcode: int) -> bytes:
    """The answer to `query` with `rcode` (REFUSED, NXDOMAIN; any 4-bit RCODE) and no records
    (module doc). ValueError when `query` is not a query parse_query accepts."""
    if not 0 <= rcode <= RCODE_MASK:
        raise ValueError(f"a DNS RCODE in the header is 0-{RCODE_MASK}, not {rcode}")
    view = memoryview(query).cast("B")
    found = _question(view)
    if isinstance(found, NameResult):
        raise ValueError(f"not a DNS query this can answer ({found.status.value})")
    ident, flags, questions, _, _, _ = HEADER.unpack_from(view)
    answer_flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | rcode
    if flags & FLAG_RD:
        answer_flags |= FLAG_RA
    return HEADER.pack(ident, answer_flags, questions, 0, 0, 0) + bytes(view[HEADER_LEN : found[1]])


def _question(view: memoryview) -> tuple[str | None, int] | NameResult:
    """(the first question's name, the offset just past the question section) of a query, or
    why there is none."""
    if len(view) < HEADER_LEN:
        return MALFORMED
    _, flags, questions, _, _, _ = HEADER.unpack_from(view)
    if flags & FLAG_QR or (flags & OPCODE_MASK) >> 11 != OPCODE_QUERY:
        return NOT_DNS
    if questions == 0:
        return None, HEADER_LEN
    if questions > 1:
        return MALFORMED
    labels: list[bytes] = []
    at, wire_len, end = HEADER_LEN, 1, len(view)
    while at < end and view[at]:
        length = view[at]
        wire_len += 1 + length
        if length > MAX_LABEL_LEN or wire_len > MAX_WIRE_NAME_LEN or at + 1 + length > end:
            return MALFORMED
        labels.append(bytes(view[at + 1 : at + 1 + length]))
        at += 1 + length
    at += 1 + QUESTION_TAIL_LEN  # the root label, QTYPE and QCLASS
    if at > end:
        return MALFORMED
    if not labels:
        return "", at
    if any(b"." in label for label in labels):
        return MALFORMED
    name = normalise(b".".join(labels))
    return MALFORMED if name is None else (name, at)
