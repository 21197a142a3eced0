"""The DNS query parser and the synthesised answer, with scapy's DNS layer as the oracle: it
builds the queries (over UDP, and over TCP with DNSTCP's length prefix) and dissects our
answers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRROPT, DNSTCP

from appliance.names.dns import (
    NOT_DNS,
    NXDOMAIN,
    REFUSED,
    add_length_prefix,
    parse_query,
    parse_tcp_query,
    synthesize_answer,
    tcp_message,
)
from appliance.names.result import Status

HEADER = struct.Struct("!HHHHHH")


def query(qname: str = "www.example.com", **fields: object) -> bytes:
    return bytes(DNS(id=0x4A7C, qd=DNSQR(qname=qname, qtype="AAAA"), **fields))


def raw_query(question: bytes, flags: int = 0x0100, qdcount: int = 1) -> bytes:
    """A query with its question section as given: for breakage scapy will not emit."""
    return HEADER.pack(0x1111, flags, qdcount, 0, 0, 0) + question


def name_of(message: bytes) -> str | None:
    result = parse_query(message)
    assert result.status is Status.COMPLETE, result
    return result.name


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("www.example.com", "www.example.com"),
        ("WwW.ExAmPlE.CoM.", "www.example.com"),  # a client randomising case (DNS 0x20)
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        (".", ""),  # the root: a resolver's priming query
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None),  # 255 on the wire
    ],
)
def test_scapy_queries_are_named(qname: str, expected: str | None) -> None:
    assert name_of(query(qname)) == (qname if expected is None else expected)


def test_a_query_with_edns_and_any_flags_is_named() -> None:
    message = bytes(DNS(rd=0, cd=1, ad=1, qd=DNSQR(qname="edns.example"), ar=DNSRROPT(z=0x8000)))
    assert name_of(message) == "edns.example"


@pytest.mark.parametrize("as_type", [bytes, bytearray, memoryview])
def test_any_buffer_type_is_read(as_type: type) -> None:
    assert parse_query(as_type(query())).name == "www.example.com"


def test_a_query_without_a_question_is_complete_without_a_name() -> None:
    assert name_of(raw_query(b"", qdcount=0)) is None


# --- not a query, and malformed -------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        bytes(DNS(qr=1, qd=DNSQR(qname="answer.example"))),
        bytes(DNS(opcode=4, qd=DNSQR(qname="notify.example", qtype="SOA"))),  # NOTIFY
        bytes(DNS(opcode=5, qd=DNSQR(qname="update.example", qtype="SOA"))),  # UPDATE
        bytes(DNS(opcode=2)),  # STATUS
    ],
)
def test_what_is_not_a_query_is_not_dns(message: bytes) -> None:
    assert parse_query(message) == NOT_DNS


TAIL = b"\x00\x01\x00\x01"  # QTYPE A, QCLASS IN


@pytest.mark.parametrize(
    "message",
    [
        b"",
        query()[:11],
        raw_query(b"\xc0\x0c" + TAIL),  # a pointer to the header
        raw_query(b"\xc0\x0c"),
        raw_query(b"\x01a\xc0\x0c" + TAIL),  # a pointer back at its own name: a loop
        raw_query(b"\x01a\xc0\x0e" + TAIL),  # a pointer at itself
        raw_query(b"\x40" + b"a" * 64 + b"\x00" + TAIL),  # a label over 63
        raw_query(b"\x80\x01a\x00" + TAIL),  # a retired label type
        raw_query(b"\x3f" + b"a" * 63 + b"\x00" + TAIL, qdcount=2),  # RFC 9619
        raw_query(b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00" + TAIL),  # 257 octets
        raw_query(b"\x03www\x07example"),  # cut in the name
        raw_query(b"\x03www\x07example\x03com\x00\x00\x01"),  # cut in QTYPE/QCLASS
        raw_query(b"\x03www\x07exa"),
        raw_query(b"\x03a.b\x03com\x00" + TAIL),  # a dot inside a label
        raw_query(b"\x03a b\x03com\x00" + TAIL),
        raw_query(b"\x03a\x00b\x03com\x00" + TAIL),
        raw_query(b"\x03caf\xc3\x03com\x00" + TAIL),
    ],
)
def test_malformed_queries_are_malformed(message: bytes) -> None:
    assert parse_query(message).status is Status.MALFORMED


def test_the_longest_name_on_the_wire_is_255_octets() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"b" * 61
    assert len(labels) + 1 == 255
    assert parse_query(raw_query(labels + b"\x00" + TAIL)).status is Status.COMPLETE
    longer = labels[:-1] + b"bb"
    longer = longer[:192] + b"\x3e" + longer[193:]  # the last label one octet longer
    assert parse_query(raw_query(longer + b"\x00" + TAIL)).status is Status.MALFORMED


# --- over TCP ------------------------------------------------------------------------------


def test_dns_over_tcp_every_prefix_needs_more() -> None:
    stream = bytes(DNSTCP(id=7, qd=DNSQR(qname="tcp.example")))
    assert stream == add_length_prefix(stream[2:])
    for cut in range(len(stream)):
        result = parse_tcp_query(memoryview(stream)[:cut])
        assert result.status is Status.NEED_MORE, cut
        assert cut < result.needed <= len(stream)
        assert tcp_message(stream[:cut]) is None
    assert parse_tcp_query(stream).name == "tcp.example"
    assert tcp_message(stream) == stream[2:]


def test_dns_over_tcp_reads_only_the_first_message() -> None:
    first = bytes(DNSTCP(qd=DNSQR(qname="first.example")))
    second = bytes(DNSTCP(qd=DNSQR(qname="second.example")))
    assert parse_tcp_query(first + second).name == "first.example"
    assert tcp_message(first + second) == first[2:]


def test_dns_over_tcp_refuses_what_udp_refuses() -> None:
    assert parse_tcp_query(b"\x00\x05hello").status is Status.MALFORMED  # shorter than a header
    assert parse_tcp_query(add_length_prefix(bytes(DNS(qr=1)))) == NOT_DNS
    assert parse_tcp_query(add_length_prefix(raw_query(b"\xc0\x0c" + TAIL))).status is (
        Status.MALFORMED
    )
    with pytest.raises(ValueError, match="at most 65535"):
        add_length_prefix(b"\x00" * 65536)


# --- the synthesised answer ----------------------------------------------------------------


@pytest.mark.parametrize("rcode", [REFUSED, NXDOMAIN])
@pytest.mark.parametrize(("rd", "cd"), [(1, 0), (0, 0), (1, 1), (0, 1)])
def test_the_answer_is_what_a_resolver_would_send(rcode: int, rd: int, cd: int) -> None:
    message = bytes(
        DNS(id=0xBEEF, rd=rd, cd=cd, qd=DNSQR(qname="BlOcKeD.example", qtype="TXT"), ar=DNSRROPT())
    )
    answer = DNS(synthesize_answer(message, rcode))
    assert answer.id == 0xBEEF
    assert (answer.qr, answer.opcode, answer.aa, answer.tc, answer.z, answer.ad) == (
        1,
        0,
        0,
        0,
        0,
        0,
    )
    assert (answer.rd, answer.ra, answer.cd, answer.rcode) == (rd, rd, cd, rcode)
    assert (answer.qdcount, answer.ancount, answer.nscount, answer.arcount) == (1, 0, 0, 0)
    assert answer.qd[0].qname == b"BlOcKeD.example."  # case kept, byte for byte
    assert answer.qd[0].qtype == 16
    assert bytes(answer)[12:] == message[12 : 12 + len("BlOcKeD.example") + 2 + 4]


def test_an_answer_over_tcp_has_the_length_prefix() -> None:
    stream = bytes(DNSTCP(id=9, qd=DNSQR(qname="tcp.example")))
    message = tcp_message(stream)
    assert message is not None
    answer = DNSTCP(add_length_prefix(synthesize_answer(message, REFUSED)))
    assert (answer.id, answer.qr, answer.rcode, answer.qd[0].qname) == (9, 1, 5, b"tcp.example.")


def test_a_query_without_a_question_gets_an_answer_without_one() -> None:
    answer = DNS(synthesize_answer(raw_query(b"", qdcount=0), REFUSED))
    assert (answer.qr, answer.qdcount, answer.rcode) == (1, 0, 5)


@pytest.mark.parametrize(
    ("message", "rcode", "reason"),
    [
        (query(), 16, "RCODE"),
        (query(), -1, "RCODE"),
        (bytes(DNS(qr=1, qd=DNSQR(qname="x.example"))), REFUSED, "other_protocol"),
        (raw_query(b"\xc0\x0c" + TAIL), REFUSED, "malformed"),
    ],
)
def test_what_cannot_be_answered_is_refused(message: bytes, rcode: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        synthesize_answer(message, rcode)


# --- fuzzing --------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert parse_query(data).status is not Status.NEED_MORE
    result = parse_tcp_query(data)
    if result.status is Status.NEED_MORE:
        assert result.needed > len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), max_size=4), st.integers(0, 80)
)
def test_damaged_queries_never_raise_and_answers_parse(
    damage: list[tuple[int, int]], cut: int
) -> None:
    message = bytearray(query("fuzz.example", ar=DNSRROPT()))
    for at, value in damage:
        message[at % len(message)] = value
    data = memoryview(bytes(message))[:cut]
    result = parse_query(data)
    if result.status is not Status.COMPLETE:
        with pytest.raises(ValueError):
            synthesize_answer(data, REFUSED)
        return
    answer = DNS(synthesize_answer(data, REFUSED))
    assert (answer.qr, answer.rcode, answer.ancount) == (1, REFUSED, 0)
    if result.name:
        assert answer.qd[0].qname.decode().lower() == result.name + "."
