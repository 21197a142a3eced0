"""The worker loop through its batch I/O seam (appliance.batch), and the socket backend behind it.

The loop is driven by `FakeIO`, a BatchIO with no sockets: the test lays datagrams into its slots
(over whatever an earlier datagram left there), and `flush` records the replies the loop queued.
scapy is the oracle for rewritten bytes and reply headers; datapath.handle_datagram (the full
path, on a clean copy) is the reference for what each datagram deserves. The socket backend is
exercised on loopback only, without root: its replies go out through a UDP socket instead of the
raw one, so they arrive at the sender as UDP payload (our IPv4+UDP header, then the datagram).
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import socket
import struct
import tracemalloc
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from appliance.batch import NO_REPLY, ROOM, TRUNCATED
from appliance.batchio import SLOT_BYTES, ReceiveBatch, SendBatch, SocketBatchIO
from appliance.counters import Counter, new_counters, snapshot
from appliance.datapath import Outcome, handle_datagram
from appliance.geneve import GENEVE_PORT
from appliance.policy import Policy
from appliance.sockets import IP_PKTINFO, SO_RXQ_OVFL
from appliance.sources import SourceFilter
from appliance.worker import Worker
from config.loader import default_config_path, parse_config

WEAK, STRONG = b"weakly typed", b"strongly typed"
RULES = ("drop-me", "weakly-to-strongly-typed", "icmp-echo-every-fifth", "icmpv6-echo-every-fifth")
GWLB_NODE, LOCAL = "10.77.0.9", "10.77.0.2"
OPTIONS = (
    bytes.fromhex("01080102")
    + bytes(8)
    + bytes.fromhex("01080202")
    + bytes(8)
    + bytes.fromhex("01080301")
    + bytes.fromhex("0badf00d")
)


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def geneve(protocol: int) -> bytes:
    return struct.pack("!BBHI", 8, 0, protocol, 0) + OPTIONS


def wrap(inner: bytes) -> bytes:
    return geneve(0x86DD if inner[0] >> 4 == 6 else 0x0800) + inner


@dataclass(frozen=True)
class Datagram:
    data: bytes
    flags: int = 0
    port: int = 40001  # the GWLB node's source port
    peer: str = GWLB_NODE
    local: str = LOCAL


@dataclass(frozen=True)
class Reply:
    index: int
    data: bytes
    port: int
    peer: int
    local: int


class FakeIO:
    """A BatchIO over a plain bytearray. Slots are ROOM bytes and a little more, each datagram
    at an odd offset in its slot (the loop must not assume the socket backend's layout)."""

    STRIDE, OFFSET = ROOM + 64, 7

    def __init__(self, size: int = 16, stale: bytes = b"") -> None:
        """`stale`: what an earlier datagram left in every slot, from the datagram's start on
        (repeated to the slot's end)."""
        self.size = size
        self.buffer = bytearray(self.STRIDE * size)
        if stale:
            room = self.STRIDE - self.OFFSET
            for start in self.starts(size):
                self.buffer[start : start + room] = (stale * (room // len(stale) + 1))[:room]
        self.replies = [NO_REPLY] * size
        self.inbox: list[list[Datagram]] = []  # batches that receive() will hand out, in order
        self.sent: list[Reply] = []
        self.extras: list[tuple[int, bytes]] = []
        self.sent_extra: list[Reply] = []  # extras, in the order flush sent them
        self.refuse: dict[int, int] = {}  # datagram index -> errno the "kernel" answers with
        self.rx_dropped = 0  # what the "kernel" dropped for a full receive buffer, so far
        self._batch: list[Datagram] = []

    def lay(self, datagrams: list[Datagram]) -> int:
        """Put a batch into the slots, as a receive would; return its size."""
        assert 0 < len(datagrams) <= self.size
        for start, d in zip(self.starts(len(datagrams)), datagrams, strict=True):
            self.buffer[start : start + len(d.data)] = d.data
        self._batch = list(datagrams)
        return len(datagrams)

    def receive(self) -> int:
        return self.lay(self.inbox.pop(0)) if self.inbox else 0

    def starts(self, n: int) -> tuple[int, ...]:
        return tuple(i * self.STRIDE + self.OFFSET for i in range(n))

    def results(self, n: int) -> tuple[int, ...]:
        return tuple(v for d in self._batch[:n] for v in (d.flags, len(d.data)))

    def senders(self, n: int) -> tuple[int, ...]:
        return tuple(v for d in self._batch[:n] for v in (d.port, ip(d.peer)))

    def destinations(self, n: int) -> tuple[int, ...]:
        return tuple(ip(d.local) for d in self._batch[:n])

    def extra(self, i: int, datagram: bytes) -> None:
        self.extras.append((i, datagram))

    def flush(self, n: int) -> tuple[int, list[int]]:
        sent, failures = 0, []
        for i, datagram in self.extras:  # after the replies, as the socket backend sends them
            d = self._batch[i]
            self.sent_extra.append(Reply(i, datagram, d.port, ip(d.peer), ip(d.local)))
        self.extras.clear()
        for i, start in enumerate(self.starts(n)):
            length, self.replies[i] = self.replies[i], NO_REPLY
            if length == NO_REPLY:
                continue
            if i in self.refuse:
                failures.append(self.refuse[i])
                continue
            d = self._batch[i]
            data = bytes(self.buffer[start : start + length])
            self.sent.append(Reply(i, data, d.port, ip(d.peer), ip(d.local)))
            sent += 1
        assert self.replies == [NO_REPLY] * self.size  # nothing queued past the batch
        return sent, failures


def worker_over(io: FakeIO, policy, sources: SourceFilter | None = None) -> Worker:
    return Worker.over(io, policy, new_counters(), sources)


FLOW_COUNTERS = {"flows_active", "flows_created", "flows_expired", "flows_evicted"}


def counted(worker: Worker) -> dict[str, object]:
    """The packet counters (the flow table's are test_worker_flows.py's)."""
    return {k: v for k, v in snapshot(worker.counters, RULES).items() if k not in FLOW_COUNTERS}


def expected_counters(**values: object) -> dict[str, object]:
    out: dict[str, object] = {
        c.name.lower(): 0 for c in Counter if c.name.lower() not in FLOW_COUNTERS
    }
    out.update(malformed_by_reason={}, dropped_by_rule={}, send_errors_by_errno={})
    out.update(hits_by_rule={}, audited_by_rule={})
    out.update(values)
    return out


# ---- the loop, through the fake -------------------------------------------------------------


def mixed_batch(gwlb) -> tuple[list[Datagram], dict[int, bytes]]:
    """Every kind of datagram the loop tells apart, and the reply each one must get (by index)."""
    udp53 = wrap(raw(gwlb.udp4(b"q" * 30, dport=53)))
    tcp6 = wrap(raw(gwlb.tcp6(b"x" * 100, dport=443)))
    weak4 = wrap(raw(gwlb.udp4(b"so " + WEAK, dport=3000)))
    weak6 = wrap(raw(gwlb.udp6(WEAK + b" twice " + WEAK, sport=3000, dport=9)))
    echo7, echo10 = wrap(raw(gwlb.icmp4(7))), wrap(raw(gwlb.icmp4(10)))
    batch = [
        Datagram(udp53),  # 0 pass (fast path)
        Datagram(weak4),  # 1 rewrite, grows by 2 bytes
        Datagram(wrap(raw(gwlb.udp4(b"drop me, " + WEAK, dport=3000)))),  # 2 dropped by rule 0
        Datagram(b"\x40" + udp53[1:]),  # 3 malformed: Geneve version 1
        Datagram(udp53, flags=TRUNCATED),  # 4 longer than its slot: what arrived is cut
        Datagram(tcp6),  # 5 pass, IPv6
        Datagram(weak6),  # 6 rewrite, IPv6, twice
        Datagram(echo10),  # 7 echo with sequence 10: dropped by rule 2
        Datagram(echo7),  # 8 echo with sequence 7: passes (the policy asked)
        Datagram(udp53, peer="10.99.0.1"),  # 9 from a sender not on the allow-list
        Datagram(wrap(raw(gwlb.tcp4(WEAK, dport=3000)))),  # 10 TCP 3000: no rule, passes
        Datagram(udp53[:6]),  # 11 malformed: shorter than a Geneve header
    ]
    replies = {
        0: udp53,
        1: wrap(raw(gwlb.udp4(b"so " + STRONG, dport=3000))),  # scapy's lengths and checksums
        5: tcp6,
        6: wrap(raw(gwlb.udp6(STRONG + b" twice " + STRONG, sport=3000, dport=9))),
        8: echo7,
        10: batch[10].data,
    }
    return batch, replies


def test_a_mixed_batch_answers_exactly_what_it_must(gwlb, default_policy):
    io = FakeIO(stale=b"\xa5")
    worker = worker_over(io, default_policy, SourceFilter([ipaddress.IPv4Network("10.77.0.0/16")]))
    batch, replies = mixed_batch(gwlb)
    n = io.lay(batch)
    worker.process(n)
    queued = {i: length for i, length in enumerate(io.replies) if length != NO_REPLY}
    assert queued == {i: len(data) for i, data in replies.items()}
    assert io.sent == []  # queued, not sent: flush sends
    worker.flush()
    assert {r.index: r.data for r in io.sent} == replies
    assert all((r.port, r.peer, r.local) == (40001, ip(GWLB_NODE), ip(LOCAL)) for r in io.sent)
    assert counted(worker) == expected_counters(
        received=12,
        sent=6,
        passed=4,
        rewritten=2,
        dropped=2,
        malformed=3,
        disallowed_source=1,
        batches=1,
        malformed_by_reason={"geneve_version": 1, "datagram_too_big": 1, "truncated": 1},
        dropped_by_rule={"drop-me": 1, "icmp-echo-every-fifth": 1},
    )
    assert worker.flows.created == 0  # the demo decides no flows: none is tracked


def test_without_an_allow_list_every_sender_is_answered(gwlb, default_policy):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    data = wrap(raw(gwlb.udp4(b"hello", dport=53)))
    worker.process(io.lay([Datagram(data, peer="10.99.0.1"), Datagram(data, peer="10.98.0.1")]))
    worker.flush()
    assert [(r.index, r.data, r.peer) for r in io.sent] == [
        (0, data, ip("10.99.0.1")),
        (1, data, ip("10.98.0.1")),
    ]
    assert counted(worker)["disallowed_source"] == 0


def test_a_batch_the_allow_list_refuses_whole_gets_no_reply(gwlb, default_policy):
    io = FakeIO()
    worker = worker_over(io, default_policy, SourceFilter([ipaddress.IPv4Network("10.77.0.0/16")]))
    data = wrap(raw(gwlb.udp4(b"hello", dport=53)))
    worker.process(io.lay([Datagram(data, peer="10.99.0.1")] * 3))
    worker.flush()
    assert io.sent == []
    assert counted(worker) == expected_counters(received=3, disallowed_source=3, batches=1)


def test_replies_the_kernel_refuses_are_counted_by_errno(gwlb, default_policy):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    data = wrap(raw(gwlb.udp4(b"hello", dport=53)))
    io.refuse = {1: errno.ENOBUFS, 2: errno.EMSGSIZE}
    worker.process(io.lay([Datagram(data)] * 4))
    worker.flush()
    assert [r.index for r in io.sent] == [0, 3]
    assert counted(worker) == expected_counters(
        received=4,
        sent=2,
        passed=4,
        send_errors=2,
        batches=1,
        send_errors_by_errno={"ENOBUFS": 1, "EMSGSIZE": 1},
    )


def test_run_once_beats_the_heart_even_when_nothing_came(gwlb, default_policy):
    io = FakeIO()
    beats: list[int] = []
    worker = Worker.over(io, default_policy, new_counters(), heartbeat=lambda: beats.append(1))
    data = wrap(raw(gwlb.udp4(b"so " + WEAK, dport=3000)))
    io.inbox = [[Datagram(data)] * 3, [Datagram(data)]]
    assert [worker.run_once() for _ in range(3)] == [3, 1, 0]
    assert len(beats) == 3
    assert [r.index for r in io.sent] == [0, 1, 2, 0]
    expected = wrap(raw(gwlb.udp4(b"so " + STRONG, dport=3000)))
    assert all(r.data == expected for r in io.sent)
    assert counted(worker) == expected_counters(received=4, sent=4, rewritten=4, batches=2)


def test_a_new_policy_applies_from_the_next_batch(gwlb, default_policy):
    from appliance.policy import Action, Match, Policy, Rule

    io = FakeIO()
    worker = worker_over(io, default_policy)
    data = wrap(raw(gwlb.udp4(b"hello", dport=53)))
    worker.process(io.lay([Datagram(data)]))
    worker.flush()
    worker.policy = Policy([Rule("no-dns", Action.DROP, Match(protocol=17, ports=frozenset({53})))])
    worker.process(io.lay([Datagram(data)]))
    worker.flush()
    assert [r.index for r in io.sent] == [0]
    assert (counted(worker)["passed"], counted(worker)["dropped"]) == (1, 1)


# ---- stale bytes: nothing past a datagram's end decides anything -------------------------------

inner_packets = st.one_of(
    st.builds(
        lambda s, d, p: raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=s, dport=d) / Raw(p)),
        st.sampled_from([53, 3000, 40000]),
        st.sampled_from([3000, 22, 53]),
        st.sampled_from([b"", b"drop me", WEAK, b"x" + WEAK, b"abc" * 9]),
    ),
    st.builds(
        lambda s, d, p: raw(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=s, dport=d) / Raw(p)),
        st.sampled_from([53, 3000]),
        st.sampled_from([3000, 9]),
        st.sampled_from([b"", WEAK, b"drop me " + WEAK]),
    ),
    st.builds(
        lambda s, d, f, p: raw(
            IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=s, dport=d, flags=f) / Raw(p)
        ),
        st.sampled_from([22, 3000, 40000]),
        st.sampled_from([3000, 443]),
        st.sampled_from(["S", "SA", "A", "FA", "R"]),
        st.sampled_from([b"", b"drop me", WEAK]),
    ),
    st.builds(
        lambda s, d, p: raw(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=s, dport=d) / Raw(p)),
        st.sampled_from([22, 3000, 443]),
        st.integers(0, 65535),
        st.binary(max_size=24),
    ),
    st.builds(
        lambda t, q: raw(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=t, seq=q)),
        st.sampled_from([0, 3, 8, 11]),
        st.integers(0, 12),
    ),
    st.builds(
        lambda proto, p: raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=proto) / Raw(p)),
        st.sampled_from([1, 6, 17, 47, 58]),
        st.binary(max_size=24),
    ),
)


def consistently_cut(inner: bytes, keep: int) -> bytes:
    """The first `keep` bytes of `inner`, its IP length saying exactly that (lengths agree, the
    headers are cut): what follows in the slot is all that could tell it apart from a whole one."""
    data = bytearray(inner[:keep])
    if inner[0] >> 4 == 4 and keep >= 4:
        data[2:4] = keep.to_bytes(2, "big")
    elif inner[0] >> 4 == 6 and keep >= 6:
        data[4:6] = max(keep - 40, 0).to_bytes(2, "big")
    return bytes(data)


@st.composite
def datagrams(draw) -> bytes:
    """A GWLB datagram: whole, or cut with lengths that agree, or cut or mutated carelessly."""
    inner = draw(inner_packets)
    if draw(st.booleans()):
        inner = consistently_cut(inner, draw(st.integers(1, 60)))
    data = bytearray(wrap(inner))
    if draw(st.booleans()):
        for at, value in draw(
            st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=3)
        ):
            if at < len(data):
                data[at] = value
    if draw(st.booleans()):
        data = data[: max(len(data) - draw(st.integers(1, 12)), 0)]
    return bytes(data)


# What an earlier datagram might have left in a slot: a whole packet of another protocol, ones.
STALE = [wrap(raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=47) / Raw(b"g" * 64))), b"\xff", b"\0"]


def tracked(policy_text: str) -> Policy:
    """The policy with the flow table on: the worker's stateful loop (one read that vouches for
    a packet and keys it, flowkey.USUAL_V4/V6), where each packet's outcome must be the same."""
    return parse_config(policy_text.replace("track_flows = false", "track_flows = true")).policy


DEMO_TRACKED = tracked(default_config_path().read_text())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(datagrams(), min_size=1, max_size=8),
    stale=st.sampled_from(STALE),
    flows=st.booleans(),
)
def test_every_reply_is_what_the_full_path_decides_on_a_clean_copy(
    default_policy, batch, stale, flows
):
    """The loop (fast path, slow path, reply) over slots full of an earlier datagram's bytes gives
    each datagram what datapath.handle_datagram gives a copy of it with nothing after it, with the
    flow table off (the stateless loop) and on (the demo decides no flow: each packet's own
    outcome is the same)."""
    io = FakeIO(size=8, stale=stale)
    worker = worker_over(io, DEMO_TRACKED if flows else default_policy)
    assert worker.policy.stateful is flows
    worker.process(io.lay([Datagram(d) for d in batch]))
    worker.flush()
    got = {r.index: r.data for r in io.sent}
    for i, data in enumerate(batch):
        outcome, _, rewritten = handle_datagram(data, 0, len(data), default_policy)
        if outcome is Outcome.PASS:
            assert got.get(i) == data, data.hex()
        elif outcome is Outcome.REWRITE:
            assert got.get(i) == rewritten, data.hex()
        else:
            assert i not in got, data.hex()


def header_mutants(data: bytes) -> list[bytes]:
    """`data` with one byte of its headers (the first 100) changed to each value that moves a
    check of the fast reads (versions, IHL, lengths, option tags, protocol, data offset)."""
    out = []
    for at in range(min(len(data), 100)):
        for value in {0, 1, 5, 0x45, 0x46, 0x50, 0x60, 0xFF, data[at] ^ 0x01, data[at] ^ 0x80}:
            if value != data[at]:
                out.append(data[:at] + bytes((value,)) + data[at + 1 :])
    return out


# The IPv4 ones go to ports FIREWALL denies, the IPv6 ones to ports it passes.
TCP_V4 = wrap(raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=22, flags="A")))
UDP_V4 = wrap(raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=9) / Raw(b"q")))
TCP_V6 = wrap(raw(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=443) / Raw(b"x")))
UDP_V6 = wrap(raw(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=53, dport=9) / Raw(b"qq")))


# Flow rules on ports under default deny: a packet keyed or vouched for wrongly (a later
# fragment's payload read as ports) gets another verdict than its own.
FIREWALL = parse_config(
    """
[policy]
default = "drop"
[[policy.rules]]
action = "pass"
match = { protocol = "tcp", dst_port = 443 }
[[policy.rules]]
action = "pass"
match = { protocol = "udp", port = 53 }
"""
).policy


@pytest.mark.parametrize("firewall", [False, True], ids=["demo", "firewall"])
@pytest.mark.parametrize(
    "base", [TCP_V4, UDP_V4, TCP_V6, UDP_V6], ids=["tcp4", "udp4", "tcp6", "udp6"]
)
def test_every_header_byte_changed_is_judged_as_the_full_path_judges_it(
    default_policy, base, firewall
):
    """Each check of the flow loop's one read (flowkey.USUAL_V4/V6) against the full parse: a
    datagram with any one header byte changed, or cut short, is answered exactly as
    handle_datagram answers it, by a fresh worker with the flow table on (so every packet is
    the first of its flow and takes the read) and by one after the flow is passed."""
    mutants = header_mutants(base) + [base[:cut] for cut in range(len(base) - 1, 40, -1)]
    for primed in (False, True):
        for k in range(0, len(mutants), 32):
            batch = mutants[k : k + 32]
            io = FakeIO(size=33, stale=STALE[0])
            worker = worker_over(io, FIREWALL if firewall else DEMO_TRACKED)
            if primed:  # the unmutated flow is passed first: its mutants find it in the table
                worker.process(io.lay([Datagram(base)]))
                worker.flush()
                io.sent.clear()
            worker.process(io.lay([Datagram(d) for d in batch]))
            worker.flush()
            got = {r.index: r.data for r in io.sent}
            for i, data in enumerate(batch):
                reference = FIREWALL if firewall else default_policy
                outcome, _, rewritten = handle_datagram(data, 0, len(data), reference)
                want = {Outcome.PASS: data, Outcome.REWRITE: rewritten}.get(outcome)
                assert got.get(i) == want, data.hex()


@pytest.mark.parametrize("flows", [False, True])
def test_a_short_inner_ipv4_packet_is_malformed_whatever_follows_it(default_policy, flows):
    # An inner IPv4 packet whose total length (8) agrees with what arrived but is under its own
    # 20-byte header, in a slot where an earlier GRE packet left its bytes (fixed in b8df726).
    earlier = STALE[0]
    io = FakeIO(stale=earlier)
    worker = worker_over(io, DEMO_TRACKED if flows else default_policy)
    worker.process(io.lay([Datagram(wrap(bytes.fromhex("4500000800000000")))]))
    worker.flush()
    assert io.sent == []
    assert counted(worker)["malformed_by_reason"] == {"truncated": 1}


# ---- the socket backend, on loopback ---------------------------------------------------------


@pytest.fixture
def loopback():
    """(data socket, "GWLB" socket, reply socket): the data socket as the supervisor opens it
    (IP_PKTINFO, SO_RXQ_OVFL, a receive timeout), on 127.0.0.1; replies go out through a UDP
    socket. (tests/unit/test_batchio_drops.py makes the kernel drop datagrams.)"""
    data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gwlb_node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        data.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        data.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 1, 0))
        data.bind(("127.0.0.1", 0))
        gwlb_node.bind(("127.0.0.1", 0))
        gwlb_node.settimeout(1.0)
        yield data, gwlb_node, out
    finally:
        for sock in (data, gwlb_node, out):
            sock.close()


def expected_reply(datagram: bytes, sender_port: int) -> bytes:
    """The reply to a datagram from 127.0.0.1:sender_port received on 127.0.0.1, by scapy: DF,
    TTL 64, ID 0, ports as they came, UDP checksum 0, the IPv4 checksum left to the kernel."""
    header = IP(src="127.0.0.1", dst="127.0.0.1", id=0, flags="DF", ttl=64, chksum=0) / UDP(
        sport=sender_port, dport=GENEVE_PORT, chksum=0
    )
    return raw(header / Raw(datagram))


def test_the_socket_backend_sends_each_queued_reply_to_its_sender(gwlb, loopback):
    data, gwlb_node, out = loopback
    io = SocketBatchIO(data, out, 8)
    sent = [wrap(raw(gwlb.udp4(b"#%d" % k * (k + 1), dport=53))) for k in range(4)]
    for d in sent:
        gwlb_node.sendto(d, data.getsockname())  # loopback delivers before sendto returns
    assert io.receive() == 4
    port = gwlb_node.getsockname()[1]
    assert io.results(4) == tuple(v for d in sent for v in (0, len(d)))
    assert io.senders(4) == (port, ip("127.0.0.1")) * 4
    assert io.destinations(4) == (ip("127.0.0.1"),) * 4
    starts = io.starts(4)
    assert [bytes(io.buffer[s : s + len(d)]) for s, d in zip(starts, sent, strict=True)] == sent
    io.replies[0], io.replies[2], io.replies[3] = len(sent[0]), len(sent[2]), 5  # 1 gets none
    assert io.flush(4) == (3, [])
    assert io.replies == [NO_REPLY] * 8
    got = [gwlb_node.recv(65536) for _ in range(3)]
    assert got == [
        expected_reply(sent[0], port),
        expected_reply(sent[2], port),
        expected_reply(sent[3][:5], port),
    ]


def test_an_extra_datagram_goes_to_the_sender_as_a_reply_does(gwlb, loopback):
    """BatchIO.extra (the reset toward a server, answer.py): after the batch's replies, with the
    same outer header a reply to that datagram would have."""
    data, gwlb_node, out = loopback
    io = SocketBatchIO(data, out, 8)
    sent = [wrap(raw(gwlb.udp4(b"#%d" % k, dport=53))) for k in range(2)]
    for d in sent:
        gwlb_node.sendto(d, data.getsockname())
    assert io.receive() == 2
    port = gwlb_node.getsockname()[1]
    io.replies[0] = len(sent[0])
    io.extra(1, b"extra geneve datagram")
    assert io.flush(2) == (2, [])
    got = [gwlb_node.recv(65536) for _ in range(2)]
    assert got == [expected_reply(sent[0], port), expected_reply(b"extra geneve datagram", port)]
    assert io.flush(2) == (0, [])  # sent once


def test_the_socket_backend_lines_messages_up_again_for_the_next_batch(gwlb, loopback):
    """After a batch whose replies were moved down past a drop, a full batch goes out whole."""
    data, gwlb_node, out = loopback
    io = SocketBatchIO(data, out, 4)
    port = gwlb_node.getsockname()[1]
    first = [wrap(raw(gwlb.udp4(b"a%d" % k, dport=53))) for k in range(3)]
    for d in first:
        gwlb_node.sendto(d, data.getsockname())
    assert io.receive() == 3
    io.replies[2] = len(first[2])
    assert io.flush(3) == (1, [])
    assert gwlb_node.recv(65536) == expected_reply(first[2], port)
    second = [wrap(raw(gwlb.udp4(b"b%d" % k, dport=53))) for k in range(4)]
    for d in second:
        gwlb_node.sendto(d, data.getsockname())
    assert io.receive() == 4
    io.replies[:4] = [len(d) for d in second]
    assert io.flush(4) == (4, [])
    assert [gwlb_node.recv(65536) for _ in second] == [expected_reply(d, port) for d in second]


def test_a_worker_on_sockets_answers_through_them(gwlb, default_policy, loopback):
    """The supervisor's constructor, end to end on loopback: receive, decide, reply."""
    data, gwlb_node, out = loopback
    worker = Worker(data, out, default_policy, new_counters(), None, 8)
    weak = wrap(raw(gwlb.udp4(b"so " + WEAK, dport=3000)))
    gwlb_node.sendto(weak, data.getsockname())
    gwlb_node.sendto(wrap(raw(gwlb.udp4(b"drop me", dport=3000))), data.getsockname())
    assert worker.run_once() == 2
    port = gwlb_node.getsockname()[1]
    strong = wrap(raw(gwlb.udp4(b"so " + STRONG, dport=3000)))
    assert gwlb_node.recv(65536) == expected_reply(strong, port)
    assert counted(worker) == expected_counters(
        received=2, sent=1, rewritten=1, dropped=1, batches=1, dropped_by_rule={"drop-me": 1}
    )


def test_the_socket_backend_counts_what_the_kernel_refuses(gwlb, loopback):
    data, gwlb_node, out = loopback
    io = SocketBatchIO(data, out, 4)
    for k in range(2):
        gwlb_node.sendto(wrap(raw(gwlb.udp4(b"%d" % k, dport=53))), data.getsockname())
    assert io.receive() == 2
    io.replies[:2] = [60, 61]
    out.close()  # its descriptor is gone: every send fails, each one alone
    assert io.flush(2) == (0, [errno.EBADF, errno.EBADF])


def test_a_dropped_batch_frees_its_memory():
    """The kernel-visible buffers are pinned by their batch (an exported bytearray cannot be
    resized, so the addresses stay valid) and freed with it, not kept for the process's life."""
    rx = ReceiveBatch(4)
    with pytest.raises(BufferError):
        rx.arena.extend(b"x")  # pinned while the batch lives
    del rx
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):  # 20 x 64 slots x 9216 bytes: about 12 MB if they were kept
            rx = ReceiveBatch(64)
            SendBatch(rx)
            del rx
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * SLOT_BYTES, grown  # less than one batch's arena


def test_the_worker_publishes_its_sockets_receive_buffer_drops(gwlb, default_policy):
    """The backend's count as it stands after each batch (set, not added: batchio.py)."""
    io = FakeIO()
    worker = worker_over(io, default_policy)
    io.rx_dropped = 1234
    worker.process(io.lay([Datagram(wrap(raw(gwlb.udp4(b"x", dport=53))))]))
    worker.flush()
    assert counted(worker)["rx_buffer_drops"] == 1234
    io.rx_dropped = 1300
    worker.process(io.lay([Datagram(wrap(raw(gwlb.udp4(b"y", dport=53))))]))
    assert counted(worker)["rx_buffer_drops"] == 1300
