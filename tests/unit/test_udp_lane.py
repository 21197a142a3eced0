"""The UDP lane (fastpath.UdpLane, rewrite.rewrite_found) against the general path.

The lane stands for `Policy.decide`, `datapath.carry_out` and `rewrite_in_place` on a UDP packet
in GWLB's usual layout, for policies whose rules it can read (policy.LaneRule). So:
- on random policies of those shapes and random datagrams (matches at odd and even offsets,
  several and overlapping, near and past the datagram's end; right, wrong, zero and 0xFFFF
  checksums; IPv4 options, IPv6 extension headers, fragments, cut datagrams), a worker with the
  lane leaves every byte of its buffer, every reply and every counter as a worker without it;
- rewrite_found writes what rewrite_in_place writes, or declines and touches nothing;
- the demo's rewrites through the lane are scapy's packets, and a wrong checksum stays wrong by
  the same amount;
- a rule shape the lane does not read leaves the policy without one.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Packet, Raw

from appliance.batch import NO_REPLY, ROOM
from appliance.conditions import PayloadContains
from appliance.counters import new_counters, snapshot
from appliance.datapath import parse_datagram
from appliance.fastpath import FastPath
from appliance.policy import Action, Match, Policy, Rule, Verdict, word_changes
from appliance.rewrite import MAX_INNER_BYTES, found_edit, rewrite_found, rewrite_in_place
from appliance.worker import Worker

WEAK, STRONG = b"weakly typed", b"strongly typed"
# GWLB's three options: endpoint id, attachment id (zero), flow cookie.
OPTIONS = bytes.fromhex("01080102 8f3a5c2e91b04d67 01080202 0000000000000000 01080301 0badf00d")
V4 = {"src": "10.1.0.5", "dst": "10.2.0.9"}
V6 = {"src": "fd00::5", "dst": "fd00::9"}
# Finds and replacements: growing, shrinking, the same length, to nothing, by an odd count,
# self-overlapping ("aa" in "aaa"), one byte.
PAIRS = [
    (WEAK, STRONG),
    (b"abcd", b"xy"),
    (b"ab", b"cd"),
    (b"ab", b""),
    (b"abc", b"abcd"),
    (b"aa", b"b"),
    (b"a", b"zz"),
]
NEEDLES = [b"drop me", b"ab", b"a", b"zz", WEAK]
PIECES = [*sorted({p for pair in PAIRS for p in pair} | set(NEEDLES)), b"-", b"--", b" ", b"x" * 7]


def geneve(protocol: int) -> bytes:
    return struct.pack("!BBHI", 8, 0, protocol, 0) + OPTIONS


def wrap(inner: bytes) -> bytes:
    return geneve(0x86DD if inner[0] >> 4 == 6 else 0x0800) + inner


class SlotIO:
    """The part of a BatchIO (appliance.batch) that Worker.process uses: datagrams in ROOM-byte
    slots at odd offsets, over what an earlier datagram left there."""

    STRIDE, OFFSET = ROOM + 64, 7

    def __init__(self, datagrams: list[bytes], stale: bytes) -> None:
        self.size = len(datagrams)
        self.buffer = bytearray(
            (stale * (self.STRIDE * self.size // len(stale) + 1))[: self.STRIDE * self.size]
        )
        for start, data in zip(self.starts(self.size), datagrams, strict=True):
            self.buffer[start : start + len(data)] = data
        self.lengths = [len(d) for d in datagrams]
        self.replies = [NO_REPLY] * self.size
        self.rx_dropped = 0

    def starts(self, n: int) -> tuple[int, ...]:
        return tuple(i * self.STRIDE + self.OFFSET for i in range(n))

    def results(self, n: int) -> tuple[int, ...]:
        return tuple(v for length in self.lengths[:n] for v in (0, length))


def run(policy: Policy, datagrams: list[bytes], stale: bytes, lane: bool):
    """(buffer, replies, counters) after one batch through a worker with or without the lane."""
    io = SlotIO(datagrams, stale)
    worker = Worker.over(io, policy, new_counters())
    if not lane:
        worker._fast.lane = None  # every UDP packet a rule may touch asks `decide`
    worker.process(io.size)
    counters = {k: v for k, v in snapshot(worker.counters).items() if not k.startswith("flows")}
    return bytes(io.buffer), list(io.replies), counters


def assert_same(policy: Policy, datagrams: list[bytes], stale: bytes = b"\xa5") -> None:
    with_lane = run(policy, datagrams, stale, lane=True)
    without = run(policy, datagrams, stale, lane=False)
    assert with_lane[1] == without[1], "replies"
    assert with_lane[2] == without[2], "counters"
    assert with_lane[0] == without[0], "bytes"


# ---- random policies and datagrams: the lane is the general path ---------------------------------

ports = st.sampled_from([frozenset({3000}), frozenset({3000, 53}), frozenset({9})])


@st.composite
def lane_rules(draw: st.DrawFn) -> list[Rule]:
    """Rules of the shapes the lane reads, in a stateless policy: replaces, and drops, passes
    and rejects with a payload condition (without one they would decide flows)."""
    rules = []
    for k in range(draw(st.integers(1, 4))):
        action = draw(
            st.sampled_from([Action.REPLACE] * 3 + [Action.DROP, Action.PASS, Action.REJECT])
        )
        conditions: dict[str, object] = {"protocol": 17}
        side = draw(st.sampled_from(["port", "src_port", "dst_port", None]))
        if side is not None:
            conditions[
                {"port": "ports", "src_port": "src_ports", "dst_port": "dst_ports"}[side]
            ] = draw(ports)
        if draw(st.booleans()):
            conditions["ip_version"] = draw(st.sampled_from([4, 6]))
        needles = draw(st.lists(st.sampled_from(NEEDLES), max_size=2))
        if action is not Action.REPLACE and not needles:
            needles = [draw(st.sampled_from(NEEDLES))]
        match = list(Match(**conditions))
        match += [c for needle in needles for c in Match(payload_contains=needle)]
        find, replace = draw(st.sampled_from(PAIRS)) if action is Action.REPLACE else (b"", b"")
        rules.append(Rule(f"r{k}", action, tuple(match), find=find, replace=replace))
    return rules


@st.composite
def udp_datagrams(draw: st.DrawFn, pieces: tuple[bytes, ...] = ()) -> bytes:
    """A GWLB datagram holding a UDP packet whose payload strings `pieces` (the policy's own
    needles and finds, so that rules match, often several and at any offset) and PIECES."""
    words = st.sampled_from(pieces) | st.sampled_from(PIECES) if pieces else st.sampled_from(PIECES)
    payload = b"".join(draw(st.lists(words, max_size=8)))
    if draw(st.integers(0, 9)) == 0:  # near the limit: a growing rewrite goes over it
        payload = b"x" * (MAX_INNER_BYTES - 48 - len(payload) - draw(st.integers(0, 4))) + payload
    layout = draw(
        st.sampled_from(["v4", "v4", "v6", "v6", "v4-options", "v6-hop", "v4-first-fragment"])
    )
    sport, dport = draw(st.sampled_from([3000, 9, 40000, 53])), draw(st.sampled_from([3000, 9, 53]))
    ip: Packet
    if layout == "v4":
        ip = IP(**V4, id=draw(st.integers(0, 65535)), ttl=draw(st.integers(1, 255)))
    elif layout == "v4-options":
        ip = IP(**V4, options=[IPOption_NOP()] * 4)
    elif layout == "v4-first-fragment":
        ip = IP(**V4, flags="MF")
    elif layout == "v6":
        ip = IPv6(**V6, fl=draw(st.integers(0, 0xFFFFF)))
    else:
        ip = IPv6(**V6) / IPv6ExtHdrHopByHop()
    data = bytearray(raw(ip / UDP(sport=sport, dport=dport) / Raw(payload)))
    header = (data[0] & 0x0F) * 4 if data[0] >> 4 == 4 else len(raw(ip))
    # Checksums as they arrived: right, wrong by any amount, zero or 0xFFFF.
    for at in [header + 6] + ([10] if data[0] >> 4 == 4 else []):
        kind = draw(st.sampled_from(["right", "right", "wrong", "zero", "ffff"]))
        value = {"zero": 0, "ffff": 0xFFFF}.get(kind, int.from_bytes(data[at : at + 2], "big"))
        if kind == "wrong":
            value ^= draw(st.integers(1, 0xFFFF))
        data[at : at + 2] = value.to_bytes(2, "big")
    datagram = wrap(bytes(data))
    cut = draw(st.sampled_from([0, 0, 0, 1, 5]))  # cut: the lengths no longer agree
    return datagram[: len(datagram) - cut]


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=lane_rules(),
    data=st.data(),
    stale=st.sampled_from([b"\xa5", WEAK, b"drop me", b"ab"]),
)
def test_the_lane_is_the_general_path(rules: list[Rule], data: st.DataObject, stale: bytes) -> None:
    policy = Policy(rules)
    assert policy.udp_lane is not None and FastPath(policy).lane is not None
    pieces = tuple(
        sorted(
            {r.find for r in rules if r.find}
            | {c.needle for r in rules for c in r.match if isinstance(c, PayloadContains)}
        )
    )
    datagrams = data.draw(st.lists(udp_datagrams(pieces), min_size=1, max_size=6))
    assert_same(policy, datagrams, stale)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=st.lists(udp_datagrams(), min_size=1, max_size=6))
def test_the_demo_policy_through_the_lane_is_the_general_path(
    default_policy: Policy, datagrams: list[bytes]
) -> None:
    assert FastPath(default_policy).lane is not None
    assert_same(default_policy, datagrams)


# ---- what gets a lane ------------------------------------------------------------------------


def replace_rule(**match: object) -> Rule:
    return Rule("w", Action.REPLACE, Match(protocol=17, **match), find=WEAK, replace=STRONG)


def test_the_demo_policy_has_a_lane(default_policy: Policy) -> None:
    assert default_policy.udp_lane is not None
    assert [r.rule for r in default_policy.udp_lane] == [0, 1]  # the ICMP rules never see UDP
    assert FastPath(default_policy).lane is not None


@pytest.mark.parametrize(
    "rules",
    [
        [replace_rule(dst=["10.0.0.0/8"])],  # an address condition
        [replace_rule(endpoint="8f3a5c2e91b04d67")],
        [Rule("d", Action.DROP, Match(protocol=17, payload_contains=b"x"), audit=True)],
        [Rule("e", Action.REPLACE, Match(protocol=17), find=b"", replace=b"x")],
        [Rule("t", Action.REPLACE, Match(ports={1}) + Match(ports={2}), find=WEAK, replace=STRONG)],
    ],
    ids=["address", "endpoint", "audit", "empty-find", "port-twice"],
)
def test_other_shapes_take_the_general_path(rules: list[Rule]) -> None:
    policy = Policy(rules)
    assert policy.udp_lane is None and FastPath(policy).lane is None


def test_a_stateful_policy_takes_no_lane() -> None:
    for policy in (
        Policy([replace_rule()], default=Verdict.DROP),  # a denying default decides flows
        Policy([replace_rule(), Rule("p", Action.PASS, Match(protocol=17, ports={53}))]),
    ):
        assert FastPath(policy).lane is None


def test_other_shapes_give_what_they_gave() -> None:
    policy = Policy([replace_rule(ports={3000}), replace_rule(dst=["10.2.0.0/16"])])
    assert policy.udp_lane is None
    inner = raw(IP(**V4) / UDP(sport=1, dport=3000) / Raw(b"so " + WEAK))
    io = SlotIO([wrap(inner)], b"\0")
    Worker.over(io, policy, new_counters()).process(1)
    start = io.starts(1)[0]
    out = bytes(io.buffer[start : start + io.replies[0]])
    assert out[40:] == raw(IP(**V4) / UDP(sport=1, dport=3000) / Raw(b"so strongly typed"))


# ---- rewrite_found is rewrite_in_place where it says it is ---------------------------------------


def both(datagram: bytes, pair: tuple[bytes, bytes], room: int = 9216):
    """rewrite_found (on the first match) and rewrite_in_place on the same datagram: each's new
    end and buffer."""
    replacement = (*pair, word_changes(*pair))
    out = []
    for found in (True, False):
        buf = bytearray(room)
        buf[: len(datagram)] = datagram
        parsed = parse_datagram(buf, 0, len(datagram))
        assert not isinstance(parsed, int)
        pkt = parsed[0]
        if found:
            position = buf.find(pair[0], pkt.payload, pkt.end)
            end = rewrite_found(
                buf, pkt.version, pkt.l4, pkt.end, position, found_edit(replacement)
            )
        else:
            end = rewrite_in_place(buf, pkt, (replacement,))
        out.append((end, bytes(buf)))
    return out


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("prefix", [b"", b"-", b"--", b"---"], ids=["at0", "at1", "at2", "at3"])
@pytest.mark.parametrize("pair", [(WEAK, STRONG), (b"abcd", b"xy"), (b"ab", b"cd"), (WEAK, b"")])
@pytest.mark.parametrize("checksum", [None, 0, 0xFFFF, 0x1234])
def test_one_match_is_rewritten_as_rewrite_in_place_does(version, prefix, pair, checksum) -> None:
    ip: Packet = IP(**V4) if version == 4 else IPv6(**V6)
    for tail in (b"", b".", b" and more"):
        datagram = wrap(
            raw(ip / UDP(sport=9, dport=3000, chksum=checksum) / (prefix + pair[0] + tail))
        )
        (found_end, found_buf), (end, buf) = both(datagram, pair)
        if version == 6 and checksum == 0:
            assert found_end is None and found_buf == datagram + bytes(9216 - len(datagram))
        else:
            assert found_end == end and found_end is not None
            assert found_buf == buf


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(
    ("payload", "pair"),
    [
        (WEAK + b" " + WEAK, (WEAK, STRONG)),  # found again
        (b"so " + WEAK, (WEAK, STRONG + b"!")),  # an odd length change
    ],
    ids=["twice", "odd"],
)
def test_what_rewrite_found_declines_it_leaves_alone(version, payload, pair) -> None:
    ip: Packet = IP(**V4) if version == 4 else IPv6(**V6)
    datagram = wrap(raw(ip / UDP(sport=9, dport=3000) / payload))
    (found_end, found_buf), (end, _) = both(datagram, pair)
    assert end is not None  # rewrite_in_place does it
    assert found_end is None and found_buf == datagram + bytes(9216 - len(datagram))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("payload", [b"aaa", b"-aaa", b"aaaa-", b"aaaaa"])
def test_overlapping_matches_count_as_bytes_replace_counts(version, payload) -> None:
    """ "aa" in "aaa" is one match (left to right, not overlapping), in "aaaa" two."""
    ip: Packet = IP(**V4) if version == 4 else IPv6(**V6)
    datagram = wrap(raw(ip / UDP(sport=9, dport=3000) / payload))
    (found_end, found_buf), (end, buf) = both(datagram, (b"aa", b""))
    if payload.count(b"aa") == 1:
        assert found_end == end and found_buf == buf
    else:
        assert found_end is None


@pytest.mark.parametrize("version", [4, 6])
def test_too_big_is_declined_untouched(version) -> None:
    header = 28 if version == 4 else 48
    ip: Packet = IP(**V4) if version == 4 else IPv6(**V6)
    fill = MAX_INNER_BYTES - header - len(STRONG)
    for size, room in ((fill + 1, 9216), (fill, 40 + MAX_INNER_BYTES - 1)):
        datagram = wrap(raw(ip / UDP(sport=9, dport=3000) / (b"x" * size + WEAK)))
        (found_end, found_buf), (end, buf) = both(datagram, (WEAK, STRONG), room)
        assert found_end is None is end and found_buf == buf == datagram + bytes(
            room - len(datagram)
        )


# ---- the demo through the lane, against scapy -------------------------------------------------


def through_lane(policy: Policy, inner: Packet | bytes) -> bytes:
    """The inner packet of the reply the worker (lane on) sends for `inner`."""
    io = SlotIO([wrap(inner if isinstance(inner, bytes) else raw(inner))], b"\xa5")
    worker = Worker.over(io, policy, new_counters())
    assert worker._fast.lane is not None
    worker.process(1)
    start = io.starts(1)[0]
    return bytes(io.buffer[start + 40 : start + io.replies[0]])


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("prefix", [b"", b"-", b"so ", b"---"])
def test_the_demo_rewrite_is_scapys(default_policy: Policy, gwlb, version, prefix) -> None:
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    for tail in (b"", b"!", b" programming language"):
        out = through_lane(default_policy, build(prefix + WEAK + tail))
        expected = build(prefix + STRONG + tail)
        assert out == raw(expected)
        assert gwlb.recomputed((IP if version == 4 else IPv6)(out)) == out


@pytest.mark.parametrize("version", [4, 6])
def test_a_wrong_checksum_leaves_wrong_by_the_same_amount(
    default_policy: Policy, gwlb, version
) -> None:
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    good = raw(build(b"so " + WEAK))
    at = (20 if version == 4 else 40) + 6
    right = int.from_bytes(good[at : at + 2], "big")
    bad = bytearray(good)
    bad[at : at + 2] = ((right + 0x0101) % 0xFFFF).to_bytes(2, "big")
    out_good = through_lane(default_policy, good)
    out_bad = through_lane(default_policy, bytes(bad))
    was = int.from_bytes(out_good[at : at + 2], "big")
    now = int.from_bytes(out_bad[at : at + 2], "big")
    assert (now - was) % 0xFFFF == 0x0101
    assert out_bad[:at] == out_good[:at] and out_bad[at + 2 :] == out_good[at + 2 :]


def test_a_zero_checksum_over_ipv4_stays_zero(default_policy: Policy) -> None:
    out = through_lane(
        default_policy, IP(**V4) / UDP(sport=9, dport=3000, chksum=0) / (b"so " + WEAK)
    )
    assert out[26:28] == b"\0\0"
    assert out == raw(IP(**V4) / UDP(sport=9, dport=3000, chksum=0) / (b"so " + STRONG))


def test_nothing_past_the_datagram_is_read(default_policy: Policy) -> None:
    """The needles' tails lie just past the datagram, in what an earlier one left: no match."""
    datagram = wrap(raw(IP(**V4) / UDP(sport=9, dport=3000) / b"so drop m"))
    for stale in (b"e", b"\0", WEAK):
        io = SlotIO([datagram], stale)
        start = io.starts(1)[0]
        io.buffer[start + len(datagram) : start + len(datagram) + 12] = b"e weakly typ"
        worker = Worker.over(io, default_policy, new_counters())
        worker.process(1)
        assert io.replies[0] == len(datagram)  # passed: neither "drop me" nor "weakly typed"
        assert bytes(io.buffer[start : start + len(datagram)]) == datagram
