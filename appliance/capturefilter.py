"""Capture filters: which packets `appliancectl capture` keeps, in words an operator who knows
tcpdump can write without reading this, compiled once into a predicate over a CaptureView.

Why our own language and not BPF: what an operator asks of a capture here is as much about the
appliance (which GWLB endpoint, what verdict) as about the packet, and the worker already holds
the parsed fields, so a predicate over those fields is all it needs. Compiled to nested closures
(no eval), one call a packet.

Grammar (keywords in any case; addresses are IPv4 or IPv6, as `ipaddress` reads them):

    filter     := <empty> | or_expr
    or_expr    := and_expr (("or" | "||") and_expr)*
    and_expr   := not_expr (("and" | "&&") not_expr)*
    not_expr   := ("not" | "!") not_expr | "(" or_expr ")" | primitive
    primitive  := "host" ADDR                     either address is ADDR
                | ("src" | "dst") ["host"] ADDR    that address is ADDR
                | ["src" | "dst"] "net" CIDR       that (or either) address is in CIDR
                | ["src" | "dst"] "port" N         that (or either) port is N (TCP, UDP)
                | ["src" | "dst"] "portrange" A-B  that (or either) port is in A..B
                | "tcp" | "udp"                    the transport protocol, IPv4 or IPv6
                | "icmp" | "icmp6"                 ICMP over IPv4, ICMPv6 over IPv6
                | "proto" N                        transport protocol number N (0-255)
                | "ip" | "ip6"                     the IP version
                | "endpoint" HEX16                 the GWLB endpoint id, 16 hex digits
                | "verdict" VERDICT                pass, drop, reject, rewrite, unrewritable

`not` binds tightest, then `and`, then `or`: `not tcp and udp or icmp` is
`((not tcp) and udp) or icmp`. As in tcpdump, `tcp`, `udp`, `ip` and `ip6` may qualify the
primitive that follows them directly, which means both must hold: `tcp port 443` is
`(tcp and port 443)`, `ip6 net fd00::/8` is `(ip6 and net fd00::/8)`. An empty filter keeps every
packet. tcpdump's abbreviations (`host a or b` for `host a or host b`) and port names are not
understood. A CIDR with host bits set (`10.1.2.3/8`) is refused, as tcpdump refuses it.

Examples:

    tcp port 443 and not net 10.0.0.0/8
    verdict drop or verdict reject
    endpoint 2b8ee1d4db0c51c4 and (icmp or icmp6)
    src net fd00:a::/32 && dst portrange 8000-8999
    host 10.1.0.5 and !(port 22 || port 53)

A filter that cannot be read raises FilterError (a ValueError) whose one sentence names the
column (from 1) and what was expected there: `column 14: expected a port number after 'port',
found 'http'`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58  # as appliance.inner numbers them
# policy.Verdict's names, lowercased; the worker hands the verdict over as one of these words.
VERDICTS = ("pass", "drop", "reject", "rewrite", "unrewritable")
MAX_FILTER_LEN = 4096  # a filter travels in one control message and is evaluated per packet
MAX_DEPTH = 64  # nested parentheses and `not`s: bounds the parser's recursion and the closures'


class CaptureView(NamedTuple):
    """What a filter may ask of a packet. Addresses are packed bytes (4 for IPv4, 16 for IPv6),
    as they sit in the packet; ports are -1 where the packet has none (not TCP or UDP, or a
    fragment after the first)."""

    version: int  # 4 or 6
    protocol: int  # the transport protocol, after any IPv6 extension headers
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    endpoint: bytes  # the GWLB endpoint id, 8 bytes
    verdict: str  # one of VERDICTS


Predicate = Callable[[CaptureView], bool]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FilterError(ValueError):
    """A filter that cannot be read; `column` counts characters from 1."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"column {column}: {message}")
        self.column = column


def compile_filter(text: str) -> Predicate:
    """The predicate `text` describes (the grammar is in the module docstring)."""
    if len(text) > MAX_FILTER_LEN:
        raise FilterError(
            MAX_FILTER_LEN + 1, f"expected at most {MAX_FILTER_LEN} characters, found {len(text)}"
        )
    parser = _Parser(_tokens(text), len(text) + 1)
    if parser.at_end():
        return _always
    predicate = parser.or_expr()
    if not parser.at_end():
        parser.fail("'and', 'or' or the end of the filter")
    return predicate


def _always(view: CaptureView) -> bool:
    return True


# --- tokens ----------------------------------------------------------------------------------

# An operator, a word (an address, a number, a keyword), or a lone character no word may hold.
_TOKEN = re.compile(r"(&&|\|\||[()!])|([^\s()!&|]+)|(\S)")


class _Token(NamedTuple):
    text: str
    column: int

    @property
    def word(self) -> str:
        return self.text.lower()


def _tokens(text: str) -> list[_Token]:
    return [_Token(m.group(), m.start() + 1) for m in _TOKEN.finditer(text)]


# --- the parser ------------------------------------------------------------------------------

_OR = ("or", "||")
_AND = ("and", "&&")
_NOT = ("not", "!")
_QUALIFIERS = ("tcp", "udp", "ip", "ip6")  # may prefix the next primitive, as in tcpdump
_QUALIFIED = ("host", "src", "dst", "net", "port", "portrange", "proto")
_BARE: dict[str, Predicate] = {  # the primitives that take no value
    "tcp": lambda v: v.protocol == PROTO_TCP,
    "udp": lambda v: v.protocol == PROTO_UDP,
    "icmp": lambda v: v.protocol == PROTO_ICMP and v.version == 4,
    "icmp6": lambda v: v.protocol == PROTO_ICMPV6 and v.version == 6,
    "ip": lambda v: v.version == 4,
    "ip6": lambda v: v.version == 6,
}
_PRIMITIVE_HINT = "a primitive (host, net, port, tcp, endpoint, verdict, ...), 'not' or '('"


class _Parser:
    """Recursive descent over the tokens; each method returns the predicate of what it read."""

    def __init__(self, tokens: Sequence[_Token], end_column: int) -> None:
        self._tokens = tokens
        self._at = 0
        self._end = _Token("", end_column)
        self._depth = 0

    # reading

    def at_end(self) -> bool:
        return self._at == len(self._tokens)

    def _peek(self) -> _Token:
        return self._tokens[self._at] if self._at < len(self._tokens) else self._end

    def _take(self) -> _Token:
        token = self._peek()
        self._at = min(self._at + 1, len(self._tokens))
        return token

    def fail(self, expected: str, after: str = "", why: str = "") -> NoReturn:
        """Raise about the next token: `expected` there (after `after`), found it (`why`)."""
        token = self._peek()
        found = f"'{token.text}'" if token.text else "the end of the filter"
        after = f" after '{after}'" if after else ""
        raise FilterError(token.column, f"expected {expected}{after}, found {found}{why}")

    # expressions

    def or_expr(self) -> Predicate:
        parts = [self._and_expr()]
        while self._peek().word in _OR:
            self._take()
            parts.append(self._and_expr())
        return _any(parts)

    def _and_expr(self) -> Predicate:
        parts = [self._not_expr()]
        while self._peek().word in _AND:
            self._take()
            parts.append(self._not_expr())
        return _all(parts)

    def _not_expr(self) -> Predicate:
        token = self._peek()
        if token.word not in _NOT and token.text != "(":
            return self._primitive()
        if self._depth == MAX_DEPTH:
            self.fail(f"a primitive within {MAX_DEPTH} nested parentheses and 'not's")
        self._depth += 1
        self._take()
        if token.word in _NOT:
            inner = self._not_expr()
            self._depth -= 1
            return lambda v: not inner(v)
        inner = self.or_expr()
        if self._peek().text != ")":
            self.fail(f"')' to close the '(' at column {token.column}")
        self._take()
        self._depth -= 1
        return inner

    # primitives

    def _primitive(self) -> Predicate:
        token = self._peek()
        word = token.word
        if word in _BARE:
            self._take()
            protocol = _BARE[word]
            if word in _QUALIFIERS and self._peek().word in _QUALIFIED:
                return _all([protocol, self._primitive()])
            return protocol
        if word == "host":
            self._take()
            return _addresses(None, self._address("host").packed)
        if word in ("src", "dst"):
            self._take()
            return self._directed(word)
        if word in ("net", "port", "portrange"):
            return self._sided(None)
        if word == "proto":
            self._take()
            if (name := self._peek().word) in _BARE:
                self.fail("a protocol number", "proto", f", a primitive of its own: write '{name}'")
            number = self._number("a protocol number", "proto", 255)
            return lambda v: v.protocol == number
        if word == "endpoint":
            self._take()
            return self._endpoint()
        if word == "verdict":
            self._take()
            return self._verdict()
        self.fail(_PRIMITIVE_HINT)

    def _directed(self, side: str) -> Predicate:
        """What follows `src` or `dst`: [host] ADDR, or net, port, portrange."""
        word = self._peek().word
        if word in ("net", "port", "portrange"):
            return self._sided(side)
        if word == "host":
            self._take()
            return _addresses(side, self._address("host").packed)
        expected = "an address, 'host', 'net', 'port' or 'portrange'"
        return _addresses(side, self._address(side, expected).packed)

    def _sided(self, side: str | None) -> Predicate:
        """net CIDR, port N or portrange A-B, on `side` (None: either side)."""
        word = self._take().word
        if word == "net":
            return _networks(side, self._network())
        if word == "port":
            port = self._number("a port number", "port", 65535)
            return _ports(side, port, port)
        low, high = self._port_range()
        return _ports(side, low, high)

    def _address(
        self, after: str, expected: str = "an IPv4 or IPv6 address"
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            address = ipaddress.ip_address(self._peek().text)
        except ValueError:
            self.fail(expected, after)
        self._take()
        return address

    def _network(self) -> Network:
        text = self._peek().text
        expected = "a network in CIDR form (10.0.0.0/8, fd00::/8)"
        if "/" not in text:
            self.fail(expected, "net")
        try:
            given = ipaddress.ip_interface(text)  # the address as written, and its network
        except ValueError:
            self.fail(expected, "net")
        network = given.network
        if given.ip != network.network_address:
            self.fail(expected, "net", f", which has host bits set (the network is {network})")
        self._take()
        return network

    def _number(self, what: str, after: str, high: int) -> int:
        text = self._peek().text
        if not (text.isascii() and text.isdigit()):
            self.fail(what, after)
        if int(text) > high:
            self.fail(what, after, f", which is above {high}")
        self._take()
        return int(text)

    def _port_range(self) -> tuple[int, int]:
        text = self._peek().text
        expected = "a port range low-high (1024-65535)"
        span = re.fullmatch(r"([0-9]+)-([0-9]+)", text)
        if span is None:
            self.fail(expected, "portrange")
        low, high = int(span.group(1)), int(span.group(2))
        if high > 65535:
            self.fail(expected, "portrange", ", which goes above 65535")
        if low > high:
            self.fail(expected, "portrange", ", which runs downwards")
        self._take()
        return low, high

    def _endpoint(self) -> Predicate:
        text = self._peek().text
        if not re.fullmatch(r"[0-9a-fA-F]{16}", text):
            self.fail("a GWLB endpoint id of 16 hex digits", "endpoint")
        self._take()
        endpoint = bytes.fromhex(text)
        return lambda v: v.endpoint == endpoint

    def _verdict(self) -> Predicate:
        verdict = self._peek().word
        if verdict not in VERDICTS:
            self.fail(f"a verdict ({', '.join(VERDICTS)})", "verdict")
        self._take()
        return lambda v: v.verdict == verdict


# --- the predicates --------------------------------------------------------------------------


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda v: first(v) or second(v)
    chain = tuple(parts)  # a loop, not nested closures: a long `or` chain costs no recursion
    return lambda v: any(p(v) for p in chain)


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda v: first(v) and second(v)
    chain = tuple(parts)
    return lambda v: all(p(v) for p in chain)


def _addresses(side: str | None, packed: bytes) -> Predicate:
    if side == "src":
        return lambda v: v.src == packed
    if side == "dst":
        return lambda v: v.dst == packed
    return lambda v: v.src == packed or v.dst == packed


def _networks(side: str | None, network: Network) -> Predicate:
    size = 4 if network.version == 4 else 16
    mask, first = int(network.netmask), int(network.network_address)

    def holds(address: bytes) -> bool:
        return len(address) == size and int.from_bytes(address, "big") & mask == first

    if side == "src":
        return lambda v: holds(v.src)
    if side == "dst":
        return lambda v: holds(v.dst)
    return lambda v: holds(v.src) or holds(v.dst)


def _ports(side: str | None, low: int, high: int) -> Predicate:
    # low >= 0, so a packet without ports (-1) never matches
    if side == "src":
        return lambda v: low <= v.src_port <= high
    if side == "dst":
        return lambda v: low <= v.dst_port <= high
    return lambda v: low <= v.src_port <= high or low <= v.dst_port <= high
