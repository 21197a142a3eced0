"""The worker's two sockets: a reuseport UDP socket on 6081 to receive, a raw socket to reply.

Something must be bound to 6081 or the kernel answers every GWLB packet with ICMP port unreachable;
the replies go out through IPPROTO_RAW so we choose the outer header ourselves (ports not swapped,
source = the address the packet came to).
"""

from __future__ import annotations

import socket
import struct

from appliance.errors import BootError

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux's value; Python does not name it
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def open_data_socket(
    bind: str, port: int, receive_buffer_bytes: int, wait_s: float = 1.0
) -> socket.socket:
    """A UDP socket in the port's reuseport group, with IP_PKTINFO, the kernel's count of the
    datagrams it dropped (SO_RXQ_OVFL: a full receive buffer) and a bounded receive wait."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, receive_buffer_bytes)
        seconds = int(wait_s)
        timeval = struct.pack("@ll", seconds, int((wait_s - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.bind((bind, port))
    except OSError as error:
        sock.close()
        raise BootError(error.errno, f"cannot bind UDP {bind}:{port}: {error.strerror}") from error
    return sock


def open_raw_socket(send_buffer_bytes: int) -> socket.socket:
    """A raw IPv4 socket for whole packets we build (IPPROTO_RAW implies IP_HDRINCL)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError as error:
        raise BootError(error.errno, "cannot open a raw socket: CAP_NET_RAW is needed") from error
    _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, send_buffer_bytes)
    return sock


def _set_buffer(sock: socket.socket, option: int, force_option: int, size: int) -> None:
    """Set a socket buffer, past net.core.*mem_max when we are allowed to (CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
