"""The host the HTTP/1.x request that opens a client's byte stream is for.

Why so little of HTTP: a name policy needs the first request's host, nothing else, and must
never raise on what a client sends. The request line is checked byte by byte as it arrives, so
a stream that cannot be HTTP/1.x (TLS, SSH, HTTP/2's preface, binary) is OTHER_PROTOCOL at its
first impossible byte; the host is decided only once the header block has ended, since a second
Host line further on would change the answer.

The host is where the server will send the request (RFC 9112 §3.2): the authority of an
absolute-form target (`GET http://example.com/ HTTP/1.1`, which a server must prefer to Host)
or of CONNECT's authority-form target, else the Host header's value; the port and any userinfo
are dropped; an IPv6 literal is returned without brackets in its compressed form; None when there
is no host at all (HTTP/1.0 without Host, or an empty Host). Line ends may be CRLF or a bare LF,
and empty lines before the request line are skipped, as RFC 9112 §2.2 lets servers do.

MALFORMED, as a strict server would refuse it with a 400: a header line that is not
`token:value`, obsolete line folding, a bare CR or a NUL, Host twice, a host that is not a name
(hostname.py), a port that is not digits, and a request whose header block has not ended within
`max_bytes` (the caller's bound; 8 KiB by default, the size many servers allow).
"""

from __future__ import annotations

import ipaddress
import re

from appliance.names.hostname import normalise
from appliance.names.result import MALFORMED, OTHER_PROTOCOL, NameResult, complete, need_more

DEFAULT_MAX_BYTES = 8192
MAX_METHOD_LEN = 32  # the longest registered method is 17 characters
TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VISIBLE = bytes(range(0x21, 0x7F))  # a request target is visible ASCII, no spaces
VERSION_LEN = len(b"HTTP/1.1")
ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")  # RFC 3986 §3.1: scheme "://"
AUTHORITY_END = re.compile(rb"[/?#]")
# A field value may hold visible characters, spaces, tabs and obs-text; never a bare CR, a NUL or
# another control (RFC 9110 §5.5).
FIELD_VALUE = bytes(b for b in range(256) if b == 0x09 or 0x20 <= b != 0x7F)

NOT_HTTP = OTHER_PROTOCOL

Bytes = bytes | bytearray | memoryview


def parse_request_host(data: Bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> NameResult:
    """What the start of a client's stream says, read as an HTTP/1.x request (module doc):
    NEED_MORE, NOT_HTTP, MALFORMED, or COMPLETE with the host or None. Only the first
    `max_bytes` bytes are looked at."""
    head = bytes(memoryview(data).cast("B")[:max_bytes])
    at = 0
    while head.startswith(b"\n", at) or head.startswith(b"\r\n", at):
        at = head.index(b"\n", at) + 1
    line_end = head.find(b"\n", at)
    whole = line_end >= 0
    line = head[at:line_end].removesuffix(b"\r") if whole else head[at:]
    request = _request_line(line, whole)
    if request is None:
        return NOT_HTTP if whole or line != b"\r" else _wait(head, max_bytes)
    if not whole:
        return _wait(head, max_bytes)
    host = _host_header(head, line_end + 1, max_bytes)
    if isinstance(host, NameResult):
        return host
    method, target = request
    if method == b"CONNECT":
        return _named(_host_of(target))
    if target[:1] != b"/" and ABSOLUTE_FORM.match(target):
        authority = AUTHORITY_END.split(target.split(b"://", 1)[1], maxsplit=1)[0]
        return _named(_host_of(authority.rpartition(b"@")[2]))
    return _named(_host_of(host)) if host else complete(None)


def _request_line(line: bytes, whole: bool) -> tuple[bytes, bytes] | None:
    """(method, target) of a request line (without its line end), or None when it cannot be
    one. For a line still arriving (`whole` false) the bytes so far need only be a prefix of
    one, and what it returns is not to be used."""
    method, space, rest = line.partition(b" ")
    if len(method) > MAX_METHOD_LEN or method.translate(None, TOKEN):
        return None
    if not space:
        return None if whole else (method, b"")
    target, space, version = rest.partition(b" ")
    if not method or target.translate(None, VISIBLE):
        return None
    if not space:
        return None if whole else (method, target)
    if not target or not _could_be_version(version, whole):
        return None
    return method, target


def _could_be_version(version: bytes, whole: bool) -> bool:
    """Whether `version` is HTTP/1.x, or for a line still arriving a prefix of it (with the
    CR of its line end)."""
    if not whole:
        if len(version) < VERSION_LEN:
            return b"HTTP/1."[: len(version)] == version
        version, cr = version[:VERSION_LEN], version[VERSION_LEN:]
        if cr not in (b"", b"\r"):
            return False
    return len(version) == VERSION_LEN and version.startswith(b"HTTP/1.") and version[-1:].isdigit()


def _host_header(head: bytes, at: int, max_bytes: int) -> bytes | NameResult | None:
    """The Host value of the header lines from `at` (None without one), or NEED_MORE while the
    header block has not ended, or MALFORMED."""
    host: bytes | None = None
    while True:
        line_end = head.find(b"\n", at)
        if line_end < 0:
            return _wait(head, max_bytes)
        line = head[at:line_end].removesuffix(b"\r")
        at = line_end + 1
        if not line:
            return host
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, TOKEN):
            return MALFORMED  # a folded line too: it starts with a space, which no token has
        if value.translate(None, FIELD_VALUE):
            return MALFORMED
        if name.lower() == b"host":
            if host is not None:
                return MALFORMED
            host = value.strip(b" \t")


def _host_of(authority: bytes) -> str | None:
    """The host of `host[:port]` or `[IPv6]:port`, or None when it is not one."""
    if authority.startswith(b"["):
        literal, bracket, port = authority[1:].partition(b"]")
        host = _ipv6(literal) if bracket else None
    else:
        name, colon, digits = authority.partition(b":")
        host, port = normalise(name), colon + digits
    if port and not (port[:1] == b":" and (len(port) == 1 or port[1:].isdigit())):
        return None  # RFC 3986: port = *DIGIT
    return host


def _ipv6(literal: bytes) -> str | None:
    if b"%" in literal:
        return None  # a zone identifier means nothing to another host
    try:
        return ipaddress.IPv6Address(literal.decode("ascii")).compressed
    except ValueError:  # UnicodeDecodeError is one
        return None


def _named(host: str | None) -> NameResult:
    return MALFORMED if host is None else complete(host)


def _wait(head: bytes, max_bytes: int) -> NameResult:
    """NEED_MORE while the bound allows it; a request that outgrows it is MALFORMED."""
    return need_more(len(head) + 1) if len(head) < max_bytes else MALFORMED
