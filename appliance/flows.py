"""The per-worker flow table: one entry per inner flow, both directions, with GWLB's idle timeouts
and a hard bound.

Why it looks like this (measured numbers: deploy/bench/flow_profile.py):
- No lock, no sharing: steering puts both directions of an inner flow in one worker, and a worker
  is one thread (DESIGN.md section 2).
- One dict, two keys per flow. A flow is filed under its forward key and its reverse key
  (appliance.flowkey), both pointing at one `Flow`, so the key a packet's bytes give finds it as
  they lie, and `key == flow.key` says the direction: cheaper than ordering the ends per packet,
  and as cheap as an object per direction, which would cost 112 bytes more per flow.
- A packet of a known flow touches only its flow: counters and `last_ns`, one dict lookup. Nothing
  per packet keeps an order. Order is kept lazily by "wheels": sets of flows bucketed by the
  1.07-second tick (2**30 ns) in which they were last seen *when filed*. A flow seen since is
  re-filed under its true tick only when the sweep or an eviction reaches its old bucket, so a
  bucket's flows are at least as idle as the bucket says, and the oldest bucket holds the longest
  idle flows (to the tick). Sets, not lists: a flow leaving early (evicted, expired at lookup,
  answered, closed) leaves its bucket at once, so nothing keeps a dead flow's memory alive.
- Six wheels, one per timeout and class: TCP, other and closing TCP, each never answered and
  answered. Within a wheel every flow has the same timeout, so the oldest bucket is also the
  first to expire. A flow changes wheel on its first reply and when TCP closes (FIN both ways or
  RST): rare events, at most twice per flow.
- Expiry is lazy and sliced, as conntrack's and Suricata's are: `sweep`, once per batch, looks at
  no more than `sweep_budget` flows, only in buckets wholly past their timeout; a flow found past
  its timeout by `seen` is ended there, so an expired flow never lends its verdict to a packet.
- Bounded: a new flow in a full table first takes back a flow past its timeout, else evicts one
  that never saw a reply (conntrack's "early drop", longest idle first: a SYN flood pushes out
  only half-open flows), else a closing TCP flow (it has finished), else the longest idle. At
  most `evict_budget` flows are re-filed looking for it. Every way out is counted: created =
  active + expired + evicted early + evicted idle, always.
- Each flow is an object the cyclic garbage collector tracks, and a full collection walks them
  all: 0.4-0.75 us a flow (150 ms with 200,000 flows), which CPython starts by itself each time
  the survivors grow by a quarter. A flow that leaves the table is in no cycle and is freed at
  once, so the worker may take the live ones out of the walk with `gc.freeze()` (2 us) now and
  then; a full collection then costs what is new since (8 ms after 20,000 new flows).

Per packet, the worker does (times are monotonic ns, taken once per batch; key from
appliance.flowkey, `key == flow.key` when it went forward):

    flow = flows.seen(key, now_ns, length, tcp_flags)     # counts the packet; None: no live flow
    if flow is None:
        ...judge the packet...; flow = flows.open(key, now_ns, length, verdict, rule, tcp_flags)
    elif flow.generation != generation:                   # decided by an older policy: re-judge
        ...judge the packet...; flows.decide(flow, verdict, rule)
    ...act on flow.verdict...

and once per batch `flows.sweep(now_ns)`. On a reload it sets `flows.generation`. Measured
(flow_profile.py, 200,000 flows, the 2-CPU bench host): the key 0.10 us and `seen` 0.17 us more
while the flow is in the CPU cache, 0.9 us together when every batch meets other flows (cache
misses, most of them the dict's); `open` 1.9 us, 2.9-3.3 us when it evicts; `sweep` 0.8 us
with nothing due, 0.76 us per flow it expires.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

from appliance.flowkey import ENDPOINT_LEN, FlowKey, reverse_key
from appliance.inner import PROTO_TCP

TICK_SHIFT = 30  # a bucket spans 2**30 ns (1.07 s): idle order and expiry are exact to that
_NS = 1_000_000_000

# TCP flags and what a flow remembers of them.
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
_CLOSES = TCP_FIN | TCP_RST  # what starts a flow's closing (_tcp)
FIN_FORWARD, FIN_REVERSE, RST_SEEN = 1, 2, 4
_FIN_BOTH = FIN_FORWARD | FIN_REVERSE
PROTOCOL_AT = ENDPOINT_LEN  # the protocol's byte in a key


class Flow:
    """One inner flow. The table owns it; the caller reads it and sets a verdict via `decide`."""

    __slots__ = (
        "bucket",
        "created_ns",
        "fwd_bytes",
        "fwd_packets",
        "generation",
        "key",
        "last_ns",
        "rev_bytes",
        "rev_packets",
        "rkey",
        "rule",
        "tcp",
        "timeout_ns",
        "verdict",
        "watch",
        "wheel",
    )
    key: FlowKey  # as the packet that opened it had it: the forward direction
    rkey: FlowKey  # the reverse direction's (the same object when both are equal)
    created_ns: int
    last_ns: int
    fwd_packets: int
    fwd_bytes: int
    rev_packets: int
    rev_bytes: int
    verdict: int  # the caller's code (pass, drop, reject, ...)
    rule: int  # the index of the rule that decided it
    generation: int  # the policy generation that decided it
    tcp: int  # FIN_FORWARD | FIN_REVERSE | RST_SEEN
    timeout_ns: int  # idle time after which it expires (its wheel's)
    wheel: _Wheel | None  # None once it has left the table
    watch: Any  # the caller's: what decides a flow not decided yet (nameflow.NameWatch), or None
    bucket: int  # the tick it is filed under in its wheel

    @property
    def replied(self) -> bool:
        """The reverse direction has been seen."""
        return self.rev_packets > 0

    @property
    def closing(self) -> bool:
        """TCP saw FIN both ways, or an RST: the flow lingers briefly, then expires."""
        return bool(self.tcp & RST_SEEN) or self.tcp & _FIN_BOTH == _FIN_BOTH

    @property
    def alive(self) -> bool:
        return self.wheel is not None


class _Wheel:
    """Flows of one timeout, in sets by the tick they are filed under (module doc)."""

    __slots__ = ("buckets", "last_tick", "name", "oldest", "timeout_ns")

    def __init__(self, name: str, timeout_ns: int) -> None:
        self.name = name
        self.timeout_ns = timeout_ns
        self.buckets: dict[int, set[Flow]] = {}
        self.oldest: int | None = None  # the lowest tick with a bucket
        self.last_tick = 0  # the tick filed under last: its object is shared (32 bytes a flow)

    def file(self, flow: Flow, tick: int) -> None:
        if tick == self.last_tick:
            tick = self.last_tick
        else:
            self.last_tick = tick
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = set()
            if self.oldest is None or tick < self.oldest:
                self.oldest = tick
        bucket.add(flow)
        flow.wheel = self
        flow.bucket = tick
        flow.timeout_ns = self.timeout_ns

    def unfile(self, flow: Flow) -> None:
        bucket = self.buckets[flow.bucket]
        bucket.discard(flow)
        if not bucket:
            self._drop(flow.bucket)
        flow.wheel = None

    def pop_oldest(self) -> Flow:
        """Take any flow of the oldest bucket out of the wheel (the caller checks `oldest`)."""
        tick = self.oldest
        assert tick is not None
        bucket = self.buckets[tick]
        flow = bucket.pop()
        if not bucket:
            self._drop(tick)
        flow.wheel = None
        return flow

    def __len__(self) -> int:
        return sum(map(len, self.buckets.values()))

    def _drop(self, tick: int) -> None:
        del self.buckets[tick]
        if tick == self.oldest:  # once per bucket; a wheel has a few hundred buckets at most
            self.oldest = min(self.buckets) if self.buckets else None


class FlowCounters(NamedTuple):
    """What the table has done since it was made; created = active + expired + both evictions."""

    active: int
    created: int
    expired: int
    evicted_early: int  # never saw a reply
    evicted_idle: int  # closing, or the longest idle


class FlowTable:
    """A worker's flows: `seen` per packet, `open` for a new one, `sweep` per batch (module doc)."""

    def __init__(
        self,
        max_flows: int,
        *,
        tcp_timeout_s: float = 350.0,
        other_timeout_s: float = 120.0,
        closing_linger_s: float = 10.0,
        sweep_budget: int = 128,
        evict_budget: int = 64,
    ) -> None:
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, not {max_flows}")
        for name, value in (
            ("tcp_timeout_s", tcp_timeout_s),
            ("other_timeout_s", other_timeout_s),
            ("closing_linger_s", closing_linger_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if sweep_budget < 1 or evict_budget < 0:
            raise ValueError("sweep_budget must be at least 1 and evict_budget not negative")
        self.max_flows = max_flows
        self.sweep_budget = sweep_budget
        self.evict_budget = evict_budget
        self.generation = 0  # the policy generation `open` and `decide` stamp
        tcp_ns, other_ns = round(tcp_timeout_s * _NS), round(other_timeout_s * _NS)
        linger_ns = round(closing_linger_s * _NS)
        # Never answered: early drop takes these first.
        self._new_tcp = _Wheel("new tcp", tcp_ns)
        self._new_other = _Wheel("new other", other_ns)
        self._new_closing = _Wheel("new closing", linger_ns)
        # Answered: a closing one first, then the longest idle.
        self._answered_tcp = _Wheel("answered tcp", tcp_ns)
        self._answered_other = _Wheel("answered other", other_ns)
        self._closing = _Wheel("closing", linger_ns)
        self._on_reply = {
            self._new_tcp: self._answered_tcp,
            self._new_other: self._answered_other,
            self._new_closing: self._closing,
        }
        self._wheels = (
            self._new_tcp,
            self._new_other,
            self._new_closing,
            self._answered_tcp,
            self._answered_other,
            self._closing,
        )
        self._turn = 0  # the wheel the next sweep starts with
        self._clean_at: int | None = None  # a time at which no wheel had anything due left
        self._by_key: dict[FlowKey, Flow] = {}
        self._get = self.lookup = self._by_key.get  # lookup: the flow filed under a key, if any
        # Told of each flow that leaves the table, and whether it was evicted (else it expired:
        # idle, or closed and lingered): for what its `watch` holds, and flow records.
        self.on_end: Callable[[Flow, bool], None] | None = None
        self.active = 0
        self.created = 0
        self.expired = 0
        self.evicted_early = 0
        self.evicted_idle = 0

    def __len__(self) -> int:
        return self.active

    # ---- per packet ----------------------------------------------------------------------------

    def seen(self, key: FlowKey, now_ns: int, length: int, tcp_flags: int = 0) -> Flow | None:
        """Count a packet of the flow `key` names, in whichever direction it went, and return the
        flow; None when there is no live flow (the caller judges the packet and `open`s one).
        `length`: the inner packet's bytes; `tcp_flags`: its TCP flags byte (0 unless TCP)."""
        flow = self._get(key)
        if flow is None:
            return None
        if now_ns - flow.last_ns >= flow.timeout_ns:  # the sweep has not reached it yet
            self._end(flow)
            self.expired += 1
            return None
        if key == flow.key:
            flow.fwd_packets += 1
            flow.fwd_bytes += length
        else:
            if not flow.rev_packets:
                self._answered(flow, now_ns)
            flow.rev_packets += 1
            flow.rev_bytes += length
        flow.last_ns = now_ns
        # _tcp acts on a SYN only when the flow is closing (so flow.tcp is set): a SYN-ACK on
        # an open flow is spared the call. With `open`'s: a batch of 64 SYNs measured 7.4 us a
        # packet, 7.2 us so (firewall_profile.py's policy).
        if tcp_flags & _CLOSES or (tcp_flags & TCP_SYN and flow.tcp):
            return self._tcp(flow, key == flow.key, tcp_flags, now_ns)
        return flow

    def open(
        self,
        key: FlowKey,
        now_ns: int,
        length: int,
        verdict: int,
        rule: int,
        tcp_flags: int = 0,
    ) -> Flow:
        """Start the flow `key` names with this packet (counted as forward) and its verdict, under
        the current generation; in a full table, make room first (module doc)."""
        old = self._get(key)
        if old is not None:  # seen() would have ended it had it been called: it timed out
            self._end(old)
            self.expired += 1
        if self.active >= self.max_flows:
            self._make_room(now_ns)
        rkey = reverse_key(key)
        if rkey == key:  # both ends the same: one key serves both directions
            rkey = key
        flow = Flow()
        flow.key, flow.rkey = key, rkey
        flow.created_ns = flow.last_ns = now_ns
        flow.fwd_packets, flow.fwd_bytes, flow.rev_packets, flow.rev_bytes = 1, length, 0, 0
        flow.verdict, flow.rule, flow.generation = verdict, rule, self.generation
        flow.tcp = 0
        flow.watch = None
        self._by_key[key] = flow
        self._by_key[rkey] = flow
        (self._new_tcp if key[PROTOCOL_AT] == PROTO_TCP else self._new_other).file(
            flow, now_ns >> TICK_SHIFT
        )
        self.active += 1
        self.created += 1
        if tcp_flags & _CLOSES:  # a SYN (the usual first packet) changes nothing on a new flow
            self._tcp(flow, True, tcp_flags, now_ns)
        return flow

    def decide(self, flow: Flow, verdict: int, rule: int) -> None:
        """Record a new verdict for `flow`, judged under the current generation."""
        flow.verdict, flow.rule, flow.generation = verdict, rule, self.generation

    # ---- per batch -----------------------------------------------------------------------------

    def sweep(self, now_ns: int) -> int:
        """Expire flows past their timeout, looking at `sweep_budget` flows at most; return how
        many expired. Call once per batch (and when idle: the receive timeout)."""
        if not self.active:  # the stateless policy's table: 2 us a batch saved (one datagram
            return 0  # per batch is how a lightly loaded worker runs, and that is latency)
        return self._sweep(now_ns, self.sweep_budget)

    def counters(self) -> FlowCounters:
        return FlowCounters(
            self.active, self.created, self.expired, self.evicted_early, self.evicted_idle
        )

    def flows(self) -> list[Flow]:
        """A snapshot of the live flows (for a listing), 35-60 ns a flow (measured with 200,000):
        about 50 ms per million flows in one go. Flows in it may leave the table later:
        `flow.alive` says whether one still is."""
        buckets = [bucket for wheel in self._wheels for bucket in wheel.buckets.values()]
        return list(itertools.chain.from_iterable(buckets))

    def wheel_sizes(self) -> dict[str, int]:
        """Flows per wheel (a diagnostic: it walks every bucket)."""
        return {wheel.name: len(wheel) for wheel in self._wheels}

    # ---- rare events ---------------------------------------------------------------------------

    def _answered(self, flow: Flow, now_ns: int) -> None:
        """The first packet of the reverse direction: the flow leaves the early-drop wheels."""
        wheel = flow.wheel
        assert wheel is not None
        wheel.unfile(flow)
        self._on_reply[wheel].file(flow, now_ns >> TICK_SHIFT)

    def _tcp(self, flow: Flow, forward: bool, flags: int, now_ns: int) -> Flow | None:
        """FIN, SYN or RST on a TCP flow: closing starts the linger; a SYN on a closing flow is a
        new connection on the same ports, so the old flow ends (the caller opens the new one)."""
        state = flow.tcp
        if state & RST_SEEN or state & _FIN_BOTH == _FIN_BOTH:
            if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
                self._end(flow)
                self.expired += 1
                return None
            return flow
        if flags & TCP_RST:
            state |= RST_SEEN
        if flags & TCP_FIN:
            state |= FIN_FORWARD if forward else FIN_REVERSE
        flow.tcp = state
        if state & RST_SEEN or state & _FIN_BOTH == _FIN_BOTH:
            wheel = flow.wheel
            assert wheel is not None
            wheel.unfile(flow)
            closing = self._closing if flow.rev_packets else self._new_closing
            closing.file(flow, now_ns >> TICK_SHIFT)
        return flow

    def _end(self, flow: Flow, evicted: bool = False) -> None:
        """Take `flow` out of the table (the caller counts why)."""
        if flow.wheel is not None:
            flow.wheel.unfile(flow)
        del self._by_key[flow.key]
        if flow.rkey is not flow.key:
            del self._by_key[flow.rkey]
        self.active -= 1
        if self.on_end is not None:
            self.on_end(flow, evicted)

    def _sweep(self, now_ns: int, budget: int) -> int:
        """Expire flows from buckets wholly past their wheel's timeout, re-filing the ones seen
        since, until `budget` flows have been looked at; wheels take turns starting."""
        if now_ns == self._clean_at:
            return 0
        expired = 0
        wheels = self._wheels
        turn = self._turn
        self._turn = (turn + 1) % len(wheels)
        for i in range(len(wheels)):
            wheel = wheels[(turn + i) % len(wheels)]
            cutoff = now_ns - wheel.timeout_ns  # last seen at or before it: expired
            horizon = (cutoff + 1) >> TICK_SHIFT  # every bucket before it is wholly expired
            while budget > 0 and wheel.oldest is not None and wheel.oldest < horizon:
                flow = wheel.pop_oldest()
                budget -= 1
                if flow.last_ns <= cutoff:
                    self._end(flow)
                    expired += 1
                else:
                    wheel.file(flow, flow.last_ns >> TICK_SHIFT)
            if budget <= 0:
                break
        else:
            # Nothing more is due at this time: until the clock moves, flows are filed only
            # under ticks no older than their wheel's oldest or the present one.
            self._clean_at = now_ns
        self.expired += expired
        return expired

    def _make_room(self, now_ns: int) -> None:
        """Free one place: a flow past its timeout, else evict (module doc)."""
        while self.active >= self.max_flows:
            if self._sweep(now_ns, max(self.evict_budget, 1)):
                continue
            victim = self._oldest((self._new_tcp, self._new_other, self._new_closing))
            if victim is not None:
                self.evicted_early += 1
            else:
                victim = self._oldest((self._closing,)) or self._oldest(
                    (self._answered_tcp, self._answered_other)
                )
                assert victim is not None  # the table is full, so some wheel holds a flow
                self.evicted_idle += 1
            self._end(victim, evicted=True)

    def _oldest(self, wheels: tuple[_Wheel, ...]) -> Flow | None:
        """Take out the longest idle flow of `wheels` (to the tick), re-filing at most
        `evict_budget` flows seen since they were filed; past that, the last one looked at."""
        budget = self.evict_budget
        while True:
            wheel = None
            for candidate in wheels:
                if candidate.oldest is not None and (
                    wheel is None or candidate.oldest < wheel.oldest  # type: ignore[operator]
                ):
                    wheel = candidate
            if wheel is None:
                return None
            tick = wheel.oldest
            assert tick is not None
            flow = wheel.pop_oldest()
            seen_tick = flow.last_ns >> TICK_SHIFT
            if seen_tick <= tick or budget <= 0:
                return flow
            wheel.file(flow, seen_tick)
            budget -= 1
