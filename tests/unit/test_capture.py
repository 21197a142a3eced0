"""`appliancectl capture` in the worker (appliance/capture.py), through the loop and the fake
batch backend of test_worker_loop.py: what reaches the client's socket, with which verdict and
rule, and what happens when the client is slow, gone, or the capture's bounds are reached. Blocks
are read back by scapy's pcapng reader (comments and directions) as well as by our block walk."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap
from test_worker_flows import TENANT_1
from test_worker_flows import gwlb as wrap_tenant
from test_worker_flows import policy as flow_policy
from test_worker_loop import Datagram, FakeIO, worker_over

from appliance.batch import TRUNCATED
from appliance.capture import DATA_HEAD, DATA_MAGIC, Capture, CapturingIO, Request, request_path
from appliance.counters import Counter
from appliance.pcapng import (
    BLOCK_EPB,
    interface_description_block,
    is_outbound,
    section_header_block,
    split_blocks,
)
from appliance.sources import SourceFilter
from appliance.worker import Worker

SECOND_NS = 1_000_000_000


@dataclass
class Record:
    comment: str
    outbound: bool
    data: bytes


class Client:
    """The capturing client's socket, as appliancectl binds it, and what arrived on it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "capture-4242.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.blocks: list[bytes] = []
        self.ends: list[dict[str, object]] = []
        self.probes = 0

    def drain(self) -> Client:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return self
            if not data:
                self.probes += 1
            elif data[:1] == b"{":
                self.ends.append(orjson.loads(data))
            else:
                magic, packets, records = DATA_HEAD.unpack_from(data)
                blocks = [bytes(b) for t, b in split_blocks(data[DATA_HEAD.size :])]
                assert magic == DATA_MAGIC and len(blocks) == records
                assert sum(not is_outbound(b) for b in blocks) == packets
                self.blocks += blocks

    def records(self, tmp: Path) -> list[Record]:
        """What a pcapng reader written by others (scapy's) makes of the blocks."""
        file = tmp / "read.pcapng"
        file.write_bytes(
            section_header_block()
            + interface_description_block("worker 0")
            + interface_description_block("worker 1")
            + b"".join(self.blocks)
        )
        return [Record(p.comments[0].decode(), p.direction == 2, raw(p)) for p in rdpcap(str(file))]

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


CAPTURES: list[Capture] = []  # closed after each test: no socket left open


@pytest.fixture
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    c = Client(tmp_path_factory.mktemp("cap"))  # short: a socket path has 107 bytes at most
    yield c
    for capture in CAPTURES:
        capture.close()
    CAPTURES.clear()
    c.close()


def capture_of(worker: Worker, client: Client, slot: int = 0) -> Capture:
    CAPTURES.append(Capture(worker, slot, client.directory))
    return CAPTURES[-1]


def start(
    worker: Worker,
    client: Client,
    text: str = "",
    packets: int = 1000,
    seconds: float = 30.0,
    number: int = 1,
    slot: int = 0,
) -> Capture:
    capture = capture_of(worker, client, slot)
    post(client, number, text, packets, seconds, slot)
    said = capture.look(number)
    assert said is not None and said.startswith(f"capture {number} started"), said
    return capture


def post(
    client: Client,
    number: int,
    text: str = "",
    packets: int = 1000,
    seconds: float = 30.0,
    slot: int = 0,
    stop: bool = False,
) -> None:
    deadline = time.monotonic_ns() + int(seconds * SECOND_NS)
    request = Request(number, text, packets, deadline, str(client.path), stop)
    request_path(client.directory, slot).write_bytes(request.to_json())


def batch(worker: Worker, io: FakeIO, datagrams: list[Datagram]) -> int:
    io.inbox.append(datagrams)
    return worker.run_once()


def demo_batch(gwlb) -> list[Datagram]:
    return [
        Datagram(gwlb.wrap(gwlb.udp4(b"test", dport=3000))),  # 0 pass
        Datagram(gwlb.wrap(gwlb.udp4(b"drop me", dport=3000))),  # 1 drop-me
        Datagram(gwlb.wrap(gwlb.udp4(b"so weakly typed", dport=3000))),  # 2 rewrite
        Datagram(gwlb.wrap(gwlb.icmp4(10))),  # 3 the fifth echo: dropped
        Datagram(b"\x40" + gwlb.wrap(gwlb.udp4(b"x"))[1:]),  # 4 malformed: not shown
        Datagram(gwlb.wrap(gwlb.udp4(b"cut")), flags=TRUNCATED),  # 5 not whole: not shown
        Datagram(gwlb.wrap(gwlb.udp6(b"v6", dport=53))),  # 6 pass, IPv6
    ]


def test_every_packet_of_a_batch_comes_with_its_verdict_rule_endpoint_and_worker(
    gwlb, default_policy, client, tmp_path
):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    start(worker, client)
    assert batch(worker, io, demo_batch(gwlb)) == 7
    records = client.drain().records(tmp_path)
    endpoint = gwlb.endpoint_id.hex()
    assert [(r.comment, r.outbound) for r in records] == [
        (f"verdict=pass rule=- endpoint={endpoint} worker=0 as=received", False),
        (f"verdict=drop rule=drop-me endpoint={endpoint} worker=0 as=received", False),
        (
            f"verdict=rewrite rule=weakly-to-strongly-typed endpoint={endpoint} worker=0 "
            "as=received",
            False,
        ),
        (
            f"verdict=rewrite rule=weakly-to-strongly-typed endpoint={endpoint} worker=0 as=sent",
            True,
        ),
        (
            f"verdict=drop rule=icmp-echo-every-fifth endpoint={endpoint} worker=0 as=received",
            False,
        ),
        (f"verdict=pass rule=- endpoint={endpoint} worker=0 as=received", False),
    ]
    # The inner packets as they came and as they went, byte for byte.
    assert records[2].data == raw(gwlb.udp4(b"so weakly typed", dport=3000))
    sent = IP(records[3].data)
    assert bytes(sent.payload.payload) == b"so strongly typed"
    assert records[3].data == raw(gwlb.udp4(b"so strongly typed", dport=3000))
    assert len(io.sent) == 3  # the data path answered as ever: pass, rewrite, pass
    assert worker.counters[Counter.CAPTURE_KEPT] == 5
    assert worker.counters[Counter.CAPTURE_DROPPED] == 0


def test_the_filter_keeps_what_it_names_verdicts_included(gwlb, default_policy, client, tmp_path):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = start(worker, client, "udp and port 3000 and (verdict drop or verdict rewrite)")
    batch(worker, io, demo_batch(gwlb))
    comments = [r.comment.split()[0] for r in client.drain().records(tmp_path)]
    assert comments == ["verdict=drop", "verdict=rewrite", "verdict=rewrite"]
    post(client, 2, f"endpoint {'00' * 8} or icmp")  # another tenant's, or ICMP
    assert capture.look(2) is not None
    batch(worker, io, demo_batch(gwlb))
    later = client.drain().records(tmp_path)[3:]
    assert [r.comment.split()[:2] for r in later] == [
        ["verdict=drop", "rule=icmp-echo-every-fifth"]
    ]


def test_the_count_ends_the_capture_and_gives_the_worker_its_own_io_back(
    gwlb, default_policy, client
):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = start(worker, client, packets=2)
    assert isinstance(worker.io, CapturingIO)
    batch(worker, io, demo_batch(gwlb))
    client.drain()
    assert len(client.blocks) == 2  # pass, then drop-me: two packets
    assert client.ends == [{"end": 0, "kept": 2, "dropped": 0, "reason": "count"}]
    assert worker.io is io and capture.running is None
    batch(worker, io, demo_batch(gwlb))
    assert client.drain().blocks == client.blocks[:2]  # nothing more
    assert len(io.sent) == 6  # and the data path went on


def test_the_deadline_ends_it_even_without_traffic(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = start(worker, client, seconds=0.05)
    time.sleep(0.06)
    assert worker.run_once() == 0  # an idle receive (the socket's timeout) sees the deadline
    assert client.drain().ends == [{"end": 0, "kept": 0, "dropped": 0, "reason": "seconds"}]
    assert worker.io is io and capture.running is None


def test_a_client_that_reads_too_slowly_costs_packets_not_the_data_path(
    gwlb, default_policy, client
):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    start(worker, client)
    one = [Datagram(gwlb.wrap(gwlb.udp4(b"test", dport=3000)))]
    for _ in range(40):  # the client reads nothing: its queue fills (net.unix.max_dgram_qlen)
        batch(worker, io, one)
    kept, dropped = (
        int(worker.counters[c]) for c in (Counter.CAPTURE_KEPT, Counter.CAPTURE_DROPPED)
    )
    assert kept + dropped == 40 and dropped > 0
    assert len(io.sent) == 40  # every packet answered regardless
    assert len(client.drain().blocks) == kept
    assert isinstance(worker.io, CapturingIO)  # still capturing: drops are counted, not fatal


def test_a_client_that_is_gone_ends_the_capture_at_the_next_send(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = start(worker, client)
    client.close()
    batch(worker, io, demo_batch(gwlb))
    assert worker.io is io and capture.running is None
    assert len(io.sent) == 3


def test_a_client_that_is_gone_is_noticed_without_traffic(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = start(worker, client)
    assert isinstance(worker.io, CapturingIO)
    worker.io._probe_at = 0  # a second has passed
    worker.run_once()
    assert client.drain().probes == 1 and worker.io is not io  # still there: goes on
    client.close()
    worker.io._probe_at = 0
    worker.run_once()
    assert worker.io is io and capture.running is None


def test_stop_and_a_new_capture_end_the_one_running(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = start(worker, client)
    post(client, 2, "udp", stop=True)
    assert capture.look(2) == "capture 1 stopped"
    assert client.drain().ends == [{"end": 0, "kept": 0, "dropped": 0, "reason": "stopped"}]
    assert worker.io is io
    post(client, 3)
    assert capture.look(3) is not None and isinstance(worker.io, CapturingIO)
    post(client, 4, "icmp")
    assert capture.look(4) is not None
    assert client.drain().ends[-1]["reason"] == "superseded"
    assert isinstance(worker.io, CapturingIO) and worker.io.request.number == 4


def test_only_new_requests_for_this_slot_are_taken(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = capture_of(worker, client, 1)
    post(client, 1, slot=0)  # another worker's
    assert capture.look(1) is None and worker.io is io
    post(client, 3, slot=1)  # above the word: an earlier daemon's file
    assert capture.look(2) is None and worker.io is io
    post(client, 2, slot=1, seconds=-1)  # over already (a worker restarted after its end)
    assert capture.look(2) is None and worker.io is io
    post(client, 3, slot=1)
    assert capture.look(3) is not None and isinstance(worker.io, CapturingIO)
    assert capture.look(3) is None  # taken once


def test_a_socket_that_is_not_there_is_said_and_nothing_starts(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = capture_of(worker, client)
    client.close()
    post(client, 1)
    said = capture.look(1)
    assert said is not None and "not started" in said and "No such file" in said
    assert worker.io is io


def test_interfaces_are_slots_and_the_batch_in_hand_when_it_began_is_shown_whole(
    gwlb, default_policy, client, tmp_path
):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = capture_of(worker, client, 1)
    io.inbox.append(demo_batch(gwlb))
    post(client, 1, slot=1)

    def heartbeat() -> None:  # as the worker's: the request is seen after the receive
        if capture.seen != 1:
            capture.look(1)

    worker.heartbeat = heartbeat
    worker.run_once()
    records = client.drain().records(tmp_path)
    assert [r.comment.split()[0] for r in records] == [
        "verdict=pass",
        "verdict=drop",
        "verdict=rewrite",
        "verdict=rewrite",
        "verdict=drop",
        "verdict=pass",
    ]
    assert records[2].data == raw(gwlb.udp4(b"so weakly typed", dport=3000))  # as it came
    assert all(r.comment.endswith(("worker=1 as=received", "worker=1 as=sent")) for r in records)
    assert {int.from_bytes(b[8:12], "little") for b in client.blocks} == {1}


def test_a_capture_over_before_the_worker_saw_it_is_said_over(gwlb, default_policy, client):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    capture = capture_of(worker, client)
    post(client, 1, seconds=-1)
    assert capture.look(1) is None and worker.io is io
    post(client, 2, stop=True)  # a stop for a capture this worker never began
    assert capture.look(2) is None
    assert [e["reason"] for e in client.drain().ends] == ["seconds", "stopped"]


def test_flows_show_their_rule_and_a_reject_its_answer(gwlb, client, tmp_path):
    rules = """
[[policy.rules]]
name = "no-telnet"
action = "reject"
match = { protocol = "tcp", dst_port = 23 }
[[policy.rules]]
name = "web"
action = "pass"
match = { protocol = "tcp", dst_port = 443 }
"""
    io = FakeIO()
    worker = worker_over(io, flow_policy(rules, default="drop"))
    start(worker, client)
    telnet = IP(src="10.0.0.1", dst="10.9.9.9") / TCP(sport=5555, dport=23, flags="S")
    web = IP(src="10.0.0.1", dst="10.9.9.9") / TCP(sport=5556, dport=443, flags="S")
    other = IP(src="10.0.0.1", dst="10.9.9.9") / TCP(sport=5557, dport=25, flags="S")
    batch(worker, io, [Datagram(wrap_tenant(p)) for p in (telnet, web, other)])
    records = client.drain().records(tmp_path)
    tenant = TENANT_1.hex()
    assert [(r.comment, r.outbound) for r in records] == [
        (f"verdict=reject rule=no-telnet endpoint={tenant} worker=0 as=received", False),
        (f"verdict=reject rule=no-telnet endpoint={tenant} worker=0 as=sent", True),
        (f"verdict=pass rule=web endpoint={tenant} worker=0 as=received", False),
        (f"verdict=drop rule=default endpoint={tenant} worker=0 as=received", False),
    ]
    rst = IP(records[1].data)
    assert rst[TCP].flags == "RA" and (rst.src, rst.dst) == ("10.9.9.9", "10.0.0.1")


def test_a_sender_off_the_allow_list_is_shown_as_a_drop_that_says_why(gwlb, default_policy, client):
    io = FakeIO()
    allowed = SourceFilter([ipaddress.IPv4Network("10.77.0.0/16")])
    worker = worker_over(io, default_policy, allowed)
    start(worker, client)
    data = gwlb.wrap(gwlb.udp4(b"hello", dport=53))
    batch(worker, io, [Datagram(data, peer="10.99.0.1"), Datagram(data)])
    comments = [b.split(b"verdict=")[1].split(b" endpoint")[0] for b in client.drain().blocks]
    assert comments == [b"drop rule=-", b"pass rule=-"]
    assert b"why=disallowed-source" in client.blocks[0]


def test_blocks_are_walked_and_their_direction_read():
    from appliance.pcapng import enhanced_packet_block

    blocks = [
        enhanced_packet_block(0, 1, b"\x45" + bytes(19), comment="in"),
        enhanced_packet_block(1, 2, bytes(21), comment="out", outbound=True),
        enhanced_packet_block(0, 3, bytes(3), outbound=None),
    ]
    walked = split_blocks(b"".join(blocks))
    assert [(t, bytes(b)) for t, b in walked] == [(BLOCK_EPB, b) for b in blocks]
    assert [is_outbound(b) for _, b in walked] == [False, True, False]
    with pytest.raises(ValueError):
        split_blocks(b"".join(blocks)[:-4])


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("ip6", ["udp6 53"]),
        ("host fd00:b::9 or icmp and verdict drop", ["icmp", "udp6 53"]),
        ("dst net 10.2.0.0/16 and udp and not port 53", ["udp 3000"] * 3),
        ("verdict pass", ["udp 3000", "udp6 53"]),
    ],
)
def test_filters_on_addresses_ports_and_protocols(
    gwlb, default_policy, client, tmp_path, text: str, kept: list[str]
):
    io = FakeIO()
    worker = worker_over(io, default_policy)
    start(worker, client, text)
    batch(worker, io, demo_batch(gwlb))
    records = [r for r in client.drain().records(tmp_path) if not r.outbound]
    shown = []
    for r in records:
        version = r.data[0] >> 4
        if version == 6:
            shown.append(f"udp6 {int.from_bytes(r.data[42:44], 'big')}")
        elif r.data[9] == 17:
            shown.append(f"udp {int.from_bytes(r.data[22:24], 'big')}")
        else:
            shown.append("icmp")
    assert shown == kept


def test_a_reload_renames_the_rules_in_the_comments(gwlb, client, tmp_path):
    rules = """
[[policy.rules]]
name = "{}"
action = "drop"
match = {{ protocol = "udp", payload_contains = "drop me" }}
"""
    io = FakeIO()
    worker = worker_over(io, flow_policy(rules.format("before")))
    start(worker, client)
    dropped = [Datagram(gwlb.wrap(gwlb.udp4(b"drop me", dport=3000)))]
    batch(worker, io, dropped)
    worker.policy = flow_policy(rules.format("after"))
    batch(worker, io, dropped)
    assert [r.comment.split()[1] for r in client.drain().records(tmp_path)] == [
        "rule=before",
        "rule=after",
    ]
