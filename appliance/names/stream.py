"""The first bytes a TCP client sends on one flow, put back in order for the name parsers.

Why so little TCP: the parsers need the stream's first few kilobytes in order, and nothing here
acknowledges, retransmits or times out; a name is read from what the client sent, whether or not
the server got it. Segments may come out of order, twice, or overlapping. Where two copies of a
byte differ, the first copy kept wins (the one that arrived first): a client that sends
different bytes for the same sequence numbers is trying to make the filter and the server
disagree, and whichever copy a server keeps is up to its own stack, so the caller may want to
treat a flow that does that as suspect; `conflicts` counts such bytes-different overlaps.

Memory is bounded: bytes beyond `limit` from the stream's start are dropped on arrival, so the
buffer never exceeds `limit` bytes, and the held ranges (merged as they meet, so never adjacent)
number at most limit / 2. Sequence numbers wrap modulo 2**32; a segment that starts before
the stream's start (an old retransmission) keeps only its part from the start on.
"""

from __future__ import annotations

from bisect import bisect_left

SEQ_MOD = 2**32
HALF_SEQ = 2**31  # a sequence number this far ahead of the start counts as behind it


class StreamHead:
    """The first `limit` bytes of one direction of a TCP connection whose SYN had sequence
    number `isn` (the data starts at isn + 1; for a flow whose SYN was not seen, see
    from_first_data). Data a SYN carries (TCP Fast Open) is added with seq isn + 1."""

    def __init__(self, isn: int, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        self.start = (isn + 1) % SEQ_MOD  # the sequence number of the stream's first byte
        self.limit = limit
        self.conflicts = 0  # overlapping copies whose bytes differed (module doc)
        self._data = bytearray()  # bytes at their offsets; the gaps hold zeros
        self._ranges: list[list[int]] = []  # held [first, end) offsets, sorted and disjoint

    @classmethod
    def from_first_data(cls, seq: int, limit: int) -> StreamHead:
        """A stream taken to start at the first data segment seen (its SYN was missed)."""
        return cls((seq - 1) % SEQ_MOD, limit)

    def add(self, seq: int, payload: bytes | bytearray | memoryview) -> None:
        """Keep the bytes of a segment with sequence number `seq` that fall in the first `limit`
        bytes and are not already held."""
        first = (seq - self.start) % SEQ_MOD
        if first >= HALF_SEQ:
            first -= SEQ_MOD  # before the start
        end = min(first + len(payload), self.limit)
        skip = max(0, -first)
        first += skip
        if first >= end:
            return
        data = memoryview(payload).cast("B")[skip : skip + end - first]
        if len(self._data) < end:
            self._data.extend(bytes(end - len(self._data)))
        self._merge(first, end, data)

    def _merge(self, first: int, end: int, data: memoryview) -> None:
        """Write the parts of [first, end) that no held range covers, and hold all of it."""
        ranges = self._ranges
        at = bisect_left(ranges, [first, 0])
        if at and ranges[at - 1][1] >= first:
            at -= 1  # the range before reaches into (or up to) this one
        low, high, cursor = first, end, first
        stop = at
        while stop < len(ranges) and ranges[stop][0] <= end:
            held_first, held_end = ranges[stop]
            self._write(cursor, min(held_first, end), first, data)
            self._compare(max(held_first, first), min(held_end, end), first, data)
            cursor = max(cursor, held_end)
            low, high = min(low, held_first), max(high, held_end)
            stop += 1
        self._write(cursor, end, first, data)
        ranges[at:stop] = [[low, high]]

    def _write(self, begin: int, finish: int, first: int, data: memoryview) -> None:
        if begin < finish:
            self._data[begin:finish] = data[begin - first : finish - first]

    def _compare(self, begin: int, finish: int, first: int, data: memoryview) -> None:
        if begin < finish and self._data[begin:finish] != data[begin - first : finish - first]:
            self.conflicts += 1

    def contiguous(self) -> bytes:
        """The bytes from the stream's start on, up to the first byte not yet received."""
        ranges = self._ranges
        return bytes(self._data[: ranges[0][1]]) if ranges and ranges[0][0] == 0 else b""

    @property
    def complete(self) -> bool:
        """Whether the first `limit` bytes are all held: more segments can add nothing."""
        return self.contiguous_len == self.limit

    @property
    def contiguous_len(self) -> int:
        ranges = self._ranges
        return ranges[0][1] if ranges and ranges[0][0] == 0 else 0
