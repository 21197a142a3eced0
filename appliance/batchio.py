"""Batched datagram I/O: recvmmsg(2) and sendmmsg(2) through ctypes.

Why: system calls dominate a Python data path, and the standard library has no recvmmsg/sendmmsg.
Everything the kernel reads or writes is allocated once: one arena of fixed-size slots (each slot
keeps HEADROOM bytes free in front of the datagram, so the reply's IPv4+UDP header is written in
place and the reply goes out as one contiguous buffer), the sockaddr and control buffers, and the
mmsghdr arrays themselves, which live inside bytearrays so Python reads results with struct instead
of slow ctypes attribute access. A receive waits for the first datagram at most for the socket's
SO_RCVTIMEO, then takes whatever else is queued (MSG_WAITFORONE).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from appliance.reply import HEADER_LEN

HEADROOM = HEADER_LEN  # the reply's IPv4 + UDP header, written in front of the datagram
MAX_DATAGRAM = 9001  # a jumbo-frame MTU's worth: never truncate what GWLB can send
SLOT_BYTES = 9216  # HEADROOM + MAX_DATAGRAM, rounded up; a larger datagram comes back truncated
MSG_WAITFORONE = 0x10000
MSG_TRUNC = 0x20
_NAME_BYTES = 16  # sockaddr_in
_PKTINFO_ADDR = socket.CMSG_LEN(0) + 8  # in_pktinfo: ifindex, spec_dst, then addr
_CONTROL_BYTES = socket.CMSG_SPACE(12)

_libc = ctypes.CDLL(None, use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_MSIZE = ctypes.sizeof(_Mmsghdr)
_IOVSIZE = ctypes.sizeof(_Iovec)
_FLAGS_OFF = _Msghdr.msg_flags.offset
# Where the kernel puts things, for whoever lays out a batch by hand (the profiler): message i's
# (flags, length) at i * MSG_BYTES + RESULT_OFFSET of `headers`, its sender's sockaddr_in at
# i * NAME_BYTES of `names`, the address it was sent to at i * CONTROL_BYTES + PKTINFO_OFFSET.
MSG_BYTES = _MSIZE
RESULT_OFFSET = _FLAGS_OFF
NAME_BYTES = _NAME_BYTES
CONTROL_BYTES = _CONTROL_BYTES
PKTINFO_OFFSET = _PKTINFO_ADDR
_IOVEC = struct.Struct("@PN")  # pointer, size_t
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
# An mmsghdr as size_t words (pointers are size_t wide on Linux): its length and where its
# msg_name and msg_iov pointers are.
MSG_WORDS = _MSIZE // _SIZE_T
NAME_WORD = _Msghdr.msg_name.offset // _SIZE_T
IOV_WORD = _Msghdr.msg_iov.offset // _SIZE_T

_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


_pinned: list[object] = []  # ctypes views that keep the kernel-visible bytearrays from resizing


def _address(buffer: bytearray) -> int:
    view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    _pinned.append(view)  # an exported bytearray cannot be resized: its address stays valid
    return ctypes.addressof(view)


class ReceiveBatch:
    """Up to `size` datagrams per recvmmsg into a reusable arena.

    After `receive()` returns n, datagram i is arena[i * SLOT_BYTES + HEADROOM :][:length], and
    `results(n)`, `senders(n)` and `destinations(n)` read every datagram's (flags, length), sender
    (port, address) and local address (IP_PKTINFO) with one struct call each.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.arena = bytearray(SLOT_BYTES * size)
        self.names = bytearray(_NAME_BYTES * size)
        self.control = bytearray(_CONTROL_BYTES * size)
        self.headers = bytearray(_MSIZE * size)
        self._iovecs = bytearray(_IOVSIZE * size)
        arena, names, control = _address(self.arena), _address(self.names), _address(self.control)
        self.arena_address = arena
        iovecs = _address(self._iovecs)
        msgs = (_Mmsghdr * size).from_buffer(self.headers)
        for i in range(size):
            _IOVEC.pack_into(
                self._iovecs, i * _IOVSIZE, arena + i * SLOT_BYTES + HEADROOM, MAX_DATAGRAM
            )
            hdr = msgs[i].msg_hdr
            hdr.msg_name = names + i * _NAME_BYTES
            hdr.msg_namelen = _NAME_BYTES
            hdr.msg_iov = iovecs + i * _IOVSIZE
            hdr.msg_iovlen = 1
            hdr.msg_control = control + i * _CONTROL_BYTES
            hdr.msg_controllen = _CONTROL_BYTES
        del msgs, hdr  # no exported views may outlive __init__ in Python's hands
        self._pristine = memoryview(bytes(self.headers))
        self._dirty = 0  # bytes of `headers` the kernel may have changed since they were pristine
        self._headers_address = _address(self.headers)
        # One struct per batch size reads a field of every message at once: a call per batch
        # instead of one per datagram (the messages, names and controls are evenly spaced).
        gap = _MSIZE - 12
        self._results = [
            struct.Struct("=i4xI" + f"{gap}xi4xI" * (k - 1)) for k in range(1, size + 1)
        ]
        self._peers = [struct.Struct("!" + "2xHI8x" * k) for k in range(1, size + 1)]
        tail = _CONTROL_BYTES - _PKTINFO_ADDR - 4
        self._locals = [
            struct.Struct("!" + f"{_PKTINFO_ADDR}xI{tail}x" * k) for k in range(1, size + 1)
        ]

    def results(self, n: int) -> tuple[int, ...]:
        """(msg_flags, length) of the first n datagrams, flattened: f0, len0, f1, len1, ..."""
        return self._results[n - 1].unpack_from(self.headers, _FLAGS_OFF)

    def senders(self, n: int) -> tuple[int, ...]:
        """(port, IPv4 address) of the first n senders, flattened, as integers."""
        return self._peers[n - 1].unpack_from(self.names, 0)

    def destinations(self, n: int) -> tuple[int, ...]:
        """The IPv4 address each of the first n datagrams was sent to (IP_PKTINFO), as integers."""
        return self._locals[n - 1].unpack_from(self.control, 0)

    def receive(self, fd: int) -> int:
        """Wait (up to SO_RCVTIMEO) for datagrams; return how many arrived, 0 on timeout/EINTR."""
        dirty = self._dirty  # the kernel overwrote the lengths of the messages it filled
        if dirty:
            self.headers[:dirty] = self._pristine[:dirty]
        count: int = _recvmmsg(fd, self._headers_address, self.size, MSG_WAITFORONE, None)
        # Restoring only what the last call could touch (one message more, to be safe) keeps a
        # large batch cheap when traffic is light.
        self._dirty = min(max(count, 0) + 1, self.size) * _MSIZE
        if count >= 0:
            return count
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EINTR):
            return 0
        raise OSError(code, f"recvmmsg: {errno.errorcode.get(code, code)}")


class SendBatch:
    """Replies for a ReceiveBatch, sent with one sendmmsg on a raw IP_HDRINCL socket.

    Reply i is slot i of the receive arena (the header written into its headroom) addressed to
    the sockaddr the datagram came from (a raw socket ignores the port). Message i points at
    those once and for all, so queueing a reply only writes its length into `lengths` and bumps
    `count`. When a datagram before it got no reply, message j must carry slot i's reply to keep
    the array contiguous: the messages differ only in their msg_name and msg_iov pointers, so the
    caller stores slot i's two pointers (`name_pointers[i]`, `iov_pointers[i]`) into message j's
    words (`words[j * MSG_WORDS + NAME_WORD]`, `... + IOV_WORD`), two item stores instead of a
    call, and sets `moved` to how many leading messages may have changed; `flush` restores them.
    """

    def __init__(self, rx: ReceiveBatch) -> None:
        size = rx.size
        self.count = 0
        self._iovecs = bytearray(_IOVSIZE * size)
        self._headers = bytearray(_MSIZE * size)
        iovecs, names = _address(self._iovecs), _address(rx.names)  # pinned: never resized
        # size_t words ("N": typeshed lists only the fixed-size formats, hence the ignore)
        self._lengths: memoryview = memoryview(self._iovecs).cast("N")  # type: ignore[call-overload]
        msgs = (_Mmsghdr * size).from_buffer(self._headers)
        for i in range(size):
            _IOVEC.pack_into(self._iovecs, i * _IOVSIZE, rx.arena_address + i * SLOT_BYTES, 0)
            hdr = msgs[i].msg_hdr
            hdr.msg_name = names + i * _NAME_BYTES
            hdr.msg_namelen = _NAME_BYTES
            hdr.msg_iov = iovecs + i * _IOVSIZE
            hdr.msg_iovlen = 1
        del msgs, hdr
        self._pristine = memoryview(bytes(self._headers))
        self.moved = 0  # messages up to here may hold another slot's reply (see the class doc)
        self._headers_address = _address(self._headers)
        self.words: memoryview = memoryview(self._headers).cast("N")  # type: ignore[call-overload]
        self.name_pointers = [self.words[i * MSG_WORDS + NAME_WORD] for i in range(size)]
        self.iov_pointers = [self.words[i * MSG_WORDS + IOV_WORD] for i in range(size)]

    @property
    def lengths(self) -> memoryview:
        """The iovec array as size_t words: slot i's reply length is word `length_index(i)`.
        A memoryview item store is the cheapest write Python has: no call, no struct."""
        return self._lengths

    @staticmethod
    def length_index(i: int) -> int:
        return (i * _IOVSIZE + _Iovec.iov_len.offset) // _SIZE_T

    def flush(self, fd: int) -> tuple[int, list[int]]:
        """Send everything queued: (packets sent, errno of each packet that failed)."""
        sent, failures, position, total = 0, [], 0, self.count
        self.count = 0
        while position < total:  # each round moves position by at least one
            done = _sendmmsg(fd, self._headers_address + position * _MSIZE, total - position, 0)
            if done < 0:
                failures.append(ctypes.get_errno())
                position += 1  # skip the packet the kernel refused, keep its neighbours
            else:
                sent += done
                position += done
        moved = self.moved * _MSIZE
        if moved:
            self._headers[:moved] = self._pristine[:moved]
            self.moved = 0
        return sent, failures
