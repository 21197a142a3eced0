"""Batched datagram I/O: recvmmsg(2) and sendmmsg(2) through ctypes, the worker's socket backend.

Why: system calls dominate a Python data path, and the standard library has no recvmmsg/sendmmsg.
Everything the kernel reads or writes is allocated once: one arena of fixed-size slots (each slot
keeps HEADROOM bytes free in front of the datagram, so the reply's IPv4+UDP header is written in
place and the reply goes out as one contiguous buffer), the sockaddr and control buffers, and the
mmsghdr arrays themselves, which live inside bytearrays so Python reads results with struct instead
of slow ctypes attribute access. A receive waits for the first datagram at most for the socket's
SO_RCVTIMEO, then takes whatever else is queued (MSG_WAITFORONE).

Why the control buffers move under us: the data socket asks for two control messages (sockets.py),
IP_PKTINFO (the address a datagram came to, the reply's source) and SO_RXQ_OVFL (how many
datagrams the socket has dropped, nearly all for a full receive buffer). The kernel writes
SO_RXQ_OVFL first, and only once the count is not zero: a datagram queued before the socket's
first drop has IP_PKTINFO at the start of its control buffer, every one queued after has it behind
the count. The count is read once per batch, from the batch's last datagram (the latest count: it
is sampled when a datagram is queued), and with it where IP_PKTINFO lies in the whole batch; only
the one batch in a socket's life that holds both kinds (and one after each 2**32 drops) has its
odd ones lined up, datagram by datagram.

`SocketBatchIO` puts the two halves (`ReceiveBatch`, `SendBatch`) behind appliance.batch.BatchIO,
the seam the worker loop talks to. Each batch object keeps the ctypes views that give the kernel
its buffers' addresses (an exported bytearray cannot be resized, so the addresses stay valid); they
go with it.
"""

from __future__ import annotations

import array
import ctypes
import errno
import socket
import struct
import sys
from itertools import compress

from appliance.batch import NO_REPLY, ROOM, TRUNCATED
from appliance.geneve import GENEVE_PORT
from appliance.reply import DONT_FRAGMENT, HEADER, HEADER_LEN, TTL_PROTOCOL, VERSION_IHL_TOS
from appliance.sockets import IP_PKTINFO, SO_RXQ_OVFL

HEADROOM = HEADER_LEN  # the reply's IPv4 + UDP header, written in front of the datagram
MAX_DATAGRAM = ROOM  # a jumbo-frame MTU's worth: never truncate what GWLB can send
SLOT_BYTES = 9216  # HEADROOM + MAX_DATAGRAM, rounded up; a larger datagram comes back truncated
assert HEADROOM + MAX_DATAGRAM <= SLOT_BYTES
MSG_WAITFORONE = 0x10000
MSG_TRUNC = 0x20
assert MSG_TRUNC == TRUNCATED  # the kernel's msg_flags go to the loop as they are
_NAME_BYTES = 16  # sockaddr_in
_CMSG_HEADER = socket.CMSG_LEN(0)  # cmsg_len (size_t), cmsg_level, cmsg_type
_COUNT_SPACE = socket.CMSG_SPACE(4)  # SO_RXQ_OVFL's u32: the socket's drops so far
_PKTINFO_ADDR = _CMSG_HEADER + 8  # in_pktinfo: ifindex, spec_dst, then addr
_CONTROL_BYTES = _COUNT_SPACE + socket.CMSG_SPACE(12)  # room for both (module doc)

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
# i * NAME_BYTES of `names`, the address it was sent to at i * CONTROL_BYTES + PKTINFO_OFFSET
# (where the kernel puts it while the socket has dropped nothing: the module doc).
MSG_BYTES = _MSIZE
RESULT_OFFSET = _FLAGS_OFF
NAME_BYTES = _NAME_BYTES
CONTROL_BYTES = _CONTROL_BYTES
PKTINFO_OFFSET = _PKTINFO_ADDR
_IOVEC = struct.Struct("@PN")  # pointer, size_t
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
# An mmsghdr as size_t words (pointers are size_t wide on Linux): its length and where its
# msg_name and msg_iov pointers are.
_MSG_WORDS = _MSIZE // _SIZE_T
_NAME_WORD = _Msghdr.msg_name.offset // _SIZE_T
_IOV_WORD = _Msghdr.msg_iov.offset // _SIZE_T
_IOV_LEN_WORD = _Iovec.iov_len.offset // _SIZE_T
_IOV_WORDS = _IOVSIZE // _SIZE_T
# The reply header's variable fields (reply.py: byte offsets in a slot), and where their sources
# are as 4-byte words: the sender's sin_addr is word 1 of its sockaddr_in, sin_port 16-bit item 1.
_TOTAL_LENGTH_AT, _SOURCE_AT, _PORT_AT, _UDP_LENGTH_AT = 2, 12, 20, 24
_NAME_WORDS = _NAME_BYTES // 4
_CONTROL_WORDS = _CONTROL_BYTES // 4
_PKTINFO_WORD = _PKTINFO_ADDR // 4
_PKTINFO_COUNTED_WORD = (_COUNT_SPACE + _PKTINFO_ADDR) // 4  # behind SO_RXQ_OVFL's count
_TYPE_WORD = (_CMSG_HEADER - 4) // 4  # the first control message's cmsg_type
_COUNT_WORD = _CMSG_HEADER // 4  # SO_RXQ_OVFL's count, when it is the first
_COUNT_MODULUS = 1 << 32  # the kernel's count is a u32
# A 16-bit value in network byte order as the native-order item that stores it: a list index
# is cheaper than a struct call or the shifts. Every length a slot can hold is in it.
_BIG_ENDIAN = [int.from_bytes(x.to_bytes(2, "big"), sys.byteorder) for x in range(SLOT_BYTES)]

_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


def _address(buffer: bytearray, views: list[object]) -> int:
    """The address of `buffer`'s bytes, pinned for as long as `views` (its owner's) lives."""
    view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    views.append(view)  # an exported bytearray cannot be resized: its address stays valid
    return ctypes.addressof(view)


class ReceiveBatch:
    """Up to `size` datagrams per recvmmsg into a reusable arena.

    After `receive()` returns n, datagram i is arena[i * SLOT_BYTES + HEADROOM :][:length], and
    `results(n)`, `senders(n)` and `destinations(n)` read every datagram's (flags, length), sender
    (port, address) and local address (IP_PKTINFO) with one struct call each. `rx_dropped` is the
    socket's count of dropped datagrams as of the last one received (SO_RXQ_OVFL), widened past
    the kernel's 32 bits; `pktinfo_word` is where IP_PKTINFO's address lies in each datagram's
    control buffer, in 4-byte words (the module doc).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.arena = bytearray(SLOT_BYTES * size)
        self.names = bytearray(_NAME_BYTES * size)
        self.control = bytearray(_CONTROL_BYTES * size)
        self.headers = bytearray(_MSIZE * size)
        self._iovecs = bytearray(_IOVSIZE * size)
        self._views: list[object] = []  # what the kernel's pointers point into, pinned
        views = self._views
        arena = _address(self.arena, views)
        names, control = _address(self.names, views), _address(self.control, views)
        self.arena_address = arena
        self.names_address = names
        iovecs = _address(self._iovecs, views)
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
        self._headers_address = _address(self.headers, views)
        # One struct per batch size reads a field of every message at once: a call per batch
        # instead of one per datagram (the messages, names and controls are evenly spaced).
        gap = _MSIZE - 12
        self._results = [
            struct.Struct("=i4xI" + f"{gap}xi4xI" * (k - 1)) for k in range(1, size + 1)
        ]
        self._peers = [struct.Struct("!" + "2xHI8x" * k) for k in range(1, size + 1)]
        # No padding after the last address, so the same struct reads either layout: at offset 0
        # with IP_PKTINFO first, at the count's size further on behind SO_RXQ_OVFL.
        tail = _CONTROL_BYTES - _PKTINFO_ADDR - 4
        self._locals = [
            struct.Struct("!" + f"{_PKTINFO_ADDR}xI{tail}x" * (k - 1) + f"{_PKTINFO_ADDR}xI")
            for k in range(1, size + 1)
        ]
        self.rx_dropped = 0
        self._count = -1  # the kernel's last count read; -1: none yet
        self.pktinfo_word = _PKTINFO_WORD
        self._control_words = memoryview(self.control).cast("I")
        # What the first control messages' types are when all n datagrams agree, either way
        self._uncounted = memoryview(array.array("I", [IP_PKTINFO] * size))
        self._counted = memoryview(array.array("I", [SO_RXQ_OVFL] * size))

    def results(self, n: int) -> tuple[int, ...]:
        """(msg_flags, length) of the first n datagrams, flattened: f0, len0, f1, len1, ..."""
        return self._results[n - 1].unpack_from(self.headers, _FLAGS_OFF)

    def senders(self, n: int) -> tuple[int, ...]:
        """(port, IPv4 address) of the first n senders, flattened, as integers."""
        return self._peers[n - 1].unpack_from(self.names, 0)

    def destinations(self, n: int) -> tuple[int, ...]:
        """The IPv4 address each of the first n datagrams was sent to (IP_PKTINFO), as integers."""
        shift = 4 * (self.pktinfo_word - _PKTINFO_WORD)
        return self._locals[n - 1].unpack_from(self.control, shift)

    def receive(self, fd: int) -> int:
        """Wait (up to SO_RCVTIMEO) for datagrams; return how many arrived, 0 on timeout/EINTR."""
        dirty = self._dirty  # the kernel overwrote the lengths of the messages it filled
        if dirty:
            self.headers[:dirty] = self._pristine[:dirty]
        count: int = _recvmmsg(fd, self._headers_address, self.size, MSG_WAITFORONE, None)
        # Restoring only what the last call could touch (one message more, to be safe) keeps a
        # large batch cheap when traffic is light.
        self._dirty = min(max(count, 0) + 1, self.size) * _MSIZE
        if count > 0:
            self.read_controls(count)
        if count >= 0:
            return count
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EINTR):
            return 0
        raise OSError(code, f"recvmmsg: {errno.errorcode.get(code, code)}")

    def read_controls(self, n: int) -> None:
        """Once per batch of n datagrams (receive does it): take the drop count from the last
        one, and line IP_PKTINFO up at `pktinfo_word` in all of them (the module doc)."""
        words, last = self._control_words, (n - 1) * _CONTROL_WORDS
        counted = words[last + _TYPE_WORD] == SO_RXQ_OVFL
        if counted:
            self._take_count(words[last + _COUNT_WORD])
        types = words[_TYPE_WORD : _TYPE_WORD + _CONTROL_WORDS * n : _CONTROL_WORDS]
        if types != (self._counted if counted else self._uncounted)[:n]:
            self._line_up(n, counted)
        self.pktinfo_word = _PKTINFO_COUNTED_WORD if counted else _PKTINFO_WORD

    def _take_count(self, count: int) -> None:
        """Widen the kernel's u32 count: it only grows, modulo 2**32. A count a little older than
        the last one read (datagrams queued from two CPUs at once) is no news."""
        if self._count < 0:
            self.rx_dropped = count  # the socket's drops before we came (a restarted worker)
        else:
            grown = (count - self._count) % _COUNT_MODULUS
            if grown >= _COUNT_MODULUS // 2:
                return
            self.rx_dropped += grown
        self._count = count

    def _line_up(self, n: int, counted: bool) -> None:
        """Copy IP_PKTINFO's address to where this batch reads it in each datagram laid out the
        other way (past the end of a short control buffer is ours to write)."""
        words, step = self._control_words, _CONTROL_WORDS
        to = _PKTINFO_COUNTED_WORD if counted else _PKTINFO_WORD
        source = _PKTINFO_WORD if counted else _PKTINFO_COUNTED_WORD
        for at in range(0, n * step, step):
            if (words[at + _TYPE_WORD] == SO_RXQ_OVFL) != counted:
                words[at + to] = words[at + source]


class SendBatch:
    """Replies for a ReceiveBatch, sent with one sendmmsg on a raw IP_HDRINCL socket.

    Reply i is slot i of the receive arena, its outer IPv4+UDP header (reply.py) in the headroom,
    addressed to the sockaddr the datagram came from (a raw socket ignores the port). Message i
    points at those once and for all. The header's constant fields are written once, here: nothing
    else writes a slot's headroom (the kernel and a rewrite write from the datagram's start on).
    `prepare` copies the whole batch's addresses and ports into the headers with three strided
    copies, then per queued reply stores its two length fields and its iovec length, and counts it.
    When a datagram before it got no reply, message j must carry slot i's reply to keep the array
    contiguous: the messages differ only in their msg_name and msg_iov pointers, so slot i's two
    pointers are stored into message j's words (two item stores instead of copying a message),
    and `moved` says how many leading messages may have changed; `flush` restores them.
    """

    def __init__(self, rx: ReceiveBatch) -> None:
        size = rx.size
        self.count = 0
        self._rx = rx
        self._iovecs = bytearray(_IOVSIZE * size)
        self._headers = bytearray(_MSIZE * size)
        self._views: list[object] = []  # what the kernel's pointers point into, pinned
        iovecs = _address(self._iovecs, self._views)
        # size_t words ("N": typeshed lists only the fixed-size formats, hence the ignore)
        self._lengths: memoryview = memoryview(self._iovecs).cast("N")  # type: ignore[call-overload]
        msgs = (_Mmsghdr * size).from_buffer(self._headers)
        for i in range(size):
            _IOVEC.pack_into(self._iovecs, i * _IOVSIZE, rx.arena_address + i * SLOT_BYTES, 0)
            hdr = msgs[i].msg_hdr
            hdr.msg_name = rx.names_address + i * _NAME_BYTES  # rx pins the names
            hdr.msg_namelen = _NAME_BYTES
            hdr.msg_iov = iovecs + i * _IOVSIZE
            hdr.msg_iovlen = 1
            # The kernel fills in the IPv4 checksum (reply.py); lengths and addresses: prepare.
            HEADER.pack_into(
                rx.arena,
                i * SLOT_BYTES,
                VERSION_IHL_TOS,
                0,
                0,
                DONT_FRAGMENT,
                TTL_PROTOCOL,
                0,
                0,
                0,
                0,
                GENEVE_PORT,
                0,
                0,
            )
        del msgs, hdr
        self._pristine = memoryview(bytes(self._headers))
        self.moved = 0  # messages up to here may hold another slot's reply (see the class doc)
        self._headers_address = _address(self._headers, self._views)
        self._words: memoryview = memoryview(self._headers).cast("N")  # type: ignore[call-overload]
        # Per slot: its index, where its IPv4 total length and UDP length go (16-bit items of the
        # arena), where its iovec length goes, and its message's two pointers.
        self._slots = tuple(
            (
                i,
                (i * SLOT_BYTES + _TOTAL_LENGTH_AT) // 2,
                (i * SLOT_BYTES + _UDP_LENGTH_AT) // 2,
                i * _IOV_WORDS + _IOV_LEN_WORD,
                self._words[i * _MSG_WORDS + _NAME_WORD],
                self._words[i * _MSG_WORDS + _IOV_WORD],
            )
            for i in range(size)
        )
        self._no_replies = [NO_REPLY] * size
        # Native-order views for the strided copies: 4-byte addresses and 2-byte ports are moved
        # as raw bytes, so they stay in network order.
        self._fields = memoryview(rx.arena).cast("H")
        self._arena_words = memoryview(rx.arena).cast("I")
        self._name_words = memoryview(rx.names).cast("I")
        self._name_fields = memoryview(rx.names).cast("H")
        self._control_words = memoryview(rx.control).cast("I")

    def prepare(self, replies: list[int], n: int) -> int:
        """Take the replies queued in replies[:n] (a length per datagram, NO_REPLY for none:
        appliance.batch), complete their headers and iovecs, line their messages up, and clear
        replies[:n]; return how many are ready to send."""
        asked = replies[:n]
        if any(asked):  # a batch that is all drops (a flood of them) needs no addresses
            self._copy_addresses(n)
        fields, lengths, words, big_endian = self._fields, self._lengths, self._words, _BIG_ENDIAN
        headroom = HEADROOM
        queued = 0
        # Only the slots with a reply, and their lengths: skipping the others costs nothing here.
        for (i, total_at, udp_at, length_at, name_pointer, iov_pointer), length in zip(
            compress(self._slots, asked), filter(None, asked), strict=True
        ):
            total = headroom + length
            fields[total_at] = big_endian[total]  # the kernel would fill it in; we write it true
            fields[udp_at] = big_endian[length + 8]
            lengths[length_at] = total
            if queued != i:  # keep the messages contiguous after a datagram without reply
                at = queued * _MSG_WORDS
                words[at + _NAME_WORD] = name_pointer
                words[at + _IOV_WORD] = iov_pointer
            queued += 1
        replies[:n] = self._no_replies[:n]
        self.count = queued
        if queued != n:
            self.moved = queued
        return queued

    def _copy_addresses(self, n: int) -> None:
        """Every header of the batch gets its source address (IP_PKTINFO's), its destination and
        destination port (the sender's sockaddr): one strided memoryview copy per field."""
        step_words, step_fields = SLOT_BYTES // 4, SLOT_BYTES // 2
        at, name, pktinfo = _SOURCE_AT // 4, _NAME_WORDS, self._rx.pktinfo_word
        self._arena_words[at : at + step_words * n : step_words] = self._control_words[
            pktinfo : pktinfo + _CONTROL_WORDS * n : _CONTROL_WORDS
        ]
        self._arena_words[at + 1 : at + 1 + step_words * n : step_words] = self._name_words[
            1 : 1 + name * n : name
        ]  # sin_addr
        at = _PORT_AT // 2
        self._fields[at : at + step_fields * n : step_fields] = self._name_fields[
            1 : 1 + 2 * name * n : 2 * name
        ]  # sin_port

    def flush(self, fd: int) -> tuple[int, list[int]]:
        """Send everything prepared: (packets sent, errno of each packet that failed)."""
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
        self._restore()
        return sent, failures

    def discard(self) -> None:
        """Forget what was prepared without sending it (a profiler that has nowhere to send)."""
        self.count = 0
        self._restore()

    def _restore(self) -> None:
        moved = self.moved * _MSIZE
        if moved:
            self._headers[:moved] = self._pristine[:moved]
            self.moved = 0


class SocketBatchIO:
    """appliance.batch.BatchIO over a worker's UDP socket (recvmmsg) and raw socket (sendmmsg).

    `rx` and `tx` are the two halves, public for whoever lays out a batch by hand (the profiler).
    """

    def __init__(self, data_socket: socket.socket, raw_socket: socket.socket, size: int) -> None:
        self.rx = ReceiveBatch(size)
        self.tx = SendBatch(self.rx)
        self.size = size
        self.buffer = self.rx.arena
        self.replies = [NO_REPLY] * size
        self._starts = tuple(i * SLOT_BYTES + HEADROOM for i in range(size))
        self._data_fd = data_socket.fileno()
        self._raw_fd = raw_socket.fileno()
        self._sockets = (data_socket, raw_socket)  # keep them open as long as we are
        self._extras: list[tuple[int, bytes]] = []

    def receive(self) -> int:
        return self.rx.receive(self._data_fd)

    def starts(self, n: int) -> tuple[int, ...]:
        return self._starts[:n]

    def results(self, n: int) -> tuple[int, ...]:
        return self.rx.results(n)

    def senders(self, n: int) -> tuple[int, ...]:
        return self.rx.senders(n)

    def destinations(self, n: int) -> tuple[int, ...]:
        return self.rx.destinations(n)

    @property
    def rx_dropped(self) -> int:
        return self.rx.rx_dropped

    def extra(self, i: int, datagram: bytes) -> None:
        self._extras.append((i, datagram))

    def flush(self, n: int) -> tuple[int, list[int]]:
        self.tx.prepare(self.replies, n)
        sent, failures = self.tx.flush(self._raw_fd)
        if self._extras:
            sent += self._send_extras(n, failures)
        return sent, failures

    def _send_extras(self, n: int, failures: list[int]) -> int:
        """Each extra with its own outer header (reply.py's) and sendto: a handful a batch at
        most, so no message array."""
        extras, self._extras = self._extras, []
        senders, local = self.rx.senders(n), self.rx.destinations(n)
        sent = 0
        for i, datagram in extras:
            port, peer = senders[2 * i], senders[2 * i + 1]
            header = HEADER.pack(
                VERSION_IHL_TOS, HEADROOM + len(datagram), 0, DONT_FRAGMENT, TTL_PROTOCOL, 0,
                local[i], peer, port, GENEVE_PORT, 8 + len(datagram), 0,
            )  # fmt: skip
            # To the sender's address and port, as the batch's messages name it (a raw socket
            # ignores the port; the unit tests' stand-in, a UDP socket, needs it).
            where = (socket.inet_ntoa(peer.to_bytes(4, "big")), port)
            try:
                self._sockets[1].sendto(header + datagram, where)
                sent += 1
            except OSError as error:
                failures.append(error.errno or 0)
        return sent
