"""A flow waiting for its name: the client's first bytes, put in order and read for the names the
policy's rules ask (TLS server name, HTTP Host, a DNS question over TCP).

Why a flow waits at all: a name is in the client's first bytes, and a verdict by name must be in
place before any of them reaches the server (conditions.NameCondition). So while a rule waits
for a name (policy.decide_flow says PENDING), the worker lets the TCP handshake through both
ways, and the server's bytes (a server that speaks first is answered by its client, whose reply
then shows what it is), but holds back the client's payload: each client segment is read here
and dropped unless it completes what the rules wait for. TCP sends it again, and by then the
flow is decided. A ClientHello or a request in one segment (nearly all) is decided on that
segment, which then goes through at once when the flow passes.

What each kind comes to (conditions.Names): the name; "" for the protocol seen without one (a
ClientHello without server_name, or one that broke TLS's rules: a policy can refuse TLS it
cannot read; a request without Host); None when the flow cannot carry that kind (UDP, or not
port 53 for DNS), when its first bytes are another protocol, or when the client sent
`name_bytes` bytes or `name_packets` segments and still did not show it (the rules are then
asked without it, so the default decides what no other rule does).

Memory: at most `name_bytes` of the client's stream per waiting flow (appliance/names/stream.py),
and only once the client sends; a SYN flood holds nothing here. The worker caps the bytes all
its waiting flows hold together (`HeldBytes`): past the cap a flow is decided without its name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from appliance.conditions import Names
from appliance.inner import PROTO_TCP, PROTO_UDP, InnerPacket
from appliance.names.dns import parse_query, parse_tcp_query
from appliance.names.http import parse_request_host
from appliance.names.result import NameResult, Status
from appliance.names.stream import StreamHead
from appliance.names.tls import parse_client_hello

DNS_PORT = 53
TCP_SYN = 0x02
_SEQ = struct.Struct("!I")

# Each kind's parser of the client's first bytes, and what a broken message counts as.
_PARSERS: dict[str, tuple[Callable[[bytes], NameResult], str | None]] = {
    "tls_sni": (parse_client_hello, ""),  # TLS that breaks the rules: TLS with no usable name
    "http_host": (lambda data: parse_request_host(data, len(data) + 1), ""),
    "dns_name": (parse_tcp_query, None),
}


def possible(kinds: frozenset[str], pkt: InnerPacket) -> dict[str, str | None]:
    """The names a new flow (its first packet `pkt`) starts with: None for each kind of `kinds`
    it cannot carry, nothing (not known yet) for the others."""
    names: dict[str, str | None] = {}
    for kind in kinds:
        if kind == "dns_name":
            carried = pkt.protocol in (PROTO_TCP, PROTO_UDP) and pkt.dst_port == DNS_PORT
        else:
            carried = pkt.protocol == PROTO_TCP
        if not carried:
            names[kind] = None
    return names


def query_names(kinds: frozenset[str], buf: bytes | bytearray, pkt: InnerPacket) -> Names:
    """The names a DNS query over UDP shows (each query is judged by its own): the question, ""
    for a query without one, None when the payload is no DNS query."""
    result = parse_query(bytes(buf[pkt.payload : pkt.end]))
    found: dict[str, str | None] = dict.fromkeys(kinds)
    if result.status is Status.COMPLETE:
        found["dns_name"] = result.name or ""
    return found


class HeldBytes:
    """The bytes every waiting flow of a worker holds, against one cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0


class NameWatch:
    """One waiting flow's client stream and what it has shown so far (module doc)."""

    __slots__ = ("head", "held", "isn", "names", "segments")

    def __init__(self, names: dict[str, str | None]) -> None:
        self.names = names  # conditions.Names: what policy.decide_flow is asked with
        self.head: StreamHead | None = None
        self.isn: int | None = None  # the client's SYN's sequence number, when it was seen
        self.segments = 0  # client segments with payload seen
        self.held = 0  # bytes this flow counts in HeldBytes

    def client_packet(
        self,
        buf: bytes | bytearray,
        pkt: InnerPacket,
        limits: dict[str, int],
        wanted: frozenset[str],
        budget: HeldBytes,
    ) -> bool:
        """Read a client TCP packet; True when it had payload (the caller holds it back unless
        the names it completed decide the flow)."""
        seq = _SEQ.unpack_from(buf, pkt.l4 + 4)[0]
        if buf[pkt.l4 + 13] & TCP_SYN:
            self.isn = seq  # a SYN's own payload (TCP Fast Open) starts at isn + 1
            seq += 1
        if pkt.payload >= pkt.end:
            return False
        limit = limits["name_bytes"]
        if self.head is None:
            start = self.isn if self.isn is not None else (seq - 1) % 2**32
            self.head = StreamHead(start, limit)
        before = self.head.contiguous_len
        self.head.add(seq, buf[pkt.payload : pkt.end])
        self.segments += 1
        grown = self.head.contiguous_len
        budget.held += grown - self.held
        self.held = grown
        if grown > before:
            self._read(self.head.contiguous(), wanted, limit)
        if self.segments >= limits["name_packets"] or budget.held > budget.cap:
            self.give_up(wanted)
        return True

    def _read(self, data: bytes, wanted: frozenset[str], limit: int) -> None:
        for kind in wanted:
            if kind in self.names:
                continue
            parse, broken = _PARSERS[kind]
            result = parse(data)
            if result.status is Status.COMPLETE:
                self.names[kind] = result.name or ""
            elif result.status is Status.MALFORMED:
                self.names[kind] = broken
            elif result.status is Status.OTHER_PROTOCOL or len(data) >= limit:
                self.names[kind] = None

    def give_up(self, wanted: frozenset[str]) -> None:
        """Whatever is not known yet will not be: the rules are asked without it."""
        for kind in wanted:
            self.names.setdefault(kind, None)

    def release(self, budget: HeldBytes) -> None:
        """The flow is decided: its bytes are no longer held."""
        budget.held -= self.held
        self.held = 0
        self.head = None

    def name(self) -> str | None:
        """The name the flow showed, for `appliancectl flows` and flow records."""
        for kind in _PARSERS:
            value = self.names.get(kind)
            if value:
                return value
        return None
