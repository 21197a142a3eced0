"""The server name (SNI) of the TLS ClientHello that opens a client's byte stream.

Why a parser of our own: it is small, it must never raise on what a client sends, and it must say
"need more bytes" for a prefix instead of guessing, since it sees a stream as it arrives. It
reads only the record and handshake framing and the ClientHello's fields up to its extensions;
it checks every length against the bytes given and against the bounds the RFCs set, and a
ClientHello fragmented across several handshake records (RFC 8446 §5.1 allows it, and large
post-quantum key shares make it common) is gathered first.

What it refuses (MALFORMED), because a server might read it differently from us: a record length
of 0 or over 2^14, a ClientHello shorter than its fixed fields or longer than its fields' own
limits allow, lengths that overrun their container, a record other than a handshake before the
ClientHello is whole, an extension twice (RFC 8446 §4.2), a server_name extension that is not
exactly one host_name, and a host name that is not a name (hostname.py). An SSLv2-compatible
hello (first byte with the top bit set) is OTHER_PROTOCOL, as is a handshake that is not a
ClientHello.

Encrypted Client Hello (RFC 9849): the server_name returned is the outer ClientHello's, which is
the client-facing server's public name, not the name the client wants; that one is encrypted and
no middlebox can read it. `ech` says the encrypted_client_hello extension (0xfe0d) is present,
which is also true of a client that sends it as GREASE (without ECH, when its server_name is the
real one): the two cannot be told apart by design. Only the stream's first ClientHello is read;
after a HelloRetryRequest the client sends a second one, which this does not see.
"""

from __future__ import annotations

from appliance.names.hostname import normalise
from appliance.names.result import MALFORMED, OTHER_PROTOCOL, NameResult, complete, need_more

CONTENT_HANDSHAKE = 22
TLS_MAJOR = 3  # every SSL 3.0 / TLS record version is 3.x; servers ignore the minor
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D
NAME_TYPE_HOST_NAME = 0

RECORD_HEADER_LEN = 5
HANDSHAKE_HEADER_LEN = 4
MAX_RECORD_LEN = 2**14  # RFC 8446 §5.1: a plaintext record's fragment
RANDOM_LEN = 32
MAX_SESSION_ID_LEN = 32
# A ClientHello body: legacy_version, random, session id, cipher suites, compression methods,
# extensions. The shortest has one suite, one method and no extensions; the longest fills every
# vector to the limit its length field allows (RFC 8446 §4.1.2).
MIN_HELLO_LEN = 2 + RANDOM_LEN + 1 + 2 + 2 + 1 + 1
MAX_HELLO_LEN = 2 + RANDOM_LEN + (1 + MAX_SESSION_ID_LEN) + (2 + 0xFFFE) + (1 + 0xFF) + (2 + 0xFFFF)

NOT_TLS = OTHER_PROTOCOL

Bytes = bytes | bytearray | memoryview


def parse_client_hello(data: Bytes) -> NameResult:
    """What the start of a client's stream says, read as a TLS ClientHello.

    NEED_MORE with `needed` (a lower bound on the stream length the ClientHello takes: exact for
    one record, it grows as fragmented records appear; a caller that can never hold that many
    bytes gives up), NOT_TLS, MALFORMED, or COMPLETE with the server name (None without a
    server_name extension) and whether an encrypted_client_hello extension is present.
    """
    view = memoryview(data).cast("B")
    body = _gather(view)
    if isinstance(body, NameResult):
        return body
    return _read_hello(body)


def _gather(view: memoryview) -> bytes | NameResult:
    """The ClientHello's body gathered from its handshake records, or what stops that."""
    total = len(view)
    pieces: list[memoryview] = []
    have = 0  # handshake bytes gathered so far
    wanted = HANDSHAKE_HEADER_LEN  # handshake bytes needed: the header, then the whole message
    at = 0
    while True:
        if total - at < RECORD_HEADER_LEN:
            if not _could_be_record(view[at:]):
                return NOT_TLS if at == 0 else MALFORMED
            return need_more(at + RECORD_HEADER_LEN + wanted - have)
        length = view[at + 3] << 8 | view[at + 4]
        if not _could_be_record(view[at : at + 3]):
            return NOT_TLS if at == 0 else MALFORMED
        if not 0 < length <= MAX_RECORD_LEN:
            return MALFORMED
        start, end = at + RECORD_HEADER_LEN, at + RECORD_HEADER_LEN + length
        if start < total:
            pieces.append(view[start : min(end, total)])
            have += len(pieces[-1])
        if have and pieces[0][0] != HANDSHAKE_CLIENT_HELLO:
            return NOT_TLS  # a handshake, but not a client's first message
        if wanted == HANDSHAKE_HEADER_LEN and have >= HANDSHAKE_HEADER_LEN:
            header = b"".join(piece[:HANDSHAKE_HEADER_LEN] for piece in pieces[:4])
            body_len = int.from_bytes(header[1:HANDSHAKE_HEADER_LEN], "big")
            if not MIN_HELLO_LEN <= body_len <= MAX_HELLO_LEN:
                return MALFORMED
            wanted = HANDSHAKE_HEADER_LEN + body_len
        if have >= wanted:
            return b"".join(pieces)[HANDSHAKE_HEADER_LEN:wanted]
        if end > total:
            rest = wanted - have - (end - total)  # still wanted after this record's end
            return need_more(end + (RECORD_HEADER_LEN + rest if rest > 0 else 0))
        at = end


def _could_be_record(head: memoryview) -> bool:
    """Whether up to 3 bytes can start a handshake record: content type, major version."""
    return (not head or head[0] == CONTENT_HANDSHAKE) and (len(head) < 2 or head[1] == TLS_MAJOR)


def _read_hello(body: bytes) -> NameResult:
    """The fields of a whole ClientHello body (at least MIN_HELLO_LEN bytes) up to its
    extensions, every length checked against the body's end."""
    end = len(body)
    if body[0] != TLS_MAJOR:
        return MALFORMED
    at = 2 + RANDOM_LEN
    session_id = body[at]
    at += 1 + session_id
    if session_id > MAX_SESSION_ID_LEN or at + 2 > end:
        return MALFORMED
    suites = body[at] << 8 | body[at + 1]
    at += 2 + suites
    if suites < 2 or suites % 2 or at + 1 > end:
        return MALFORMED
    methods = body[at]
    at += 1 + methods
    if methods < 1 or at > end:
        return MALFORMED
    if at == end:
        return complete(None)  # no extensions at all (SSL 3.0 and TLS 1.0 allow it)
    if at + 2 > end or at + 2 + (body[at] << 8 | body[at + 1]) != end:
        return MALFORMED
    return _read_extensions(body, at + 2, end)


def _read_extensions(body: bytes, at: int, end: int) -> NameResult:
    seen: set[int] = set()
    name: str | None = None
    while at < end:
        if at + 4 > end:
            return MALFORMED
        kind = body[at] << 8 | body[at + 1]
        length = body[at + 2] << 8 | body[at + 3]
        at += 4
        if at + length > end or kind in seen:
            return MALFORMED
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            name = _host_name(body[at : at + length])
            if name is None:
                return MALFORMED
        at += length
    return complete(name, ech=EXT_ENCRYPTED_CLIENT_HELLO in seen)


def _host_name(data: bytes) -> str | None:
    """The one host_name of a server_name extension (RFC 6066 §3), or None when the extension
    is anything else: another name type, a second entry, lengths that do not fill it exactly."""
    if len(data) < 5 or data[0] << 8 | data[1] != len(data) - 2:
        return None
    if data[2] != NAME_TYPE_HOST_NAME or data[3] << 8 | data[4] != len(data) - 5:
        return None
    return normalise(data[5:])
