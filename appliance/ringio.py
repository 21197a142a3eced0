"""The ring backend of the batch I/O seam: a TPACKET_V2 receive ring in, sendmmsg on the same
packet socket out (appliance/ringsocket.py makes the socket and says why V2; appliance/batch.py is
the seam).

Why: on the socket path about three quarters of a packet's cost is the kernel's per-datagram
socket work (the UDP stack, a socket buffer per datagram, recvmmsg's copies). Here the kernel
copies each frame once into a ring shared with us; a batch costs at most a poll to wait and one
sendmmsg to answer.

Why the frames are copied again, into an arena like the socket backend's: the seam gives the
loop a bytearray with ROOM bytes after each datagram (a rewrite grows it in place), while a ring
frame is 2 KiB and goes back to the kernel as soon as it is read. Copying a frame from its
Ethernet header on into a fixed-size slot costs about 0.12 us in Python (reading the frame's
header 0.07 more, deploy/bench/README.md); in return every slot lies at a fixed stride, so the
reply headers are made for the whole batch at once, with a few strided memoryview copies, as
batchio.SendBatch does: the Ethernet addresses and the IPv4 addresses swapped, the UDP ports kept
(GWLB's source port, 6081: DESIGN.md §1), the UDP checksum 0. Swapping the addresses leaves the
IPv4 header checksum right (a ones' complement sum does not depend on the order of its words)
and the received header was checked by the tap filter; only a reply whose length changed (a
rewrite) gets its two lengths and, incrementally (RFC 1624), its header checksum fixed. The rest
of the outer IPv4 header (TTL, DF, ID) is the received one's.

A datagram longer than a frame holds comes cut in its frame, flagged TP_STATUS_COPY, and whole
in the socket's receive queue (PACKET_COPY_THRESH), in the ring's order: it is read from there.
If the queue was full the kernel queued no copy; the cut frame is then flagged TRUNCATED and
never answered, as the socket backend does with a datagram longer than its slot.

Why each frame goes back to the kernel as soon as it is copied: the ring outlives its worker
(the supervisor owns the socket), so a restarted worker reads on from the oldest frame still
the reader's. Like the socket backend, a crash loses the batch in hand and nothing that waited
behind it, and a datagram that killed a worker is not shown to the next.

Slot i of the arena: 2 spare bytes (so that the IPv4 addresses are 4-byte aligned), the
received frame's Ethernet, IPv4 and UDP headers (42 bytes), then the datagram at
i * SLOT_BYTES + HEADROOM with ROOM bytes of room.
"""

from __future__ import annotations

import array
import ctypes
import errno
import mmap
import socket
import struct
from itertools import chain, compress

from appliance.batch import NO_REPLY, ROOM, TRUNCATED

# The socket backend's ctypes message structures and sendmmsg, shared rather than repeated.
from appliance.batchio import SLOT_BYTES, _address, _Iovec, _Mmsghdr, _Msghdr, _sendmmsg
from appliance.checksum import adjust, fold, internet_checksum, ones_sum
from appliance.geneve import GENEVE_PORT
from appliance.reply import DONT_FRAGMENT, HEADER, TTL_PROTOCOL, VERSION_IHL_TOS
from appliance.ringbpf import OUTER_LEN, SOL_PACKET
from appliance.ringsocket import PACKET_STATISTICS, RingGeometry

FRAME_AT = 2  # where the frame starts in its slot
HEADROOM = FRAME_AT + OUTER_LEN  # where the datagram starts in its slot
assert HEADROOM + ROOM <= SLOT_BYTES
MAX_SNAP = OUTER_LEN + ROOM  # a longer frame comes to the loop cut, flagged TRUNCATED
TP_STATUS_KERNEL, TP_STATUS_USER, TP_STATUS_COPY = 0, 1, 2
# struct tpacket2_hdr: tp_status, tp_len (the frame's), tp_snaplen (what the ring holds: the tap
# filter's snap length, up to the UDP datagram's end), tp_mac (then tp_net, tp_sec, tp_nsec)
_FRAME = struct.Struct("=IIIH")
_STAMP = struct.Struct("=II")  # tp_sec, tp_nsec at 16
_UDP_LENGTH = struct.Struct("!H")  # the outer UDP length, 38 bytes into a frame
_UDP_LENGTH_AT, _UDP_AT = OUTER_LEN - 4, OUTER_LEN - 8
# A frame's UDP checksum needs no look when the device verified it (TP_STATUS_CSUM_VALID) or the
# packet was made on this host and its checksum is still to be filled in (TP_STATUS_CSUMNOTREADY).
_CHECKED = 0x80 | 0x08
_POLLIN = 0x1
_STATS = struct.Struct("=II")  # struct tpacket_stats: packets, drops
_STATS_EVERY = 64  # receives between two reads of the ring's drop count (a system call)
# The reply header's fields in a slot, as items of the arena's 16-bit and 32-bit views.
_MAC_PAIRS = tuple(((FRAME_AT + k) // 2, (FRAME_AT + 6 + k) // 2) for k in (0, 2, 4))
_IP_SOURCE, _IP_DESTINATION = (FRAME_AT + 26) // 4, (FRAME_AT + 30) // 4
_UDP_CHECKSUM = (FRAME_AT + 40) // 2
_FEW = 4  # batches up to this size are turned around slot by slot (_turn_around)
_MACS, _ADDRESSES = struct.Struct("6s6s"), struct.Struct("4s4s")  # as a frame holds them
_TOTAL_AT = FRAME_AT + 14 + 2  # the IPv4 total length, first of _LENGTHS
_LENGTHS = struct.Struct("!H6xH12xH")  # IPv4 total length, header checksum, UDP length
_FIELD = struct.Struct("!H")
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_MSIZE = ctypes.sizeof(_Mmsghdr)
_MSG_WORDS = _MSIZE // _SIZE_T
_IOV_WORD = _Msghdr.msg_iov.offset // _SIZE_T
_IOV_WORDS = ctypes.sizeof(_Iovec) // _SIZE_T
_IOV_LEN_WORD = _Iovec.iov_len.offset // _SIZE_T

_libc = ctypes.CDLL(None, use_errno=True)
_poll = _libc.poll
_poll.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
_poll.restype = ctypes.c_int


class RingBatchIO:
    """appliance.batch.BatchIO over a packet socket with a TPACKET_V2 receive ring (module doc).

    `sock` comes from ringsocket.open_ring_socket with the same `geometry`; the ring is mapped
    here, in the worker. Receives wait at most `wait_s` for a frame.
    """

    def __init__(
        self,
        sock: socket.socket,
        size: int,
        geometry: RingGeometry,
        wait_s: float = 1.0,
    ) -> None:
        self.size = size
        self.buffer = bytearray(SLOT_BYTES * size)
        self.replies = [NO_REPLY] * size
        self._sock = sock
        self._fd = sock.fileno()
        self._frame_bytes, self._frame_count = geometry.frame_bytes, geometry.frames
        self._ring = mmap.mmap(
            self._fd, geometry.ring_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._frames = memoryview(self._ring)
        self._status = self._frames.cast("I")  # frame i's status: item i * frame_bytes // 4
        self._arena = memoryview(self.buffer)
        self._wait_ms = max(1, int(wait_s * 1000))
        self._views: list[object] = []  # what the kernel's pointers point into, pinned
        self._pollfd = bytearray(struct.pack("=ihh", self._fd, _POLLIN, 0))  # struct pollfd
        self._pollfd_address = _address(self._pollfd, self._views)
        self._next: int | None = None  # the frame to read next; None until the kernel's is known
        self._starts = tuple(i * SLOT_BYTES + HEADROOM for i in range(size))
        self._results = [0] * (2 * size)  # flags and length per datagram: TRUNCATED or 0
        self._extras: list[tuple[int, bytes]] = []
        self._dropped = 0
        self._stats_in = 0
        self.checksum_errors = 0  # datagrams dropped for a wrong UDP checksum (_take)
        self._peers: dict[int, struct.Struct] = {}
        self._locals: dict[int, struct.Struct] = {}
        self._send_setup()

    # ---------------------------------------------------------------- receiving

    def receive(self) -> int:
        """Wait (up to wait_s) for the kernel to hand over a frame; take up to `size` frames."""
        self._stats_in -= 1
        if self._stats_in < 0:
            self._read_stats()
        n = self._take()
        if n or not self._wait():
            return n
        return self._take()

    def _take(self) -> int:
        """The hot part: copy the frames the kernel handed over into the arena, up to `size`,
        giving each back at once; how many slots they filled (a datagram whose UDP checksum is
        wrong fills none: the UDP stack would have dropped it too)."""
        index = self._next if self._next is not None else self._oldest_ready()
        if index is None:
            return 0
        ring, frames, arena, results, status = (
            self._ring, self._frames, self._arena, self._results, self._status
        )  # fmt: skip
        unpack, outer, checked = _FRAME.unpack_from, OUTER_LEN, _CHECKED
        frame_bytes, last, words = self._frame_bytes, self._frame_count - 1, self._frame_bytes // 4
        k, to, end = 0, FRAME_AT, 2 * self.size
        while k < end:
            at = index * frame_bytes
            state, wire, snap, mac = unpack(ring, at)
            if not state & TP_STATUS_USER:
                break
            start = at + mac
            if state & TP_STATUS_COPY:  # cut here, whole in the receive queue
                wire, snap, flags = self._copied(to, frames[start : start + snap])
            else:
                flags = 0
                if mac + snap == frame_bytes:  # as long as a frame holds: perhaps cut
                    flags = _cut(frames[start : start + snap])
                arena[to : to + snap] = frames[start : start + snap]
            status[index * words] = TP_STATUS_KERNEL  # copied: the kernel's again
            index = index + 1 if index < last else 0
            if not state & checked and not flags and not _udp_checksum_right(arena[to : to + snap]):
                self.checksum_errors += 1
                continue
            if wire != snap and not flags:
                # Bytes past the UDP datagram (Ethernet padding, or an IPv4 packet longer than
                # its datagram) were cut: the outer IPv4 total length the reply keeps is made
                # the datagram's, or the GWLB side would drop the reply as truncated.
                self._fix_lengths(k // 2, snap - outer)
            results[k] = flags
            results[k + 1] = snap - outer
            k += 2
            to += SLOT_BYTES
        self._next = index
        return k // 2

    def _copied(self, to: int, cut: memoryview) -> tuple[int, int, int]:
        """A long datagram's whole frame from the receive queue into the slot at `to`: the
        frame's length, the datagram's end in it, and flags. When the queue has none (it cannot
        be, but the ring must go on), or the frame is longer than a slot holds, the slot gets
        what there is, TRUNCATED."""
        arena = self._arena
        try:
            length = self._sock.recv_into(
                arena[to : to + MAX_SNAP], MAX_SNAP, socket.MSG_DONTWAIT | socket.MSG_TRUNC
            )
        except BlockingIOError:
            arena[to : to + len(cut)] = cut
            return len(cut), len(cut), TRUNCATED
        if length > MAX_SNAP:
            return length, MAX_SNAP, TRUNCATED
        # The copy is the whole frame, padding and all: the datagram ends where UDP says, as
        # the tap filter's snap length (checked there to lie within the frame).
        end = _UDP_AT + _UDP_LENGTH.unpack_from(arena, to + _UDP_LENGTH_AT)[0]
        return length, min(length, end), 0

    def _oldest_ready(self) -> int | None:
        """Before the kernel's position is known (a new worker): the oldest frame handed over
        to the reader, if any. The reader's frames follow each other round the ring, so it is the
        one after a kernel's frame; when all are the reader's, the earliest stamped."""
        ready = [bool(word & TP_STATUS_USER) for word in self._status[:: self._frame_bytes // 4]]
        if not any(ready):
            return None
        firsts = [i for i, mine in enumerate(ready) if mine and not ready[i - 1]]
        if firsts:
            return firsts[0]
        return min(
            range(len(ready)),
            key=lambda i: _STAMP.unpack_from(self._ring, i * self._frame_bytes + 16),
        )

    def _wait(self) -> bool:
        """poll(2) for a frame; False on timeout or a signal (the loop then beats its heart)."""
        ready: int = _poll(self._pollfd_address, 1, self._wait_ms)
        if ready < 0 and ctypes.get_errno() not in (errno.EINTR, errno.EAGAIN):
            code = ctypes.get_errno()
            raise OSError(code, f"poll: {errno.errorcode.get(code, code)}")
        return ready > 0

    def _read_stats(self) -> None:
        """Add the frames the kernel dropped for a full ring since the last read (reading
        PACKET_STATISTICS resets it)."""
        self._stats_in = _STATS_EVERY
        _, drops = _STATS.unpack(self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))
        self._dropped += drops

    @property
    def rx_dropped(self) -> int:
        return self._dropped

    def starts(self, n: int) -> tuple[int, ...]:
        return self._starts[:n]

    def results(self, n: int) -> tuple[int, ...]:
        return tuple(self._results[: 2 * n])

    def senders(self, n: int) -> tuple[int, ...]:
        """(UDP source port, IPv4 source) of the first n datagrams as received."""
        peers = self._peers.get(n)
        if peers is None:
            unit = SLOT_BYTES - 10
            peers = self._peers[n] = struct.Struct("!28xI4xH" + f"{unit}xI4xH" * (n - 1))
        found = peers.unpack_from(self.buffer, 0)  # address, port, address, port, ...
        return tuple(chain.from_iterable(zip(found[1::2], found[::2], strict=True)))

    def destinations(self, n: int) -> tuple[int, ...]:
        """The IPv4 destination of the first n datagrams as received (the reply's source)."""
        locals_ = self._locals.get(n)
        if locals_ is None:
            locals_ = self._locals[n] = struct.Struct("!32xI" + f"{SLOT_BYTES - 4}xI" * (n - 1))
        return locals_.unpack_from(self.buffer, 0)

    # ---------------------------------------------------------------- sending

    def _send_setup(self) -> None:
        """One message per slot, its iovec on the slot's frame; lengths are set per reply."""
        size = self.size
        self._iovecs = bytearray(ctypes.sizeof(_Iovec) * size)
        self._headers = bytearray(_MSIZE * size)
        arena, iovecs = _address(self.buffer, self._views), _address(self._iovecs, self._views)
        msgs = (_Mmsghdr * size).from_buffer(self._headers)
        for i in range(size):
            iov = _Iovec.from_buffer(self._iovecs, i * ctypes.sizeof(_Iovec))
            iov.iov_base = arena + i * SLOT_BYTES + FRAME_AT
            msgs[i].msg_hdr.msg_iov = iovecs + i * ctypes.sizeof(_Iovec)
            msgs[i].msg_hdr.msg_iovlen = 1
            del iov
        del msgs
        self._pristine = memoryview(bytes(self._headers))
        self._moved = 0
        self._headers_address = _address(self._headers, self._views)
        self._words: memoryview = memoryview(self._headers).cast("N")  # type: ignore[call-overload]
        self._lengths: memoryview = memoryview(self._iovecs).cast("N")  # type: ignore[call-overload]
        self._slots = tuple(
            (i, i * _IOV_WORDS + _IOV_LEN_WORD, self._words[i * _MSG_WORDS + _IOV_WORD])
            for i in range(size)
        )
        self._fields = self._arena.cast("H")
        self._addresses = self._arena.cast("I")
        self._spare16 = memoryview(array.array("H", [0] * size))
        self._spare32 = memoryview(array.array("I", [0] * size))
        self._zeros = memoryview(array.array("H", [0] * size))
        self._no_replies = [NO_REPLY] * size

    def extra(self, i: int, datagram: bytes) -> None:
        self._extras.append((i, datagram))

    def flush(self, n: int) -> tuple[int, list[int]]:
        """Send the replies queued for the first n datagrams, then the extras."""
        extras = self._extra_frames() if self._extras else []
        queued = self._prepare(n)
        sent, failures = self._send(queued)
        for frame in extras:
            try:
                self._sock.send(frame)
                sent += 1
            except OSError as error:
                failures.append(error.errno or 0)
        return sent, failures

    def _prepare(self, n: int) -> int:
        """Turn the received headers of the batch around, set each reply's length (and fix its
        headers when a rewrite changed it), line the messages up; how many to send."""
        replies = self.replies
        asked = replies[:n]
        if not any(asked):
            return 0
        self._turn_around(n)
        lengths, words, results = self._lengths, self._words, self._results
        queued, outer = 0, OUTER_LEN
        for (i, length_at, iov_pointer), length in zip(
            compress(self._slots, asked), filter(None, asked), strict=True
        ):
            if length != results[2 * i + 1]:
                self._fix_lengths(i, length)
            lengths[length_at] = outer + length
            if queued != i:  # keep the messages contiguous after a datagram without reply
                words[queued * _MSG_WORDS + _IOV_WORD] = iov_pointer
            queued += 1
        replies[:n] = self._no_replies[:n]
        if queued != n:
            self._moved = queued
        return queued

    def _turn_around(self, n: int) -> None:
        """In every slot of the batch: Ethernet and IPv4 addresses swapped, UDP checksum 0."""
        if n <= _FEW:
            # A small batch (a lightly loaded worker, where each microsecond is latency): slot
            # by slot, 0.55 us for one and 0.4 more each, against 2.1 us for the strided
            # copies below whatever the count (1.7 against 2.1 at four).
            buffer = self.buffer
            for at in range(FRAME_AT, n * SLOT_BYTES, SLOT_BYTES):
                destination, source = _MACS.unpack_from(buffer, at)
                _MACS.pack_into(buffer, at, source, destination)
                peer, local = _ADDRESSES.unpack_from(buffer, at + 26)
                _ADDRESSES.pack_into(buffer, at + 26, local, peer)
                buffer[at + 40 : at + 42] = b"\0\0"
            return
        fields, spare = self._fields, self._spare16[:n]
        step = SLOT_BYTES // 2
        end = step * n
        for a, b in _MAC_PAIRS:
            spare[:] = fields[a : a + end : step]
            fields[a : a + end : step] = fields[b : b + end : step]
            fields[b : b + end : step] = spare
        fields[_UDP_CHECKSUM : _UDP_CHECKSUM + end : step] = self._zeros[:n]
        words, spare32 = self._addresses, self._spare32[:n]
        step = SLOT_BYTES // 4
        end = step * n
        spare32[:] = words[_IP_SOURCE : _IP_SOURCE + end : step]
        words[_IP_SOURCE : _IP_SOURCE + end : step] = words[
            _IP_DESTINATION : _IP_DESTINATION + end : step
        ]
        words[_IP_DESTINATION : _IP_DESTINATION + end : step] = spare32

    def _fix_lengths(self, i: int, length: int) -> None:
        """A reply of another length than its datagram: IPv4 total length and header checksum
        (RFC 1624), UDP length."""
        at = i * SLOT_BYTES + _TOTAL_AT
        total, checksum, _ = _LENGTHS.unpack_from(self.buffer, at)
        new_total = 28 + length
        # One field at a time: packing _LENGTHS would write its pad bytes (the addresses) 0.
        _FIELD.pack_into(self.buffer, at, new_total)
        _FIELD.pack_into(self.buffer, at + 8, adjust(checksum, total, new_total))
        _FIELD.pack_into(self.buffer, at + 22, 8 + length)

    def _send(self, total: int) -> tuple[int, list[int]]:
        sent, failures, position = 0, [], 0
        while position < total:  # each round moves position by at least one
            done = _sendmmsg(
                self._fd, self._headers_address + position * _MSIZE, total - position, 0
            )
            if done < 0:
                failures.append(ctypes.get_errno())
                position += 1  # skip the frame the kernel refused, keep its neighbours
            else:
                sent += done
                position += done
        if self._moved:
            self._headers[: self._moved * _MSIZE] = self._pristine[: self._moved * _MSIZE]
            self._moved = 0
        return sent, failures

    def _extra_frames(self) -> list[bytes]:
        """Each extra as a whole frame to its datagram's sender, made from the received headers
        (before the batch's are turned around)."""
        extras, self._extras = self._extras, []
        buffer, frames = self.buffer, []
        for i, datagram in extras:
            at = i * SLOT_BYTES + FRAME_AT
            peer, local = struct.unpack_from("!II", buffer, at + 26)
            (port,) = struct.unpack_from("!H", buffer, at + 34)
            header = bytearray(
                HEADER.pack(
                    VERSION_IHL_TOS, 28 + len(datagram), 0, DONT_FRAGMENT, TTL_PROTOCOL, 0,
                    local, peer, port, GENEVE_PORT, 8 + len(datagram), 0,
                )
            )  # fmt: skip
            struct.pack_into("!H", header, 10, internet_checksum(header[:20]))
            ethernet = bytes(buffer[at + 6 : at + 12]) + bytes(buffer[at : at + 6]) + b"\x08\x00"
            frames.append(ethernet + bytes(header) + datagram)
        return frames

    def close(self) -> None:
        """Unmap the ring (the socket stays the supervisor's)."""
        self._status.release()
        self._frames.release()
        self._ring.close()


def _cut(frame: memoryview) -> int:
    """TRUNCATED when a frame that fills its ring frame holds less than its UDP datagram."""
    (length,) = _UDP_LENGTH.unpack_from(frame, _UDP_LENGTH_AT)
    return TRUNCATED if len(frame) < _UDP_AT + length else 0


def _udp_checksum_right(frame: memoryview) -> bool:
    """A frame's UDP checksum is 0 (none, RFC 768) or right: the ones' complement sum of the
    pseudo-header and the datagram is all ones."""
    if not frame[OUTER_LEN - 2] and not frame[OUTER_LEN - 1]:
        return True
    udp_length = len(frame) - OUTER_LEN + 8
    total = ones_sum(frame[OUTER_LEN - 16 : OUTER_LEN - 8]) + 17 + udp_length
    return fold(total + ones_sum(frame[OUTER_LEN - 8 :])) == 0xFFFF
