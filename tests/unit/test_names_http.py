"""The HTTP/1.x Host parser against requests other code writes.

Oracles: Python's http.client writes a real request (Host with port, IPv6 brackets, IDNA) into a
capturing socket with no network, and scapy's HTTP layer builds requests field by field.
"""

from __future__ import annotations

import http.client

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.http import HTTP, HTTPRequest

from appliance.names.http import DEFAULT_MAX_BYTES, NOT_HTTP, parse_request_host
from appliance.names.result import Status


class CapturingSocket:
    """What http.client sends, kept instead of sent."""

    def __init__(self) -> None:
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


def client_request(
    host: str, method: str = "GET", url: str = "/", body: bytes | None = None
) -> bytes:
    connection = http.client.HTTPConnection(host)
    capture = CapturingSocket()
    connection.sock = capture  # type: ignore[assignment]
    connection.request(method, url, body=body, headers={"User-Agent": "test", "Cookie": "c=1"})
    return capture.sent


def scapy_request(**fields: bytes) -> bytes:
    return bytes(HTTP() / HTTPRequest(**fields))


def host_of(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    result = parse_request_host(data, max_bytes)
    assert result.status is Status.COMPLETE, result
    return result.name


# --- what clients send ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("www.example.com.", "www.example.com"),
        ("[2001:db8::1]:8080", "2001:db8::1"),
        ("[2001:DB8:0::1]", "2001:db8::1"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("192.0.2.1:81", "192.0.2.1"),
    ],
)
def test_http_client_requests_name_their_host(host: str, expected: str) -> None:
    assert host_of(client_request(host)) == expected


def test_a_request_with_a_body_is_named_by_its_headers() -> None:
    data = client_request("example.com", "POST", "/upload", b"\x16\x03\x01 binary body")
    assert host_of(data) == "example.com"


@pytest.mark.parametrize("method", [b"GET", b"POST", b"OPTIONS", b"PROPFIND", b"M-SEARCH"])
def test_scapy_requests_name_their_host(method: bytes) -> None:
    data = scapy_request(Method=method, Path=b"/a?b=c", Host=b"Scapy.Example", Accept=b"*/*")
    assert host_of(data) == "scapy.example"


def test_the_host_header_name_is_case_insensitive() -> None:
    for name in (b"host", b"HOST", b"hOsT"):
        assert host_of(b"GET / HTTP/1.1\r\n" + name + b":a.example\r\n\r\n") == "a.example"


def test_no_host_or_an_empty_host_is_complete_without_a_name() -> None:
    assert host_of(b"GET / HTTP/1.0\r\n\r\n") is None
    assert host_of(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n") is None
    assert host_of(b"GET / HTTP/1.1\r\nHost: \r\n\r\n") is None
    assert host_of(b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n") is None


def test_bare_line_feeds_and_leading_empty_lines_are_accepted() -> None:
    assert host_of(b"GET / HTTP/1.1\nHost: lf.example\n\n") == "lf.example"
    assert host_of(b"\r\n\nGET / HTTP/1.1\r\nHost: late.example\r\n\r\n") == "late.example"


# --- where the server sends it ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET http://abs.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n", "abs.example"),
        (b"GET HTTP://User:pw@abs.example:8080?q HTTP/1.1\r\n\r\n", "abs.example"),
        (b"GET https://[::1]/ HTTP/1.1\r\n\r\n", "::1"),
        (
            b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n",
            "tunnel.example",
        ),
        (b"GET /r?to=http://not.this/ HTTP/1.1\r\nHost: this.example\r\n\r\n", "this.example"),
    ],
)
def test_the_target_authority_wins_over_host(data: bytes, expected: str) -> None:
    """RFC 9112 §3.2.2: a server uses an absolute-form target's authority, not Host."""
    assert host_of(data) == expected


# --- prefixes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        client_request("split.example:8080"),
        scapy_request(Method=b"GET", Path=b"/", Host=b"split.example", Connection=b"close"),
        b"\r\nGET http://split.example/ HTTP/1.0\nX: y\n\n",
    ],
)
def test_a_request_split_at_every_byte_needs_more_until_its_header_block_ends(data: bytes) -> None:
    whole = memoryview(data)
    for cut in range(len(data)):
        result = parse_request_host(whole[:cut])
        assert result.status is Status.NEED_MORE, (cut, bytes(whole[:cut]))
        assert result.needed > cut
    assert host_of(data) == "split.example"


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01",  # TLS
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2's preface
        b"GET / HTTP/2\r\n",
        b"GET / HTTPS/1.1\r\n",
        b"GET / HTTP/1.1 \r\n",
        b"GET / HTTP/1.10\r\n",
        b" GET / HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b"GET /a b HTTP/1.1\r\n",
        b"GET /\x80 HTTP/1.1\r\n",
        b"G(T / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"A" * 33 + b" / HTTP/1.1\r\n",  # a method longer than any
        b"GET / HTTP/1.1\r\r\n",
        b"\r\r\n",
    ],
)
def test_what_cannot_start_a_request_is_not_http(data: bytes) -> None:
    assert parse_request_host(data) == NOT_HTTP


def test_not_http_is_said_at_the_first_impossible_byte() -> None:
    assert parse_request_host(b"\x16") == NOT_HTTP
    assert parse_request_host(b"GET / HTTP/1.1x") == NOT_HTTP
    assert parse_request_host(b"GET / HTTP/2") == NOT_HTTP
    assert parse_request_host(b"GET / HTTP/1.1\r").status is Status.NEED_MORE


# --- malformed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        b"Host: a.example\r\nHost: b.example\r\n",
        b"Host: a.example\r\nhost: a.example\r\n",
        b"Host : a.example\r\n",
        b"Host: a.example\r\n folded\r\n",
        b"NoColon\r\n",
        b": empty-name\r\n",
        b"X: a\rb\r\n",
        b"X: a\x00b\r\n",
        b"Host: a b.example\r\n",
        b"Host: a.example:80x\r\n",
        b"Host: a.example:80:90\r\n",
        b"Host: :80\r\n",
        b"Host: caf\xc3\xa9.example\r\n",
        b"Host: [::1\r\n",
        b"Host: [not-an-address]\r\n",
        b"Host: [fe80::1%25eth0]\r\n",
        b"Host: [::1]x\r\n",
        b"Host: user@a.example\r\n",
    ],
)
def test_malformed_header_blocks_are_malformed(headers: bytes) -> None:
    result = parse_request_host(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert result.status is Status.MALFORMED


def test_an_empty_absolute_form_authority_is_malformed() -> None:
    assert parse_request_host(b"GET http:///x HTTP/1.1\r\n\r\n").status is Status.MALFORMED


def test_a_header_block_longer_than_the_bound_is_malformed() -> None:
    data = client_request("bound.example")
    assert host_of(data, max_bytes=len(data)) == "bound.example"
    assert parse_request_host(data, max_bytes=len(data) - 1).status is Status.MALFORMED
    assert parse_request_host(data[:-1], max_bytes=len(data) - 1).status is Status.MALFORMED
    assert parse_request_host(data[:-1], max_bytes=len(data)).status is Status.NEED_MORE
    assert parse_request_host(b"GET /" + b"a" * 100, max_bytes=50).status is Status.MALFORMED


# --- fuzzing --------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_request_host(data, max_bytes=200)
    if result.status is Status.NEED_MORE:
        assert result.needed > len(data)


REQUEST_BYTES = st.sampled_from([*b"GET /HTP1.\r\n:hostxample[]@*", 0, 0x80, 0x20, 0x09])


@settings(max_examples=500, deadline=None)
@given(st.lists(REQUEST_BYTES, max_size=80), st.integers(0, 80))
def test_request_like_bytes_never_raise(tail: list[int], cut: int) -> None:
    data = b"GET / HTTP/1.1\r\nHost: " + bytes(tail)
    result = parse_request_host(memoryview(data)[: 16 + cut])
    if result.status is Status.COMPLETE and result.name is not None:
        assert result.name == result.name.lower()
