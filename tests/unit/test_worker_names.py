"""Egress by name through the worker loop and a fake backend (no root): TLS server names and HTTP
Hosts in the client's first bytes (one segment, several, out of order, retransmitted), DNS
questions judged per query and refused with an answer, resets both ways, audit mode, and flows
that never show a name. Packets are built by scapy and real ClientHellos by Python's ssl module;
every generated packet is read back by scapy."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw, raw
from test_worker_flows import TENANT_1, gwlb
from test_worker_loop import Datagram, FakeIO, worker_over

from appliance.counters import snapshot
from appliance.worker import Worker
from config.loader import parse_config

CLIENT, SERVER = "10.0.0.1", "10.9.9.9"
ISN, SERVER_ISN = 1000, 5000


def client_hello(name: str | None) -> bytes:
    """A genuine ClientHello (OpenSSL's, through a memory BIO: no network)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def policy(rules: str, default: str = "drop", extra: str = ""):
    return parse_config(f'[policy]\ndefault = "{default}"\n{extra}\n{rules}').policy


ALLOW_GITHUB = """
[[policy.rules]]
name = "github"
action = "pass"
match = { tls_sni = ["github.com", "*.github.com"] }
[[policy.rules]]
name = "web"
action = "pass"
match = { http_host = ["example.com"] }
"""

DENY_EVIL = """
[[policy.rules]]
name = "evil"
action = "reject"
match = { tls_sni = ["evil.example"] }
"""


class Conversation:
    """One TCP connection through a worker, packet by packet (each its own batch)."""

    def __init__(self, worker: Worker, io: FakeIO, sport: int = 40000, dport: int = 443) -> None:
        self.worker, self.io, self.sport, self.dport = worker, io, sport, dport

    def client(self, flags: str, seq: int, payload: bytes = b"", ack: int = SERVER_ISN + 1):
        segment = TCP(sport=self.sport, dport=self.dport, flags=flags, seq=seq, ack=ack)
        return self.send(IP(src=CLIENT, dst=SERVER) / segment / Raw(payload))

    def server(self, flags: str, seq: int, payload: bytes = b"", ack: int = ISN + 1):
        segment = TCP(sport=self.dport, dport=self.sport, flags=flags, seq=seq, ack=ack)
        return self.send(IP(src=SERVER, dst=CLIENT) / segment / Raw(payload))

    def send(self, inner: Packet) -> bytes | None:
        """The reply to this packet (None: none), its extras in io.sent_extra."""
        self.io.sent.clear()
        self.io.sent_extra.clear()
        data = gwlb(inner)
        self.worker.process(self.io.lay([Datagram(data)]))
        self.worker.flush()
        return self.io.sent[0].data if self.io.sent else None

    def handshake(self) -> None:
        assert self.client("S", ISN) is not None
        assert self.server("SA", SERVER_ISN) is not None
        assert self.client("A", ISN + 1) is not None


def inner_of(reply: bytes) -> Packet:
    version = reply[40] >> 4
    return (IP if version == 4 else IPv6)(reply[40:])


def start(rules: str, **kw: str) -> tuple[Worker, FakeIO]:
    io = FakeIO()
    return worker_over(io, policy(rules, **kw)), io


def counters(worker: Worker) -> dict[str, object]:
    return snapshot(worker.counters, tuple(r.name for r in worker.policy.rules))


def test_an_allowed_server_name_passes_the_hello_that_names_it_and_the_flow() -> None:
    worker, io = start(ALLOW_GITHUB)
    talk = Conversation(worker, io)
    talk.handshake()
    hello = client_hello("api.github.com")
    assert talk.client("PA", ISN + 1, hello) is not None  # decided on it, and it goes on
    assert talk.server("PA", SERVER_ISN + 1, b"server hello") is not None
    assert talk.client("PA", ISN + 1 + len(hello), b"more") is not None
    assert counters(worker)["hits_by_rule"] == {"github": 1}


def test_a_name_no_rule_passes_falls_to_the_default_and_nothing_of_it_reaches_the_server() -> None:
    worker, io = start(ALLOW_GITHUB)
    talk = Conversation(worker, io)
    talk.handshake()
    assert talk.client("PA", ISN + 1, client_hello("gitlab.com")) is None
    assert talk.client("PA", ISN + 1, client_hello("gitlab.com")) is None  # retransmitted
    assert talk.server("A", SERVER_ISN + 1) is None  # the flow is dropped both ways now


def test_a_hello_in_several_segments_is_held_until_whole_and_then_decides() -> None:
    worker, io = start(ALLOW_GITHUB)
    talk = Conversation(worker, io)
    talk.handshake()
    hello = client_hello("github.com")
    parts = [hello[:100], hello[100:200], hello[200:]]
    # The last part first, then the first: out of order, so only the middle completes it.
    assert talk.client("PA", ISN + 1 + 200, parts[2]) is None
    assert talk.client("PA", ISN + 1, parts[0]) is None
    assert counters(worker)["name_held"] == 2
    assert talk.client("PA", ISN + 1 + 100, parts[1]) is not None  # whole: github.com
    assert talk.client("PA", ISN + 1, parts[0]) is not None  # TCP's retransmissions pass now
    assert talk.client("PA", ISN + 1 + 200, parts[2]) is not None


def test_a_refused_name_is_reset_both_ways() -> None:
    worker, io = start(DENY_EVIL, default="pass")
    talk = Conversation(worker, io)
    talk.handshake()
    hello = client_hello("evil.example")
    reply = talk.client("PA", ISN + 1, hello)
    assert reply is not None and len(io.sent_extra) == 1
    assert reply[:40] == gwlb(IP())[:40] == io.sent_extra[0].data[:40]  # the flow's Geneve
    to_client, to_server = inner_of(reply), inner_of(io.sent_extra[0].data)
    # To the client: from the server, RST for what its segment acknowledged (RFC 9293).
    assert (to_client.src, to_client.dst, to_client[TCP].sport) == (SERVER, CLIENT, 443)
    assert to_client[TCP].flags == "R" and to_client[TCP].seq == SERVER_ISN + 1
    # To the server: from the client, at the first byte the server has not seen.
    assert (to_server.src, to_server.dst, to_server[TCP].dport) == (CLIENT, SERVER, 443)
    assert "R" in to_server[TCP].flags and to_server[TCP].seq == ISN + 1
    for packet in (to_client, to_server):  # scapy recomputes: the checksums we sent are right
        again = packet.copy()
        del again[IP].chksum, again[TCP].chksum
        assert raw(again) == raw(packet)
    counted = counters(worker)
    assert counted["rejects_sent"] == 1 and counted["hits_by_rule"] == {"evil": 1}
    assert talk.server("A", SERVER_ISN + 1) is not None  # a reset answers the server's too
    assert inner_of(io.sent[0].data)[TCP].flags.R


def test_tls_without_a_server_name_can_be_refused() -> None:
    rules = '[[policy.rules]]\nname = "no-sni"\naction = "drop"\nmatch = { tls_sni = [""] }\n'
    worker, io = start(rules, default="pass")
    for sport, name, passes in ((40001, None, False), (40002, "github.com", True)):
        talk = Conversation(worker, io, sport=sport)
        talk.handshake()
        assert (talk.client("PA", ISN + 1, client_hello(name)) is not None) is passes


def test_the_http_host_decides_a_plain_http_flow_split_anywhere() -> None:
    request = b"GET / HTTP/1.1\r\nHost: Example.COM.\r\nUser-Agent: t\r\n\r\n"
    for cut in (5, 20, len(request) - 1):
        worker, io = start(ALLOW_GITHUB)
        talk = Conversation(worker, io, dport=8080)
        talk.handshake()
        assert talk.client("PA", ISN + 1, request[:cut]) is None
        assert talk.client("PA", ISN + 1 + cut, request[cut:]) is not None
    worker, io = start(ALLOW_GITHUB)
    talk = Conversation(worker, io, dport=80)
    talk.handshake()
    assert talk.client("PA", ISN + 1, b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n") is None


def test_a_flow_that_never_shows_a_name_is_decided_without_one() -> None:
    # SSH: the server speaks first, the client answers with its own banner; neither is a name.
    rules = (
        ALLOW_GITHUB + '[[policy.rules]]\nname = "ssh"\naction = "pass"\nmatch = { port = 22 }\n'
    )
    worker, io = start(rules)
    talk = Conversation(worker, io, dport=22)
    talk.handshake()
    assert talk.server("PA", SERVER_ISN + 1, b"SSH-2.0-OpenSSH_9.2\r\n") is not None
    assert talk.client("PA", ISN + 1, b"SSH-2.0-client\r\n") is not None
    worker, io = start(ALLOW_GITHUB, extra="name_packets = 3")
    talk = Conversation(worker, io, dport=443)
    talk.handshake()
    hello = client_hello("github.com")
    for k in range(2):  # a hello dribbled one byte at a time never completes within 3
        assert talk.client("PA", ISN + 1 + k, hello[k : k + 1]) is None
    assert talk.client("PA", ISN + 3, hello[2:3]) is None  # the bound: the default decides
    assert worker.flows.active == 1 and talk.client("PA", ISN + 1, hello) is None


def dns_query(name: str, sport: int = 5353, qid: int = 7) -> Packet:
    return (
        IP(src=CLIENT, dst=SERVER)
        / UDP(sport=sport, dport=53)
        / DNS(id=qid, rd=1, qd=DNSQR(qname=name))
    )


DNS_RULES = """
[[policy.rules]]
name = "no-tracker"
action = "reject"
match = { dns_name = ["*.tracker.example"] }
"""


@pytest.mark.parametrize("rcode", ["refused", "nxdomain"])
def test_each_dns_query_is_judged_by_its_own_name_and_a_refusal_answered(rcode: str) -> None:
    worker, io = start(DNS_RULES, default="pass", extra=f'dns_reject = "{rcode}"')
    talk = Conversation(worker, io)
    assert talk.send(dns_query("www.example.com")) is not None
    reply = talk.send(dns_query("ads.tracker.example", qid=99))  # the same socket: same flow
    assert reply is not None and reply[:40] == gwlb(IP())[:40]
    answer = inner_of(reply)
    assert (answer.src, answer.dst, answer[UDP].sport, answer[UDP].dport) == (
        SERVER, CLIENT, 53, 5353,
    )  # fmt: skip
    assert answer[DNS].id == 99 and answer[DNS].qr == 1
    assert answer[DNS].rcode == {"refused": 5, "nxdomain": 3}[rcode]
    assert answer[DNS].qd[0].qname == b"ads.tracker.example."
    again = answer.copy()
    del again[IP].chksum, again[UDP].chksum, again[IP].len, again[UDP].len
    assert raw(again) == raw(answer)
    assert talk.send(dns_query("www.example.com")) is not None  # the next query is its own
    assert counters(worker)["rejects_sent"] == 1


def test_a_dns_answer_over_ipv6_has_its_udp_checksum() -> None:
    worker, io = start(DNS_RULES, default="pass")
    query = (
        IPv6(src="fd00::1", dst="fd00::53")
        / UDP(sport=5353, dport=53)
        / DNS(id=3, qd=DNSQR(qname="x.tracker.example"))
    )
    io.sent.clear()
    worker.process(io.lay([Datagram(gwlb_v6(query))]))
    worker.flush()
    answer = inner_of(io.sent[0].data)
    assert answer[DNS].rcode == 5 and answer[UDP].chksum != 0
    again = answer.copy()
    del again[UDP].chksum
    assert raw(again) == raw(answer)


def gwlb_v6(inner: Packet) -> bytes:
    data = bytearray(gwlb(IP()))
    data[2:4] = b"\x86\xdd"
    return bytes(data[:40]) + raw(inner)


def test_audit_mode_counts_what_it_would_refuse_and_lets_it_pass() -> None:
    rules = DENY_EVIL.replace('action = "reject"', 'action = "reject"\nmode = "audit"')
    worker, io = start(rules, default="pass")
    talk = Conversation(worker, io)
    talk.handshake()
    assert talk.client("PA", ISN + 1, client_hello("evil.example")) is not None
    counted = counters(worker)
    assert counted["audited"] == 1 and counted["audited_by_rule"] == {"evil": 1}
    worker, io = start(ALLOW_GITHUB, extra='mode = "audit"')
    talk = Conversation(worker, io)
    talk.handshake()
    assert talk.client("PA", ISN + 1, client_hello("gitlab.com")) is not None
    assert counters(worker)["audited"] == 1


def test_only_flows_that_can_carry_a_name_wait_for_one() -> None:
    worker, io = start(ALLOW_GITHUB, default="pass")
    talk = Conversation(worker, io)
    assert (
        talk.send(IP(src=CLIENT, dst=SERVER) / UDP(sport=1, dport=443) / Raw(b"quic")) is not None
    )
    assert worker.flows.active == 1 and counters(worker)["name_held"] == 0
    assert TENANT_1  # the flows are the default endpoint's


# ---- hostile handshakes: random segments never knock the worker over ---------------------------

HELLO = client_hello("github.com")
PIECES = [
    HELLO[:5],
    HELLO[5:80],
    HELLO[80:],
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"\x16\x03\x01\xff\xff",  # a record longer than TLS allows
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a hello too short for itself
    b"x" * 1400,
]
segments = st.lists(
    st.tuples(
        st.booleans(),  # from the client?
        st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA", ""]),
        st.integers(0, 4000),  # sequence offset from the ISN (wrapping with the ISN below)
        st.sampled_from(PIECES) | st.binary(max_size=300),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=segments, isn=st.sampled_from([ISN, 2**32 - 100]), limit=st.sampled_from([512, 16384]))
def test_random_segments_never_raise_and_hold_no_more_than_the_bounds(
    batch: list[tuple[bool, str, int, bytes]], isn: int, limit: int
) -> None:
    """Segments in any order, flags, overlaps and garbage, around a wrapping sequence number:
    the worker answers each within the batch, holds at most name_bytes per flow (and the cap
    overall), and a flow it decided keeps its verdict."""
    worker, io = start(ALLOW_GITHUB, extra=f"name_bytes = {limit}\nname_packets = 8")
    talk = Conversation(worker, io)
    for from_client, flags, offset, payload in batch:
        seq = (isn + offset) % 2**32
        if from_client:
            talk.client(flags, seq, payload, ack=SERVER_ISN + 1)
        else:
            talk.server(flags, seq, payload)
        for flow in worker.flows.flows():
            watch = flow.watch
            if watch is not None and watch.head is not None:
                assert watch.head.contiguous_len <= limit
        assert worker._held.held <= limit * max(1, worker.flows.active)
    assert worker.flows.active <= 1
