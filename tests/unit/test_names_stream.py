"""StreamHead: a client's first bytes put back in order from segments in any order."""

from __future__ import annotations

import random
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.names.http import parse_request_host
from appliance.names.result import Status
from appliance.names.stream import SEQ_MOD, StreamHead
from appliance.names.tls import parse_client_hello

DATA = bytes(range(256)) * 8  # 2048 bytes, each offset's byte telling where it came from


def segments(data: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    """`data` cut into segments of the given sizes (cycled), as (offset, payload)."""
    out, at, index = [], 0, 0
    while at < len(data):
        size = sizes[index % len(sizes)]
        out.append((at, data[at : at + size]))
        at, index = at + size, index + 1
    return out


def test_in_order_segments_are_contiguous() -> None:
    head = StreamHead(isn=1000, limit=4096)
    assert head.contiguous() == b"" and head.contiguous_len == 0
    head.add(1001, b"GET / ")
    head.add(1007, b"HTTP/1.1\r\n")
    assert head.contiguous() == b"GET / HTTP/1.1\r\n"
    assert head.start == 1001


def test_a_gap_stops_the_contiguous_bytes_until_it_is_filled() -> None:
    head = StreamHead(isn=0, limit=100)
    head.add(1, b"abc")
    head.add(7, b"ghi")
    assert head.contiguous() == b"abc"
    head.add(4, b"def")
    assert head.contiguous() == b"abcdefghi"


def test_retransmissions_and_overlaps_keep_the_first_copy() -> None:
    head = StreamHead(isn=0, limit=100)
    head.add(3, b"cdef")
    head.add(1, b"ABCDEFGH")  # overlaps all of it, with different bytes where it overlaps
    assert head.contiguous() == b"ABcdefGH"
    assert head.conflicts == 1
    head.add(1, b"ABcdefGH")  # an exact retransmission
    head.add(2, b"Bc")
    assert head.contiguous() == b"ABcdefGH"
    assert head.conflicts == 1


def test_one_segment_spanning_several_held_ranges_fills_every_gap() -> None:
    head = StreamHead(isn=0, limit=100)
    for offset in (2, 5, 9):
        head.add(1 + offset, DATA[offset : offset + 2])
    head.add(1, DATA[:20])
    assert head.contiguous() == DATA[:20]
    assert head.conflicts == 0


def test_bytes_beyond_the_limit_are_dropped() -> None:
    head = StreamHead(isn=0, limit=10)
    head.add(1, DATA[:6])
    head.add(7, DATA[6:20])
    head.add(50, DATA[49:60])  # wholly beyond
    assert head.contiguous() == DATA[:10]
    assert head.complete
    assert len(head._data) == 10  # memory is bounded by the limit


def test_a_far_ahead_segment_costs_no_more_than_the_limit() -> None:
    head = StreamHead(isn=0, limit=64)
    head.add(1 + 2**30, b"x" * 1000)
    head.add(61, b"y" * 1000)
    assert len(head._data) == 64
    assert head.contiguous() == b""


@pytest.mark.parametrize("isn", [SEQ_MOD - 1, SEQ_MOD - 2, SEQ_MOD - 700, 0])
def test_sequence_numbers_wrap(isn: int) -> None:
    head = StreamHead(isn=isn, limit=len(DATA))
    for offset, payload in reversed(segments(DATA, [100, 37])):
        head.add((isn + 1 + offset) % SEQ_MOD, payload)
    assert head.contiguous() == DATA


def test_a_segment_from_before_the_start_keeps_its_part_from_the_start() -> None:
    head = StreamHead.from_first_data(seq=5000, limit=100)
    assert head.start == 5000
    head.add(4990, b"0123456789abcdef")  # 10 bytes before the start, 6 after
    assert head.contiguous() == b"abcdef"
    head.add(4000, b"x" * 100)  # wholly before
    head.add(5000 - 2**31 + 1, b"z" * 10)  # half the sequence space away: behind
    assert head.contiguous() == b"abcdef"


def test_from_first_data_wraps_too() -> None:
    head = StreamHead.from_first_data(seq=0, limit=10)
    assert head.start == 0
    head.add(0, b"abc")
    assert head.contiguous() == b"abc"


def test_a_zero_limit_holds_nothing_and_a_negative_one_is_refused() -> None:
    head = StreamHead(isn=0, limit=0)
    head.add(1, b"abc")
    assert head.contiguous() == b"" and head.complete
    with pytest.raises(ValueError, match="limit"):
        StreamHead(isn=0, limit=-1)


def test_payload_may_be_any_buffer() -> None:
    head = StreamHead(isn=0, limit=100)
    head.add(1, memoryview(b"ab"))
    head.add(3, bytearray(b"cd"))
    assert head.contiguous() == b"abcd"


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, SEQ_MOD - 1),
    st.lists(st.integers(1, 300), min_size=1, max_size=5),
    st.integers(0, 2**32),
    st.integers(0, 3),
    st.integers(200, 2500),
)
def test_any_permutation_with_duplicates_reassembles_exactly(
    isn: int, sizes: list[int], seed: int, copies: int, limit: int
) -> None:
    rng = random.Random(seed)
    pieces = segments(DATA, sizes)
    pieces += [rng.choice(pieces) for _ in range(copies * len(pieces) // 3)]
    # and overlapping slices of the same (true) bytes
    for _ in range(copies):
        first = rng.randrange(len(DATA))
        pieces.append((first, DATA[first : first + rng.randrange(1, 500)]))
    rng.shuffle(pieces)
    head = StreamHead(isn=isn, limit=limit)
    held = 0
    for offset, payload in pieces:
        head.add((isn + 1 + offset) % SEQ_MOD, payload)
        contiguous = head.contiguous()
        assert DATA.startswith(contiguous)  # never a wrong byte, only fewer
        assert len(contiguous) >= held  # and never fewer than before
        held = len(contiguous)
    assert head.contiguous() == DATA[:limit]
    assert head.conflicts == 0
    assert len(head._ranges) == 1
    assert len(head._data) <= limit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=60)), max_size=30))
def test_the_first_copy_of_every_byte_wins(adds: list[tuple[int, bytes]]) -> None:
    head = StreamHead(isn=0, limit=300)
    model: dict[int, int] = {}  # offset -> the first byte received there
    for offset, payload in adds:
        head.add(1 + offset, payload)
        for index, byte in enumerate(payload):
            if offset + index < 300:
                model.setdefault(offset + index, byte)
    length = 0
    while length in model:
        length += 1
    assert head.contiguous() == bytes(model[i] for i in range(length))


def openssl_hello(name: str) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    ("stream", "parse", "name"),
    [
        (openssl_hello("segments.example"), parse_client_hello, "segments.example"),
        (
            b"GET / HTTP/1.1\r\nHost: segments.example\r\n\r\n",
            parse_request_host,
            "segments.example",
        ),
    ],
)
def test_a_parser_fed_as_segments_arrive_names_the_flow_once_it_is_whole(
    stream: bytes, parse: object, name: str
) -> None:
    """The way the flow table will use them: parse again whenever the contiguous bytes grow."""
    pieces = segments(stream, [40, 3, 100])
    random.Random(7).shuffle(pieces)
    head = StreamHead(isn=SEQ_MOD - 20, limit=4096)
    results = []
    for offset, payload in pieces:
        before = head.contiguous_len
        head.add((head.start + offset) % SEQ_MOD, payload)
        if head.contiguous_len > before:
            results.append(parse(head.contiguous()))  # type: ignore[operator]
    assert [r.status for r in results[:-1]] == [Status.NEED_MORE] * (len(results) - 1)
    assert (results[-1].status, results[-1].name) == (Status.COMPLETE, name)
