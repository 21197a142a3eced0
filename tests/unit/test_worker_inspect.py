"""Inspectors written in Python, through the config loader and the worker loop (no root): the
shipped DNS-tunnel example, a flow an inspector decides for good, and a faulty inspector that
never stops the worker (its rule's on_error stands in, and it is counted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw
from test_worker_flows import gwlb
from test_worker_loop import Datagram, FakeIO, worker_over

from appliance.counters import snapshot
from config.errors import ConfigError
from config.loader import parse_config

TUNNEL = """
[policy]
[[policy.rules]]
name = "dns-tunnel"
action = "inspect"
inspector = "appliance.inspectors.dns_tunnel:inspect_each_query"
match = { protocol = "udp", dst_port = 53 }
"""


def answered(worker, io: FakeIO, *inners) -> list[bool]:
    io.sent.clear()
    worker.process(io.lay([Datagram(gwlb(p)) for p in inners]))
    worker.flush()
    got = {r.index for r in io.sent}
    return [i in got for i in range(len(inners))]


def query(name: str, sport: int = 5353):
    return (
        IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=sport, dport=53) / DNS(qd=DNSQR(qname=name))
    )


def test_the_shipped_example_drops_tunnelled_queries_and_passes_the_rest() -> None:
    io = FakeIO()
    worker = worker_over(io, parse_config(TUNNEL).policy)
    tunnel = "a" * 3 + "kq2xv7r9p0zj3m5n8b4w6t1y0c2g4h6k8l9q3e5r7u9i1o3p5a7s9d1f" + ".t.example"
    assert answered(worker, io, query("www.example.com"), query(tunnel, 5354)) == [True, False]
    # Each query of a flow is shown: a flow is not decided by its first, harmless one.
    assert answered(worker, io, query(tunnel)) == [False]
    counted = snapshot(worker.counters)
    assert counted["inspect_errors"] == 0 and counted["dropped"] == 2


@pytest.fixture
def inspectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package of the operator's own inspectors, importable as `mine`."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "mine.py").write_text(
        "from appliance.inspection import DROP_FLOW, PASS\n"
        "def first_bytes(packet):\n"
        "    if bytes(packet.payload[:4]) == b'EVIL':\n"
        "        return DROP_FLOW\n"
        "    return PASS\n"
        "def broken(packet):\n"
        "    raise RuntimeError('bug in the inspector')\n"
    )
    yield tmp_path
    sys.modules.pop("mine", None)


def rule(function: str, on_error: str = "pass") -> str:
    return (
        f'[[policy.rules]]\nname = "mine"\naction = "inspect"\ninspector = "mine:{function}"\n'
        f'on_error = "{on_error}"\nmatch = {{ protocol = "tcp", dst_port = 7000 }}\n'
    )


def segment(payload: bytes, reply: bool = False):
    if reply:
        return IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=7000, dport=40000, flags="A")
    return (
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=7000, flags="PA") / Raw(payload)
    )


def test_an_inspector_decides_a_whole_flow_both_ways(inspectors: Path) -> None:
    io = FakeIO()
    worker = worker_over(io, parse_config("[policy]\n" + rule("first_bytes")).policy)
    assert answered(worker, io, segment(b"hello"), segment(b"", reply=True)) == [True, True]
    assert answered(worker, io, segment(b"EVIL and more")) == [False]
    assert answered(worker, io, segment(b"hello again"), segment(b"", reply=True)) == [False, False]


@pytest.mark.parametrize("on_error", ["pass", "drop"])
def test_a_faulty_inspector_is_counted_and_its_rules_on_error_applies(
    inspectors: Path, on_error: str
) -> None:
    io = FakeIO()
    worker = worker_over(io, parse_config("[policy]\n" + rule("broken", on_error)).policy)
    passes = on_error == "pass"
    assert answered(worker, io, segment(b"a"), segment(b"b")) == [passes, passes]
    assert snapshot(worker.counters)["inspect_errors"] == 2


def test_an_inspector_that_cannot_be_loaded_is_refused_at_load(inspectors: Path) -> None:
    for spec, reason in (
        ("mine:missing", "missing"),
        ("nowhere.at.all:f", "nowhere"),
        ("no-colon", "package.module:function"),
    ):
        text = "[policy]\n" + rule("x").replace("mine:x", spec)
        with pytest.raises(ConfigError) as refused:
            parse_config(text)
        assert "inspector" in str(refused.value) and reason in str(refused.value)
