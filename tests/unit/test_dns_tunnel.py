"""The shipped example inspector (appliance/inspectors/dns_tunnel.py) on queries scapy builds:
names people and clouds use pass, iodine- and dnscat2-shaped names drop their flow, and what is
no query, or no DNS at all, passes without an error."""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from appliance import flowverdict
from appliance.inspection import (
    DROP,
    DROP_FLOW,
    PASS,
    Inspector,
    Packet,
    from_ip_packet,
    load_inspector,
)
from appliance.inspectors.dns_tunnel import (
    MAX_NAME_LEN,
    MAX_RUN_LEN,
    entropy_bits,
    inspect,
    inspect_each_query,
    why_tunnel,
)

SPEC = "appliance.inspectors.dns_tunnel:inspect"


def query(qname: str, version: int = 4, qtype: str = "A") -> Packet:
    """A resolver's view of a client's query, as the worker shows it to the inspector."""
    dns = DNS(id=0x2F1C, rd=1, qd=DNSQR(qname=qname, qtype=qtype))
    ip = IP(src="10.1.0.5", dst="10.0.0.2") if version == 4 else IPv6(src="fd00::5", dst="fd00::2")
    return from_ip_packet(bytes(ip / UDP(sport=53124, dport=53) / dns))


def udp_payload(payload: bytes) -> Packet:
    return from_ip_packet(bytes(IP() / UDP(sport=53124, dport=53) / payload))


# Data the way the tools encode it (module doc: iodine's 57-character base32 labels, dnscat2's
# 62-character hex ones), from a fixed seed so a failure can be replayed.
_random = random.Random(20261201)


def iodine_name(size: int = 150) -> str:
    """A data query: a header character, then base32, cut into 57-character labels."""
    data = "p" + base64.b32encode(_random.randbytes(size)).decode().lower().rstrip("=")
    labels = [data[i : i + 57] for i in range(0, min(len(data), 200), 57)]
    return ".".join(labels) + ".t1.tunnel.example"


def dnscat_name(size: int = 60) -> str:
    data = _random.randbytes(size).hex()
    return ".".join(data[i : i + 62] for i in range(0, len(data), 62)) + ".c2.example.net"


PEOPLES_NAMES = [
    "www.example.com",
    "api.github.com",
    "login.microsoftonline.com",
    "_dmarc.example.com",
    "xn--bcher-kva.example",
    "internal-my-load-balancer-1234567890.us-west-2.elb.amazonaws.com",
    "k8s-default-myingres-1a2b3c4d5e-1234567890.elb.us-east-1.amazonaws.com",
    "vpce-0123456789abcdef0-abcdefgh.s3.us-east-1.vpce.amazonaws.com",
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9.yl4.eu-west-1.eks.amazonaws.com",
    "7tgz4slxsbmnfbxn5mvixgi4bi0icjme.lambda-url.us-east-1.on.aws",  # a random 32
    "4s6vtm5xlxlklvwe7hxgq6dqktzjyscw._domainkey.example.com",  # SES DKIM, a random 32
    "my-company-production-data-lake-eu-west-1-123456789012.s3.eu-west-1.amazonaws.com",
    "companyproductionanalyticsdatalakebucket.s3.amazonaws.com",  # words run together
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4.hashes.example-av.com",  # a SHA-1 in hex
    ".".join("20010db8000000000000000000000001"[::-1]) + ".ip6.arpa",
    "cdk-hnb659fds-assets-123456789012-ap-southeast-1.s3.dualstack.ap-southeast-1"
    ".amazonaws.com.my-namespace.svc.cluster.local",
]


@pytest.mark.parametrize("name", PEOPLES_NAMES)
@pytest.mark.parametrize("version", [4, 6])
def test_names_people_and_clouds_use_pass(name: str, version: int) -> None:
    assert why_tunnel(name) == ""
    assert inspect(query(name, version)) is PASS


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (iodine_name(), "a name of 249 characters"),
        (iodine_name(40), "a run of 57 characters without a hyphen"),
        (dnscat_name(), "a run of 62 characters without a hyphen"),
        ("dnscat." + _random.randbytes(31).hex() + ".example.org", "a run of 62 characters"),
        # A tool that keeps its labels short still fills the name.
        (".".join(["abcdefghijklmnop"] * 10) + ".example.com", "a name of 181 characters"),
        # Base32 data in 40-character labels: random, and without the vowels of words.
        ("xq4kz7mn2rtw5bv3cjp6lhs9dgf8kw2nq7zx4rtv.d.example.com", "looks random"),
    ],
    ids=["iodine", "iodine-short", "dnscat2", "dnscat2-prefixed", "long-name", "random-run"],
)
def test_tunnel_shaped_names_drop_their_flow(name: str, reason: str) -> None:
    assert reason in why_tunnel(name)
    assert inspect(query(name)) is DROP_FLOW
    assert inspect_each_query(query(name)) is DROP


def test_the_thresholds_sit_where_the_tools_are() -> None:
    assert why_tunnel("a" * MAX_RUN_LEN + ".example.com") == ""
    assert why_tunnel("a" * (MAX_RUN_LEN + 1) + ".example.com") != ""
    long_name = ".".join(["abcd"] * 40)[: MAX_NAME_LEN - 12] + ".example.com"
    assert len(long_name) <= MAX_NAME_LEN and why_tunnel(long_name) == ""
    assert why_tunnel("x" + long_name) != ""
    # The zone (the last two labels) is not judged: its owner chose it, once.
    assert why_tunnel("b" * 60 + ".www.example.com") != ""
    assert why_tunnel("www." + "b" * 60 + ".com") == ""


def test_many_tunnel_queries_are_caught() -> None:
    """Each query of a flow is judged until one fails: iodine's full queries always do."""
    assert all(inspect(query(iodine_name())) is DROP_FLOW for _ in range(50))


@pytest.mark.parametrize(
    ("text", "bits"), [("", 0.0), ("aaaa", 0.0), ("abab", 1.0), ("abcdefgh", 3.0)]
)
def test_entropy_is_shannons(text: str, bits: float) -> None:
    assert entropy_bits(text) == pytest.approx(bits)


def test_hex_never_looks_random() -> None:
    assert entropy_bits("0123456789abcdef" * 3) == pytest.approx(4.0)
    assert why_tunnel(_random.randbytes(26).hex() + ".example.com") == ""  # 52 hex digits


# --- what is no query -----------------------------------------------------------------------


def test_an_answer_is_not_judged() -> None:
    name = iodine_name()
    answer = DNS(id=1, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="192.0.2.1"))
    packet = from_ip_packet(bytes(IP() / UDP(sport=53, dport=53124) / answer), direction="reverse")
    assert inspect(packet) is PASS


def test_tcp_is_not_read() -> None:
    dns = DNS(rd=1, qd=DNSQR(qname=iodine_name()))
    packet = from_ip_packet(bytes(IP() / TCP(sport=53124, dport=53, flags="PA") / bytes(dns)))
    assert inspect(packet) is PASS


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00" * 5,
        b"GET / HTTP/1.1\r\n\r\n",
        bytes(DNS(rd=1, qd=DNSQR(qname=iodine_name())))[:40],  # cut short
        bytes(DNS(rd=1, qd=[DNSQR(qname="a.example"), DNSQR(qname="b.example")])),  # two
        bytes(DNS(rd=1, qd=[])),  # no question (a cookie-only query)
    ],
    ids=["empty", "zeros", "http", "truncated", "two-questions", "no-question"],
)
def test_what_is_no_readable_query_passes(payload: bytes) -> None:
    assert inspect(udp_payload(payload)) is PASS


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_payload_passes_or_drops_without_raising(payload: bytes) -> None:
    assert inspect(udp_payload(payload)) in (PASS, DROP_FLOW)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_a_real_query_cut_or_bent_anywhere_never_raises(cut: int, byte: int) -> None:
    message = bytearray(bytes(DNS(rd=1, qd=DNSQR(qname=iodine_name(60)))))
    message[cut % len(message)] = byte
    assert inspect(udp_payload(bytes(message[: cut or None]))) in (PASS, DROP_FLOW)


# --- as the appliance runs it ---------------------------------------------------------------


def test_it_loads_by_its_documented_spec_and_runs_inside_its_budget() -> None:
    inspector = Inspector(load_inspector(SPEC), "dns-tunnel", 1_000_000, "pass")
    assert inspector(query("www.example.com")) == (flowverdict.PASS_PLAIN, False)
    assert inspector(query(iodine_name())) == (flowverdict.DROP, True)
    assert (inspector.calls, inspector.errors) == (2, 0)
