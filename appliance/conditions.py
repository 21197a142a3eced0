"""Rule conditions: one small class each, registered under the key a config's `match` table uses.

Why classes: a new condition (a name seen in TLS, a DNS question) must be one class and one
registry line, not an edit of the loader, the policy loop and the fast path. Each class
- parses its own config value (`from_config`: a ValueError's text is the reason the loader shows
  with the file, line and key), which is its compile step: lists become frozensets, CIDRs become
  integer ranges, so the per-packet test is a comparison or a set lookup;
- tests a parsed packet (`__call__(buf, pkt, endpoint)`: the buffer, the InnerPacket, the GWLB
  endpoint id's 8 bytes);
- tells the fast path what it narrows (`protocols`, `ports`, `icmp_types`): a packet outside every
  rule's narrowing passes with no rule asked (appliance/fastpath.py); a condition that narrows
  nothing there (addresses, endpoints, flags, payload) only sends more packets to the full path.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, InnerPacket
from appliance.names.match import NameList

PROTOCOL_NAMES = {"icmp": PROTO_ICMP, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmpv6": PROTO_ICMPV6}
PORTED = frozenset({PROTO_TCP, PROTO_UDP})  # transports whose packets carry ports (inner.py)
ICMPS = frozenset({PROTO_ICMP, PROTO_ICMPV6})
MAX_WATCHED_PORTS = 4096  # a wider port condition makes the fast path watch every port
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}

Buffer = bytes | bytearray  # what the worker decides over (its receive arena, or a copy)
Check = Callable[[Buffer, InnerPacket, bytes], bool]
# InnerPacket field positions, for the compiled checks (a tuple index is cheaper than a name)
_VERSION, _START, _SRC_PORT, _DST_PORT, _ICMP_TYPE, _PAYLOAD, _END = 0, 1, 6, 7, 8, 10, 2
_U32 = struct.Struct("!I").unpack_from


class Condition:
    """One test a rule makes of a packet; subclasses register a config key."""

    key: ClassVar[str]
    needs: ClassVar[frozenset[int] | None] = None  # only packets of these protocols can match

    @classmethod
    def from_config(cls, value: Any) -> Condition:
        raise NotImplementedError

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        raise NotImplementedError

    def compile(self) -> Check:
        """The per-packet test as the policy loop calls it. A bound method by default; the
        common conditions return a closure over plain locals and tuple indexes instead: a demo
        drop measured 1.69 us calling the objects, 1.41 us with closures (worker_profile.py,
        64 B; the flat tuples these classes replaced took 1.26 us)."""
        return self.__call__

    needs_endpoint: ClassVar[bool] = False  # the caller must find the endpoint id for it
    # Whether every packet of a flow, either direction, gets the same answer: true of a
    # symmetric test of what a flow is (addresses either side, ports either side, protocol,
    # version, endpoint); false of a test of one packet (its payload, ICMP type, TCP flags) or
    # of one direction (src, dst, src_port, dst_port). A flow is spared per-packet rules whose
    # flow-wide conditions fail for it.
    flow_wide: ClassVar[bool] = False
    per_packet: ClassVar[bool] = False  # only PayloadContains: see Policy (flow rules)

    def protocols(self) -> frozenset[int] | None:
        """The protocols a packet must have to match; None: any."""
        return self.needs

    def ports(self) -> frozenset[int] | None:
        """Ports (either side) a matching packet must have one of; None: any port."""
        return None

    def icmp_types(self) -> frozenset[int] | None:
        return None

    # Conditions compare by kind and compiled value: a reload can tell an unchanged rule.
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted((k, repr(v)) for k, v in vars(self).items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


REGISTRY: dict[str, type[Condition]] = {}


def register(cls: type[Condition]) -> type[Condition]:
    REGISTRY[cls.key] = cls
    return cls


# --- numbers, ports and ranges ---------------------------------------------------------------


def _numbers(value: Any, high: int, ranges: bool) -> frozenset[int]:
    """An integer, a "low-high" range (when `ranges`), or a list of them, as a frozenset."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must not be an empty list")
    found: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= high:
            found.add(item)
            continue
        span = re.fullmatch(r"(\d+)-(\d+)", item) if ranges and isinstance(item, str) else None
        if span is None:
            kinds = 'an integer 0-{0}, a range "low-high"' if ranges else "an integer 0-{0}"
            raise ValueError(f"must be {kinds.format(high)} or a list of them, not {item!r}")
        low, top = int(span.group(1)), int(span.group(2))
        if low > top or top > high:
            raise ValueError(f"range {item!r} must run upwards within 0-{high}")
        found.update(range(low, top + 1))
    return frozenset(found)


def _watched(ports: frozenset[int]) -> frozenset[int] | None:
    return ports if len(ports) <= MAX_WATCHED_PORTS else None


@register
class IpVersion(Condition):
    key = "ip_version"
    flow_wide = True

    def __init__(self, version: int) -> None:
        self.version = version

    @classmethod
    def from_config(cls, value: Any) -> IpVersion:
        if value not in (4, 6) or isinstance(value, bool):
            raise ValueError(f"must be 4 or 6, not {value!r}")
        return cls(value)

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return pkt.version == self.version

    def compile(self) -> Check:
        version = self.version
        return lambda buf, pkt, endpoint: pkt[_VERSION] == version


@register
class Protocol(Condition):
    key = "protocol"
    flow_wide = True

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol

    @classmethod
    def from_config(cls, value: Any) -> Protocol:
        if isinstance(value, str) and value.lower() in PROTOCOL_NAMES:
            return cls(PROTOCOL_NAMES[value.lower()])
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
            return cls(value)
        raise ValueError(f"unknown protocol {value!r} (udp, tcp, icmp, icmpv6 or 0-255)")

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return pkt.protocol == self.protocol

    def protocols(self) -> frozenset[int] | None:
        return frozenset({self.protocol})


class _PortCondition(Condition):
    needs = PORTED

    def __init__(self, ports: Iterable[int]) -> None:
        self.set = frozenset(ports)

    @classmethod
    def from_config(cls, value: Any) -> Condition:
        return cls(_numbers(value, 65535, ranges=True))

    def ports(self) -> frozenset[int] | None:
        return _watched(self.set)


@register
class Port(_PortCondition):
    key = "port"  # either side
    flow_wide = True

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return pkt.src_port in self.set or pkt.dst_port in self.set

    def compile(self) -> Check:
        ports = self.set
        return lambda buf, pkt, endpoint: pkt[_SRC_PORT] in ports or pkt[_DST_PORT] in ports


@register
class SrcPort(_PortCondition):
    key = "src_port"

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return pkt.src_port in self.set

    def compile(self) -> Check:
        ports = self.set
        return lambda buf, pkt, endpoint: pkt[_SRC_PORT] in ports


@register
class DstPort(_PortCondition):
    key = "dst_port"

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return pkt.dst_port in self.set

    def compile(self) -> Check:
        ports = self.set
        return lambda buf, pkt, endpoint: pkt[_DST_PORT] in ports


@register
class IcmpType(Condition):
    key = "icmp_type"
    needs = ICMPS

    def __init__(self, types: Iterable[int]) -> None:
        self.set = frozenset(types)

    @classmethod
    def from_config(cls, value: Any) -> IcmpType:
        return cls(_numbers(value, 255, ranges=False))

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return pkt.icmp_type in self.set

    def compile(self) -> Check:
        types = self.set
        return lambda buf, pkt, endpoint: pkt[_ICMP_TYPE] in types

    def icmp_types(self) -> frozenset[int] | None:
        return self.set


@register
class PayloadContains(Condition):
    key = "payload_contains"
    per_packet = True  # a rule with it acts on packets, never decides a flow

    def __init__(self, needle: bytes) -> None:
        self.needle = needle

    @classmethod
    def from_config(cls, value: Any) -> PayloadContains:
        if not isinstance(value, str) or not value:
            raise ValueError("must be a non-empty string")
        return cls(value.encode())

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return buf.find(self.needle, pkt.payload, pkt.end) >= 0

    def compile(self) -> Check:
        needle = self.needle
        return lambda buf, pkt, endpoint: buf.find(needle, pkt[_PAYLOAD], pkt[_END]) >= 0


# --- addresses -------------------------------------------------------------------------------


class _Networks:
    """IPv4 and IPv6 networks as sorted, disjoint (first, last) integer ranges, one list per
    version: overlapping and adjacent networks are merged once, at load, so a packet's address
    is found with one binary search however long the list (a blocklist of thousands)."""

    def __init__(self, value: Any) -> None:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("must not be an empty list")
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for item in items:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except (ValueError, TypeError):
                raise ValueError(f"not an IPv4 or IPv6 network in CIDR form: {item!r}") from None
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self.v4 = _merged(spans[4])
        self.v6 = _merged(spans[6])
        self._firsts = {4: tuple(f for f, _ in self.v4), 6: tuple(f for f, _ in self.v6)}
        self._spans = {4: self.v4, 6: self.v6}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Networks) and (self.v4, self.v6) == (other.v4, other.v6)

    def __hash__(self) -> int:
        return hash((self.v4, self.v6))

    def __repr__(self) -> str:
        return f"_Networks(v4={self.v4}, v6={self.v6})"

    def holds(self, version: int, address: int) -> bool:
        at = bisect_right(self._firsts[version], address) - 1  # the last range starting <= it
        return at >= 0 and address <= self._spans[version][at][1]

    def check(self, v4_at: int, v6_at: int) -> Check:
        """`holds` for the address at `v4_at` (IPv4) or `v6_at` (IPv6) bytes into a packet, as
        one closure over plain values: the IPv4 address is one struct read rather than a slice
        and int.from_bytes, one IPv4 range (a rule's usual single network) two comparisons
        rather than a search, and a version without networks answers at once. A `dst` of one
        IPv4 and one IPv6 network measured 0.52 us a packet as `Dst.__call__`, 0.24 us so
        (firewall_profile.py's SYNs, one in four IPv6, the timing loop included)."""
        firsts4, lasts4 = self._firsts[4], tuple(last for _, last in self.v4)
        firsts6, lasts6 = self._firsts[6], tuple(last for _, last in self.v6)
        low4, high4 = self.v4[0] if len(self.v4) == 1 else (1, 0)
        single4 = len(self.v4) == 1
        u32, bisect = _U32, bisect_right

        def holds(buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
            if pkt[_VERSION] == 4:
                address: int = u32(buf, pkt[_START] + v4_at)[0]
                if single4:
                    return low4 <= address <= high4
                if not firsts4:
                    return False
                at = bisect(firsts4, address)  # one past the last range starting <= it
                return at > 0 and address <= lasts4[at - 1]
            if not firsts6:
                return False
            at = pkt[_START] + v6_at
            address = int.from_bytes(buf[at : at + 16], "big")
            at = bisect(firsts6, address)
            return at > 0 and address <= lasts6[at - 1]

        return holds


def _merged(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def _source(buf: Buffer, pkt: InnerPacket) -> int:
    at = pkt.start + (12 if pkt.version == 4 else 8)
    return int.from_bytes(buf[at : at + (4 if pkt.version == 4 else 16)], "big")


def _destination(buf: Buffer, pkt: InnerPacket) -> int:
    at = pkt.start + (16 if pkt.version == 4 else 24)
    return int.from_bytes(buf[at : at + (4 if pkt.version == 4 else 16)], "big")


class _AddressCondition(Condition):
    def __init__(self, networks: _Networks) -> None:
        self.networks = networks

    @classmethod
    def from_config(cls, value: Any) -> Condition:
        return cls(_Networks(value))


@register
class Src(_AddressCondition):
    key = "src"

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return self.networks.holds(pkt.version, _source(buf, pkt))

    def compile(self) -> Check:
        return self.networks.check(12, 8)


@register
class Dst(_AddressCondition):
    key = "dst"

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return self.networks.holds(pkt.version, _destination(buf, pkt))

    def compile(self) -> Check:
        return self.networks.check(16, 24)


@register
class Addr(_AddressCondition):
    key = "addr"  # either side
    flow_wide = True

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        holds, version = self.networks.holds, pkt.version
        return holds(version, _source(buf, pkt)) or holds(version, _destination(buf, pkt))

    def compile(self) -> Check:
        source, destination = self.networks.check(12, 8), self.networks.check(16, 24)
        return lambda buf, pkt, endpoint: source(buf, pkt, b"") or destination(buf, pkt, b"")


# --- TCP flags and GWLB endpoints ------------------------------------------------------------


@register
class TcpFlags(Condition):
    """`tcp_flags = "syn"`: a SYN without ACK (a new connection); or a list of flag names that
    must all be set (`["fin", "ack"]`), with "syn" keeping its no-ACK meaning."""

    key = "tcp_flags"
    needs = frozenset({PROTO_TCP})

    def __init__(self, required: int, forbidden: int) -> None:
        self.required, self.forbidden = required, forbidden

    @classmethod
    def from_config(cls, value: Any) -> TcpFlags:
        names = value if isinstance(value, list) else [value]
        required = forbidden = 0
        for name in names:
            if not isinstance(name, str) or name.lower() not in TCP_FLAGS:
                known = ", ".join(TCP_FLAGS)
                raise ValueError(f"unknown TCP flag {name!r} (known: {known})")
            required |= TCP_FLAGS[name.lower()]
        if required == TCP_FLAGS["syn"]:
            forbidden = TCP_FLAGS["ack"]  # "syn" alone means the opening SYN, not its SYN-ACK
        return cls(required, forbidden)

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        if pkt.protocol != PROTO_TCP or pkt.src_port < 0:
            return False
        flags = buf[pkt.l4 + 13]
        return flags & self.required == self.required and not flags & self.forbidden


@register
class Endpoint(Condition):
    """GWLB endpoint ids (Geneve option type 1), as AWS's tunnel handler writes them: 16 hex
    digits, e.g. "2b8ee1d4db0c51c4"."""

    key = "endpoint"
    needs_endpoint = True
    flow_wide = True

    def __init__(self, ids: Iterable[bytes]) -> None:
        self.ids = frozenset(ids)

    @classmethod
    def from_config(cls, value: Any) -> Endpoint:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("must not be an empty list")
        ids = []
        for item in items:
            if not isinstance(item, str) or not re.fullmatch(r"[0-9a-fA-F]{16}", item):
                raise ValueError(f"an endpoint id is 16 hex digits, not {item!r}")
            ids.append(bytes.fromhex(item))
        return cls(ids)

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return endpoint in self.ids


# --- names a flow shows (appliance/nameflow.py finds them) --------------------------------------

# What a flow has shown of each kind of name, in a Names mapping: a kind missing is not known
# yet (the flow waits for it); None: the flow cannot or did not carry it (not TLS, not HTTP, no
# DNS question, or the bound was reached first); "" the protocol without a name (a ClientHello
# without server_name, a request without Host); else the name, normalised (names/hostname.py).
Names = Mapping[str, "str | None"]
NAMELESS = ""  # in a config list: the protocol seen without a name ("TLS with no SNI")


class NameCondition(Condition):
    """A name from the flow's first bytes in a list of names (exact, or `*.` and any subdomain):
    `tls_sni`, `http_host`, `dns_name`. A packet alone says nothing about it (`__call__` is
    False: a later fragment, judged alone, matches no name rule); the policy asks `matches`
    with what the flow has shown. `""` in the list matches the protocol seen without a name."""

    flow_wide = True

    def __init__(self, names: NameList, nameless: bool) -> None:
        self.names, self.nameless = names, nameless

    @classmethod
    def from_config(cls, value: Any) -> NameCondition:
        items = value if isinstance(value, list) else [value]
        named = [item for item in items if item != NAMELESS]
        nameless = len(named) < len(items)
        if not named and not nameless:
            raise ValueError('must list names, such as ["github.com", "*.example.com"]')
        return cls(NameList.from_config(named) if named else NameList(), nameless)

    def matches(self, name: str | None) -> bool:
        if name is None:
            return False
        return self.nameless if name == NAMELESS else self.names.matches(name)

    def __call__(self, buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> bool:
        return False


@register
class TlsSni(NameCondition):
    key = "tls_sni"  # the server name of the ClientHello (with ECH, the outer, public one)
    needs = frozenset({PROTO_TCP})


@register
class HttpHost(NameCondition):
    key = "http_host"  # the Host of the first HTTP/1.x request
    needs = frozenset({PROTO_TCP})


@register
class DnsName(NameCondition):
    key = "dns_name"  # the question of a DNS query to port 53 (UDP: each query; TCP: the first)
    needs = PORTED


NAME_KEYS = tuple(kind.key for kind in (TlsSni, HttpHost, DnsName))


def contradiction(conditions: Iterable[Condition]) -> tuple[str, str] | None:
    """(the key, why) of the first condition that can never hold together with the ones before
    it (a rule that never matches is a mistake: `protocol = "icmp"` with a port, say), or None."""
    allowed: frozenset[int] | None = None
    for condition in conditions:
        narrowed = condition.protocols()
        if narrowed is None:
            continue
        if allowed is not None and not allowed & narrowed:
            names = " or ".join(_protocol_name(p) for p in sorted(narrowed))
            return (
                condition.key,
                f"needs protocol {names}, which the rule's other conditions rule out",
            )
        allowed = narrowed if allowed is None else allowed & narrowed
    return None


def _protocol_name(number: int) -> str:
    names = {v: k for k, v in PROTOCOL_NAMES.items()}
    return names.get(number, str(number))
