"""The TLS ClientHello parser against real ClientHellos.

Two oracles: Python's `ssl` module (OpenSSL) writes a genuine ClientHello into a MemoryBIO with
no network at all, and scapy's TLS layer builds ClientHellos field by field, broken on purpose
where a field is given explicitly, and dissects OpenSSL's so the server name we read is the one
scapy reads.
"""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.names.result import Status
from appliance.names.tls import (
    EXT_ENCRYPTED_CLIENT_HELLO,
    MAX_RECORD_LEN,
    NOT_TLS,
    parse_client_hello,
)

try:
    import cryptography  # noqa: F401  (scapy's TLS layer cannot build a record without it)
    from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName, TLS_Ext_Unknown
    from scapy.layers.tls.handshake import TLSClientHello, TLSServerHello
    from scapy.layers.tls.record import TLS

    SCAPY_TLS = True
except ImportError:
    SCAPY_TLS = False

needs_scapy_tls = pytest.mark.skipif(
    not SCAPY_TLS, reason="scapy's TLS layer needs the cryptography package (a test extra)"
)

RECORD = struct.Struct("!BHH")  # content type, version, length


def openssl_hello(name: str | None, version: ssl.TLSVersion | None = None) -> bytes:
    """The ClientHello OpenSSL sends for `server_hostname=name`, as one record."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshake_of(stream: bytes) -> bytes:
    """The handshake bytes of a stream of handshake records."""
    out, at = b"", 0
    while at < len(stream):
        _, _, length = RECORD.unpack_from(stream, at)
        out += stream[at + 5 : at + 5 + length]
        at += 5 + length
    return out


def records(handshake: bytes, size: int, version: int = 0x0301) -> bytes:
    """`handshake` fragmented into handshake records of `size` bytes (the last one shorter)."""
    chunks = [handshake[at : at + size] for at in range(0, len(handshake), size)]
    return b"".join(RECORD.pack(22, version, len(chunk)) + chunk for chunk in chunks)


def scapy_hello(*extensions: object) -> bytes:
    """A ClientHello with exactly these extensions (scapy adds its own when given None)."""
    return bytes(TLS(msg=[TLSClientHello(ext=list(extensions))]))


def sni(*names: bytes) -> object:
    return TLS_Ext_ServerName(servernames=[ServerName(servername=name) for name in names])


# --- genuine ClientHellos -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("example.org", "example.org"),
        ("WWW.Example.ORG", "www.example.org"),
        ("a.", "a"),  # OpenSSL sends the dot; we drop it
        ("bücher.de", "xn--bcher-kva.de"),  # ssl encodes it with IDNA
        ("_service.x-y.example", "_service.x-y.example"),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None),  # 253 characters
    ],
)
@pytest.mark.parametrize("version", [None, ssl.TLSVersion.TLSv1_2])
def test_openssl_client_hellos_name_their_server(
    hostname: str, expected: str | None, version: ssl.TLSVersion | None
) -> None:
    hello = openssl_hello(hostname, version)
    result = parse_client_hello(hello)
    assert result.status is Status.COMPLETE
    assert result.name == (expected or hostname)
    assert not result.ech


@needs_scapy_tls
@pytest.mark.parametrize("hostname", ["example.org", "Mixed.Case.Example"])
def test_scapy_reads_the_same_name_from_openssls_hello(hostname: str) -> None:
    hello = openssl_hello(hostname)
    (dissected,) = TLS(hello).msg[0].ext[0].servernames
    assert parse_client_hello(hello).name == dissected.servername.decode().lower()


@pytest.mark.parametrize("hostname", [None, "192.0.2.7", "2001:db8::1"])
def test_a_hello_without_server_name_is_complete_without_a_name(hostname: str | None) -> None:
    """OpenSSL sends no server_name for no name or an IP address (RFC 6066 §3)."""
    result = parse_client_hello(openssl_hello(hostname))
    assert (result.status, result.name) == (Status.COMPLETE, None)


@pytest.mark.parametrize("as_type", [bytes, bytearray, memoryview])
def test_any_buffer_type_is_read(as_type: type) -> None:
    assert parse_client_hello(as_type(openssl_hello("example.org"))).name == "example.org"


# --- prefixes and fragmentation --------------------------------------------------------------


@pytest.mark.parametrize("version", [None, ssl.TLSVersion.TLSv1_2])
def test_every_prefix_needs_more_with_the_exact_length(version: ssl.TLSVersion | None) -> None:
    hello = openssl_hello("example.org", version)
    whole = memoryview(hello)  # slices of it: a read past a prefix's end would see the rest
    for cut in range(len(hello)):
        result = parse_client_hello(whole[:cut])
        assert result.status is Status.NEED_MORE, cut
        assert cut < result.needed <= len(hello)
        if cut >= 5:  # the record header says how long the record is
            assert result.needed == len(hello)
    assert parse_client_hello(whole).name == "example.org"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 300, 511])
def test_a_hello_fragmented_across_records_is_gathered(size: int) -> None:
    stream = records(handshake_of(openssl_hello("frag.example.org")), size)
    for cut in range(len(stream)):
        result = parse_client_hello(stream[:cut])
        assert result.status is Status.NEED_MORE, cut
        assert cut < result.needed <= len(stream)
    assert parse_client_hello(stream).name == "frag.example.org"


def test_records_after_the_hello_are_not_read() -> None:
    hello = openssl_hello("example.org")
    early_data = RECORD.pack(23, 0x0303, 3) + b"xyz"
    assert parse_client_hello(hello + early_data).name == "example.org"
    assert parse_client_hello(hello + b"\xff" * 10).name == "example.org"


def test_a_record_other_than_handshake_before_the_hello_is_whole_is_malformed() -> None:
    handshake = handshake_of(openssl_hello("example.org"))
    alert = RECORD.pack(21, 0x0303, 2) + b"\x01\x00"
    stream = records(handshake[:100], 100) + alert + records(handshake[100:], 1000)
    assert parse_client_hello(stream).status is Status.MALFORMED
    # and so is a next record that does not even start as a TLS record
    assert parse_client_hello(records(handshake[:100], 100) + b"G").status is Status.MALFORMED


@needs_scapy_tls
def test_a_hello_longer_than_a_record_must_be_fragmented() -> None:
    big = TLS_Ext_Unknown(type=0x1234, val=b"\x00" * 20000)
    hello = scapy_hello(sni(b"big.example"), big)
    handshake = handshake_of(hello)  # scapy wrote one record over 2^14: not allowed
    assert len(handshake) > MAX_RECORD_LEN
    assert parse_client_hello(hello).status is Status.MALFORMED
    stream = records(handshake, MAX_RECORD_LEN)
    assert parse_client_hello(stream).name == "big.example"
    assert parse_client_hello(stream[:-1]).needed == len(stream)


# --- ECH, and what scapy builds -------------------------------------------------------------


@needs_scapy_tls
def test_encrypted_client_hello_is_flagged_and_the_outer_name_returned() -> None:
    ech = TLS_Ext_Unknown(type=EXT_ENCRYPTED_CLIENT_HELLO, val=b"\x00" + b"\x5a" * 60)
    result = parse_client_hello(scapy_hello(sni(b"public.example"), ech))
    assert (result.status, result.name, result.ech) == (Status.COMPLETE, "public.example", True)
    assert parse_client_hello(scapy_hello(ech)).ech
    assert not parse_client_hello(scapy_hello(sni(b"public.example"))).ech


@needs_scapy_tls
def test_a_scapy_hello_without_extensions_has_no_name() -> None:
    """Not even the extensions' length: SSL 3.0 and TLS 1.0 allow a hello to end there."""
    hello = scapy_hello()
    assert hello.endswith(b"\x01\x00")  # one compression method, null, and nothing after it
    result = parse_client_hello(hello)
    assert (result.status, result.name) == (Status.COMPLETE, None)


# --- not TLS, and malformed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x80\x2e\x01\x00\x02\x00\x15",  # an SSLv2-compatible hello
        b"\x16\x02",  # a handshake record with major version 2
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
    ],
)
def test_what_is_not_a_tls_handshake_is_not_tls(data: bytes) -> None:
    assert parse_client_hello(data) == NOT_TLS
    assert parse_client_hello(data[:2]) == NOT_TLS  # the first two bytes say so already


@needs_scapy_tls
def test_a_handshake_that_is_not_a_client_hello_is_not_tls() -> None:
    server_hello = bytes(TLS(msg=[TLSServerHello()]))
    assert parse_client_hello(server_hello) == NOT_TLS
    assert parse_client_hello(server_hello[:6]) == NOT_TLS


def hand_hello(extensions: bytes, session_id: bytes = b"", suites: bytes = b"\x13\x01") -> bytes:
    """A ClientHello record built by hand, for breakage scapy will not emit."""
    body = b"\x03\x03" + b"\x11" * 32 + bytes([len(session_id)]) + session_id
    body += len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return RECORD.pack(22, 0x0301, len(handshake)) + handshake


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def sni_data(*entries: tuple[int, bytes]) -> bytes:
    listed = b"".join(bytes([kind]) + len(name).to_bytes(2, "big") + name for kind, name in entries)
    return len(listed).to_bytes(2, "big") + listed


def test_the_hand_built_hello_reads() -> None:
    hello = hand_hello(extension(0, sni_data((0, b"ok.example"))))
    assert parse_client_hello(hello).name == "ok.example"


@pytest.mark.parametrize(
    "hello",
    [
        hand_hello(extension(0, sni_data((0, b"a.example"), (0, b"b.example")))),
        hand_hello(extension(0, sni_data((1, b"a.example")))),
        hand_hello(extension(0, sni_data((0, b"")))),
        hand_hello(extension(0, sni_data((0, b"caf\xc3\xa9.example")))),
        hand_hello(extension(0, sni_data((0, b"evil\x00.good.example")))),
        hand_hello(extension(0, sni_data((0, b"a..example")))),
        hand_hello(extension(0, sni_data((0, b"a.example"))) + b"\x00"),  # a list too long
        hand_hello(extension(0, b"")),
        hand_hello(extension(0, sni_data((0, b"a.example"))) * 2),  # server_name twice
        hand_hello(extension(0x0A, b"\x00\x02\x00\x1d") * 2),  # any extension twice
        hand_hello(b"", session_id=b"\x00" * 33),
        hand_hello(b"", suites=b"\x13"),  # an odd cipher suites length
        hand_hello(b"", suites=b""),
        hand_hello(b"\x00\x00\x00\x05"),  # an extension running past the block
        hand_hello(b"\x00"),  # half an extension header
    ],
)
def test_malformed_hellos_are_malformed(hello: bytes) -> None:
    assert parse_client_hello(hello).status is Status.MALFORMED


def test_an_empty_extensions_block_is_complete_without_a_name() -> None:
    assert parse_client_hello(hand_hello(b"")).name is None


@pytest.mark.parametrize(
    ("record_length", "handshake_length"),
    [(0, 100), (MAX_RECORD_LEN + 1, 100), (100, 3), (100, 40), (100, 2**24 - 1)],
)
def test_lengths_out_of_bounds_are_malformed(record_length: int, handshake_length: int) -> None:
    header = RECORD.pack(22, 0x0301, record_length)
    handshake = b"\x01" + handshake_length.to_bytes(3, "big")
    assert parse_client_hello(header + handshake + b"\x03" * 50).status is Status.MALFORMED


def test_a_record_version_is_3_anything() -> None:
    """Servers ignore the record's minor version (RFC 8446 §5.1); only the major is checked."""
    handshake = handshake_of(openssl_hello("example.org"))
    for version in (0x0300, 0x0301, 0x0303, 0x03FF):
        assert parse_client_hello(records(handshake, 10000, version)).name == "example.org"


def test_fields_overrunning_the_hello_are_malformed() -> None:
    """Every length inside the body points past its end: never an IndexError."""
    handshake = bytearray(handshake_of(hand_hello(extension(0, sni_data((0, b"a.example"))))))
    for at in range(4, len(handshake)):
        broken = bytearray(handshake)
        broken[at] = 0xFF
        result = parse_client_hello(records(bytes(broken), 10000))
        assert result.status in (Status.MALFORMED, Status.COMPLETE)


# --- fuzzing --------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_client_hello(data)
    if result.status is Status.NEED_MORE:
        assert result.needed > len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 7, 100, 600]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.integers(0, 10**6),
)
def test_damaged_hellos_never_raise_nor_read_past_the_end(
    size: int, damage: list[tuple[int, int]], cut: int
) -> None:
    stream = bytearray(records(handshake_of(openssl_hello("fuzz.example")), size))
    for at, value in damage:
        stream[at % len(stream)] = value
    view = memoryview(bytes(stream))
    prefix = view[: cut % (len(view) + 1)]
    result = parse_client_hello(prefix)
    if result.status is Status.NEED_MORE:
        assert result.needed > len(prefix)
    if result.status is Status.COMPLETE and result.name is not None:
        assert result.name == result.name.lower().strip(".")
        assert result.name.isascii()
