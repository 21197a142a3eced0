"""Flow keys: how a packet names its inner flow, read from the datagram in one struct call.

Why two keys per flow, each in a packet's own byte order: putting the two ends in a canonical order
on every packet costs comparisons and slicing per packet. Instead the flow table files each flow
under its forward key and its reverse key (appliance.flows), so the key a packet's raw bytes give
finds its flow, and which of the two it equals tells the direction.

A key is one bytes object:

    endpoint (8) | protocol (1) | ends

- endpoint: the GWLB endpoint id (Geneve option class 0x0108 type 1); address space may overlap
  across endpoints (DESIGN.md section 1);
- ends, TCP and UDP: source address, destination address, source port, destination port, as on
  the wire (12 bytes over IPv4, 36 over IPv6);
- ends, ICMP and ICMPv6 echo (request or reply): the two addresses, then the identifier, which
  stands for both ports (10 or 34 bytes);
- ends, any other protocol: the two addresses (8 or 32 bytes).
The length of `ends` tells the IP version and the kind. One bytes object rather than the tuple
the struct read gives: measured against a tuple-keyed table of 200,000 flows, building it (two
concatenations) and looking it up costs 28 ns more while the flow is in the CPU cache, 150 ns
less once it is not (one object to fetch instead of a tuple and its parts), and a flow takes
110 bytes less (two 56-byte keys, not two 64-byte tuples with a 48-byte part each). Bytes
rather than integers: CPython hashes bytes with SipHash under a per-process random key, so
nobody can choose addresses and ports whose keys collide in the table's dict (an int hashes to
itself).

GWLB's usual layout (what fastpath.FastPath.classify takes): Geneve with its three options in 40
bytes, the endpoint id at bytes 12..20; then IPv4 without options at +40 (protocol at +49,
addresses at +52, transport at +60) or IPv6 without extension headers at +40 (next header at +46,
addresses at +48, transport at +80). `key_v4` and `key_v6` read a datagram in that layout and check
nothing: call them only on one the fast path accepted. A caller that already knows the protocol
is TCP or UDP saves the dispatch: `endpoint, proto, ends = PORTS_V4(buf, start)`, then
`endpoint + proto + ends`. `flow_key` makes the same key from any parsed packet.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any

from appliance.checksum import Buffer
from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Fragment, InnerPacket

FlowKey = bytes
ENDPOINT_LEN = 8
_HEAD = ENDPOINT_LEN + 1  # endpoint and protocol

# Offsets from the start of the datagram (the Geneve header) in GWLB's usual layout.
TCP_FLAGS_V4 = 60 + 13  # the TCP flags byte: `tcp_flags=buf[start + TCP_FLAGS_V4]`
TCP_FLAGS_V6 = 80 + 13
_PROTO_V4, _TRANSPORT_V4 = 49, 60
_PROTO_V6, _TRANSPORT_V6 = 46, 80

# The parts of a key, in one read each: unpack_from(buf, start) -> (endpoint, protocol, ends) or
# (endpoint, protocol, addresses, identifier), each a bytes object.
PORTS_V4 = struct.Struct("!12x8s29xs2x12s").unpack_from  # TCP, UDP
ECHO_V4 = struct.Struct("!12x8s29xs2x8s4x2s").unpack_from
ADDRESSES_V4 = struct.Struct("!12x8s29xs2x8s").unpack_from
PORTS_V6 = struct.Struct("!12x8s26xsx36s").unpack_from
ECHO_V6 = struct.Struct("!12x8s26xsx32s4x2s").unpack_from
ADDRESSES_V6 = struct.Struct("!12x8s26xsx32s").unpack_from

# A TCP or UDP datagram in the usual layout, in one read: all that proves it well formed
# (fastpath.FastPath.classify makes the same checks) and its key's parts. Fields: Geneve word 0,
# the three option headers with the endpoint id between the first two; then IPv4's version/IHL,
# total length, flags/fragment offset, or IPv6's first word and payload length; the protocol
# (1 byte), the ends (12 or 36 bytes), the UDP length, the TCP data offset and flags bytes. 74 and
# 94 bytes: fewer than any receive slot holds (batch.BatchIO: ROOM).
# Why one read: the worker settles a packet of a passed flow with it, the key and one lookup;
# classify and PORTS_V4 read the same bytes twice and cost 190 ns more a packet (worker.py).
USUAL_V4 = struct.Struct("!I4xI8sI8xI4x" + "BxH2xHxs2x12s" + "H6xBB").unpack_from
USUAL_V6 = struct.Struct("!I4xI8sI8xI4x" + "IHsx36s" + "H6xBB").unpack_from
TCP_BYTE, UDP_BYTE = bytes((PROTO_TCP,)), bytes((PROTO_UDP,))

PORTED = frozenset({PROTO_TCP, PROTO_UDP})
_ECHO_V4_TYPES = (0, 8)
_ECHO_V6_TYPES = (128, 129)
_PORT_PAIR = struct.Struct("!HH")
_ENDS_PORTED = (12, 36)
_ENDS_ECHO = (10, 34)
# A TCP or UDP key by its length: the head, both addresses, both ports (IPv4, IPv6).
_SWAP_PORTED = {_HEAD + 12: struct.Struct("9s4s4s2s2s"), _HEAD + 36: struct.Struct("9s16s16s2s2s")}


def _key_reader(
    proto_at: int,
    transport_at: int,
    icmp: int,
    echo_types: tuple[int, int],
    readers: tuple[Any, Any, Any],
) -> Callable[[Buffer, int], FlowKey]:
    """The key reader of one IP version: the same three cases (ports, echo identifier,
    addresses alone), its own offsets and structs."""
    ports, echo, addresses = readers

    def read(buf: Buffer, start: int) -> FlowKey:
        proto = buf[start + proto_at]
        if proto in PORTED:
            return b"".join(ports(buf, start))
        if proto == icmp and buf[start + transport_at] in echo_types:
            return b"".join(echo(buf, start))
        return b"".join(addresses(buf, start))

    return read


# The key of an IPv4 / IPv6 datagram at `start` in GWLB's usual layout (module doc).
key_v4 = _key_reader(
    _PROTO_V4, _TRANSPORT_V4, PROTO_ICMP, _ECHO_V4_TYPES, (PORTS_V4, ECHO_V4, ADDRESSES_V4)
)
key_v6 = _key_reader(
    _PROTO_V6, _TRANSPORT_V6, PROTO_ICMPV6, _ECHO_V6_TYPES, (PORTS_V6, ECHO_V6, ADDRESSES_V6)
)


def flow_key(buf: Buffer, pkt: InnerPacket, endpoint: bytes) -> FlowKey | None:
    """The key of any parsed inner packet from GWLB endpoint `endpoint` (its 8-byte id): the same
    as key_v4/key_v6 give in the usual layout. None for a fragment after the first: it carries no
    ports, so nothing says which flow it belongs to."""
    if pkt.fragment == Fragment.LATER:
        return None
    if len(endpoint) != ENDPOINT_LEN:
        raise ValueError(f"a GWLB endpoint id is {ENDPOINT_LEN} bytes, not {len(endpoint)}")
    s = pkt.start
    addresses = buf[s + 12 : s + 20] if pkt.version == 4 else buf[s + 8 : s + 40]
    head = bytes(endpoint) + bytes((pkt.protocol,))
    if pkt.src_port >= 0:  # TCP, UDP
        return head + bytes(addresses) + _PORT_PAIR.pack(pkt.src_port, pkt.dst_port)
    if pkt.icmp_seq >= 0:  # an echo request or reply (parse_inner sets the sequence only then)
        return head + bytes(addresses) + bytes(buf[pkt.l4 + 4 : pkt.l4 + 6])
    return head + bytes(addresses)


def tcp_flags(buf: Buffer, pkt: InnerPacket) -> int:
    """The TCP flags byte of a parsed packet (for FlowTable.seen and open); 0 unless TCP."""
    if pkt.protocol == PROTO_TCP and pkt.fragment != Fragment.LATER:
        return buf[pkt.l4 + 13]
    return 0


def reverse_key(key: FlowKey) -> FlowKey:
    """The key the other direction's packets have: the two ends swapped."""
    swap = _SWAP_PORTED.get(len(key))
    if swap is not None:  # TCP, UDP: one struct round trip, 0.15 us against 0.33 in slices
        head, source, destination, source_port, destination_port = swap.unpack(key)
        return swap.pack(head, destination, source, destination_port, source_port)
    head, ends = key[:_HEAD], key[_HEAD:]
    n = len(ends)
    if n in _ENDS_PORTED:
        size = (n - 4) // 2
        return head + ends[size : 2 * size] + ends[:size] + ends[n - 2 :] + ends[n - 4 : n - 2]
    if n in _ENDS_ECHO:
        size = (n - 2) // 2
        return head + ends[size : 2 * size] + ends[:size] + ends[n - 2 :]
    size = n // 2
    return head + ends[size:] + ends[:size]


def describe(key: FlowKey) -> tuple[str, int, str, int | None, str, int | None]:
    """(endpoint as 16 hex digits, protocol, source address, source port, destination address,
    destination port) of `key`, in its own direction; the ports are None for a protocol without
    ports, and both the identifier for an ICMP echo."""
    ends = key[_HEAD:]
    n = len(ends)
    size = 4 if n < 16 else 16
    src, dst = _text(ends[:size]), _text(ends[size : 2 * size])
    sport: int | None = None
    dport: int | None = None
    if n in _ENDS_PORTED:
        sport, dport = _PORT_PAIR.unpack_from(ends, 2 * size)
    elif n in _ENDS_ECHO:
        sport = dport = int.from_bytes(ends[2 * size :], "big")
    return key[:ENDPOINT_LEN].hex(), key[ENDPOINT_LEN], src, sport, dst, dport


def _text(address: bytes) -> str:
    """An address as text. IPv4 by hand: 0.3 us against ipaddress's 1.2 (a flow record holds
    two: appliance/flowlog.py, deploy/bench/flowlog_profile.py)."""
    if len(address) == 4:
        a, b, c, d = address
        return f"{a}.{b}.{c}.{d}"
    return str(ipaddress.IPv6Address(address))


def addresses_of(key: FlowKey) -> tuple[bytes, bytes]:
    """The two addresses of `key`, packed, in its own direction."""
    ends = key[_HEAD:]
    size = 4 if len(ends) < 16 else 16
    return ends[:size], ends[size : 2 * size]
