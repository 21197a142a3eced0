"""Packets the appliance writes in a denied name's place: a DNS response to a refused query, and
a TCP reset toward the server of a refused TLS or HTTP flow.

Why: a client whose query or connection is simply dropped waits for its timeout (5 s a DNS try,
tens of seconds for TCP). A refused DNS query is answered at once with REFUSED or NXDOMAIN
(appliance/names/dns.py builds the message); a refused TLS or HTTP flow gets a reset both ways:
reject.py answers the client, and `reset_toward_server` ends the server's half-open connection
so that it does not hold it until its own timeout.

Both leave through GWLB in the flow's own Geneve header (byte-identical, as every reply): the DNS
answer goes back toward the client as any reject does; the server's reset goes on in the packet's
own direction, as a passed packet would, so GWLB delivers it to the server. The inner headers
are written fresh (IPv4 without options, IPv6 without extension headers), every length and
checksum computed.
"""

from __future__ import annotations

import struct

from appliance.checksum import Buffer, finish, ones_sum
from appliance.inner import PROTO_TCP, PROTO_UDP, InnerPacket
from appliance.reject import HOP_LIMIT, TCP_ACK, TCP_RST

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_PORTS = struct.Struct("!HH")
_SEQ_ACK = struct.Struct("!II")
_DF = 0x4000


def _addresses(buf: Buffer, pkt: InnerPacket) -> tuple[bytes, bytes]:
    if pkt.version == 4:
        return bytes(buf[pkt.start + 12 : pkt.start + 16]), bytes(
            buf[pkt.start + 16 : pkt.start + 20]
        )
    return bytes(buf[pkt.start + 8 : pkt.start + 24]), bytes(buf[pkt.start + 24 : pkt.start + 40])


def _ip_header(version: int, src: bytes, dst: bytes, protocol: int, length: int) -> bytes:
    """A fresh inner IP header for `length` bytes of transport header and payload."""
    if version == 4:
        total = 20 + length
        head = _IPV4.pack(0x45, 0, total, 0, _DF, HOP_LIMIT, protocol, 0, src, dst)
        return head[:10] + struct.pack("!H", finish(ones_sum(head))) + head[12:]
    return _IPV6.pack(0x60000000, length, protocol, HOP_LIMIT, src, dst)


def _pseudo(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """The pseudo-header's sum, IPv4's (RFC 768) and IPv6's (RFC 8200 §8.1) alike for a
    length under 2**16."""
    return ones_sum(src) + ones_sum(dst) + protocol + length


def write_dns_answer(
    buf: bytearray, start: int, pkt: InnerPacket, answer: bytes, room: int
) -> int | None:
    """Turn the UDP DNS query at buf[start:pkt.end] (its Geneve header, then `pkt`) into
    `answer` sent back to the client, in place; return the datagram's new end, or None when it
    would not fit in `room` bytes from `start`."""
    client, server = _addresses(buf, pkt)
    client_port, server_port = _PORTS.unpack_from(buf, pkt.l4)
    udp_length = 8 + len(answer)
    header = _ip_header(pkt.version, server, client, PROTO_UDP, udp_length)
    end = pkt.start + len(header) + udp_length
    if end - start > room:
        return None
    udp = _UDP.pack(server_port, client_port, udp_length, 0)
    total = _pseudo(server, client, PROTO_UDP, udp_length) + ones_sum(udp + answer)
    checksum = finish(total) or 0xFFFF  # RFC 768: a computed zero is sent as all ones
    buf[pkt.start : end] = header + udp[:6] + struct.pack("!H", checksum) + answer
    return end


def reset_toward_server(buf: Buffer, start: int, pkt: InnerPacket, seq: int) -> bytes:
    """The Geneve datagram that ends the server's side of the client's TCP packet `pkt` (at
    buf[start:pkt.end]): a RST with the client's addresses and ports, sequence number `seq` (the
    next the server expects: the first byte it has not received), and ACK as the client's."""
    client, server = _addresses(buf, pkt)
    client_port, server_port = _PORTS.unpack_from(buf, pkt.l4)
    _, ack = _SEQ_ACK.unpack_from(buf, pkt.l4 + 4)
    flags = TCP_RST | (TCP_ACK if buf[pkt.l4 + 13] & TCP_ACK else 0)
    segment = _TCP.pack(
        client_port,
        server_port,
        seq & 0xFFFFFFFF,
        ack if flags & TCP_ACK else 0,
        5 << 4,
        flags,
        0,
        0,
        0,
    )
    total = _pseudo(client, server, PROTO_TCP, len(segment)) + ones_sum(segment)
    segment = segment[:16] + struct.pack("!H", finish(total)) + segment[18:]
    header = _ip_header(pkt.version, client, server, PROTO_TCP, len(segment))
    return bytes(buf[start : pkt.start]) + header + segment
