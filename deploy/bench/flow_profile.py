"""Profile the flow table (appliance.flows) the way the worker uses it, without sockets or root.

    python3 deploy/bench/flow_profile.py [--flows 200000] [--rounds 9] [--quick]

Datagrams in GWLB's usual layout are laid into batch slots as the receive path leaves them, and
each figure is the CPU time per packet (or per flow, per call) of the operation alone, over
batches of 64: the best of --rounds rounds and their median (the machine may be shared; the
best is the one to compare). It prints:
- per packet of a known flow: the key (one struct read and two concatenations inline, or
  key_v4's protocol dispatch), the key and the dict lookup (the floor), and `seen` (lookup,
  direction, counters, expiry check), over IPv4 and IPv6 TCP, half the packets in each
  direction; once with the batch's 64 flows hot in the CPU cache, once with every batch on
  different flows of a big table (cache misses);
- per new flow: `open` in a table with room, and in a full table under a flood of new flows
  (every insert evicts one that never saw a reply, early drop) and when only answered flows are
  left (every insert evicts the longest idle);
- per batch: `sweep` when nothing is due, and when every flow is due (per call and per flow);
- the listing: per flow, every flow as a record, and filtered down to one;
- memory: bytes per flow (tracemalloc) for IPv4 and IPv6 flows that have carried traffic both
  ways, and the flows one worker holds in 1 GiB;
- garbage collection: what a full collection costs with the table, and after gc.freeze().
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, installed or not
from appliance.flowkey import PORTS_V4, PORTS_V6, FlowKey, key_v4, key_v6
from appliance.flowlist import list_flows
from appliance.flows import TICK_SHIFT, FlowTable

SLOT = 9216  # room per datagram in the batch buffer, as the receive slots have
BATCH = 64
START = 28
ENDPOINT = bytes.fromhex("8f3a5c2e91b04d67")
OPTIONS = (
    bytes.fromhex("01080102")
    + ENDPOINT
    + bytes.fromhex("01080202")
    + bytes(8)
    + bytes.fromhex("01080301")
    + bytes.fromhex("0badf00d")
)
NS = 1_000_000_000


def ends(i: int, version: int) -> tuple[bytes, bytes, int, int]:
    """Flow i's client and server address and port: unique per i up to 2**32."""
    if version == 4:
        client = bytes([10, 64 + (i >> 16 & 63), i >> 8 & 255, i & 255])
        server = bytes([10, 200, i >> 22 & 255, 9])
    else:
        client = bytes.fromhex("fd00000000000000000000000000") + (i & 0xFFFF).to_bytes(2, "big")
        server = bytes.fromhex("fd00000000000000000000000001") + (i >> 16 & 0xFFFF).to_bytes(
            2, "big"
        )
    return client, server, 40000 + i % 20000, 443 + (i // 20000) % 1000


def datagram(i: int, version: int, reverse: bool = False, payload: int = 64) -> bytes:
    """Flow i's TCP packet (an ACK with `payload` bytes), client to server or back."""
    src, dst, sport, dport = ends(i, version)
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x10, 65535, 0, 0) + bytes(payload)
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
        ethertype = 0x86DD
    return struct.pack("!BBHI", 8, 0, ethertype, 0) + OPTIONS + ip + tcp


class Batch:
    """A batch buffer with 64 slots, laid with datagrams like the receive path leaves them."""

    def __init__(self) -> None:
        self.buffer = bytearray(SLOT * BATCH)
        self.starts = [k * SLOT + START for k in range(BATCH)]
        self.lengths = [0] * BATCH

    def lay(self, datagrams: list[bytes]) -> None:
        for k, d in enumerate(datagrams):
            self.buffer[self.starts[k] : self.starts[k] + len(d)] = d
            self.lengths[k] = len(d) - 40


def rounds(measure: Callable[[], float], count: int) -> tuple[float, float]:
    """(best, median) of `count` runs of `measure` (each returns ns per item)."""
    runs = [measure() for _ in range(count)]
    return min(runs), statistics.median(runs)


def show(label: str, figures: tuple[float, float], unit: str = "us") -> None:
    best, median = figures
    scale = 1e-3 if unit == "us" else 1.0
    print(f"  {label:<58} {best * scale:8.3f} {unit}   (median {median * scale:8.3f})")


def filled(count: int, version: int, answered: bool = True) -> tuple[FlowTable, list[FlowKey]]:
    """A table with `count` flows opened at time 0 (answered once when asked); their keys."""
    table = FlowTable(max(count, 1))
    keys = []
    key_fn = key_v4 if version == 4 else key_v6
    for i in range(count):
        key = key_fn(datagram(i, version), 0)
        table.open(key, 0, 104, 0, -1)
        if answered:
            table.seen(key_fn(datagram(i, version, True), 0), 0, 104)
        keys.append(key)
    return table, keys


# ---- per packet of a known flow ---------------------------------------------------------------


def known_flow(args: argparse.Namespace, version: int) -> None:
    count = args.flows
    table, _ = filled(count, version)
    read = PORTS_V4 if version == 4 else PORTS_V6
    key_fn = key_v4 if version == 4 else key_v6
    batch = Batch()
    hot = [datagram(i * 7919 % count, version, k % 2 == 1) for k, i in enumerate(range(BATCH))]
    buffer, starts, lengths = batch.buffer, batch.starts, batch.lengths
    seen, get = table.seen, table._get
    now = 1 << TICK_SHIFT  # a second later: nothing expires
    loops = max(1, args.packets // BATCH)

    def timed(body: Callable[[], None], layouts: list[list[bytes]] | None = None) -> float:
        spent = 0
        for n in range(loops):
            if layouts is not None:
                batch.lay(layouts[n % len(layouts)])
            t0 = time.process_time_ns()
            body()
            spent += time.process_time_ns() - t0
        return spent / (loops * BATCH)

    def empty() -> None:
        for _start, _length in zip(starts, lengths, strict=True):
            pass

    def key_only() -> None:
        for start, _length in zip(starts, lengths, strict=True):
            endpoint, proto, ends = read(buffer, start)
            endpoint + proto + ends

    def key_dispatch() -> None:
        for start, _length in zip(starts, lengths, strict=True):
            key_fn(buffer, start)

    def key_get() -> None:
        for start, _length in zip(starts, lengths, strict=True):
            endpoint, proto, ends = read(buffer, start)
            get(endpoint + proto + ends)

    def key_seen() -> None:
        for start, length in zip(starts, lengths, strict=True):
            endpoint, proto, ends = read(buffer, start)
            seen(endpoint + proto + ends, now, length)

    def key_fn_seen() -> None:
        for start, length in zip(starts, lengths, strict=True):
            seen(key_fn(buffer, start), now, length)

    batch.lay(hot)
    base = rounds(lambda: timed(empty), args.rounds)[0]
    name = f"IPv{version} TCP"
    print(f"A packet of a known flow, {name}, {count} flows, 64 hot flows per batch (minus loop):")
    for label, body in (
        ("key: PORTS_V4/V6 and two concatenations, inline", key_only),
        ("key: key_v4/key_v6 (protocol dispatch, a call)", key_dispatch),
        ("key + dict lookup (the floor)", key_get),
        ("key + seen(): lookup, direction, expiry, counters", key_seen),
        ("key_v4/v6 + seen()", key_fn_seen),
    ):
        best, median = rounds(lambda body=body: timed(body), args.rounds)  # type: ignore[misc]
        show(label, (best - base, median - base))
    # Every batch on other flows: what a busy table costs once its flows are out of the cache.
    layouts = [
        [datagram((n * BATCH + k) * 104729 % count, version, k % 2 == 1) for k in range(BATCH)]
        for n in range(min(loops, 400))
    ]
    print(f"  ... every batch on 64 other flows of the {count} (cache misses):")
    for label, body in (
        ("key + dict lookup", key_get),
        ("key + seen()", key_seen),
    ):
        best, median = rounds(lambda body=body: timed(body, layouts), args.rounds)  # type: ignore[misc]
        show(label, (best - base, median - base))


# ---- new flows ----------------------------------------------------------------------------------


def new_flows(args: argparse.Namespace) -> None:
    count = args.flows
    print(f"A new flow (key built, then open), IPv4 TCP, tables of {count}:")
    fresh = [key_v4(datagram(i, 4), 0) for i in range(count)]
    flood = [key_v4(datagram(count + i, 4), 0) for i in range(count)]

    def insert_room() -> float:
        table = FlowTable(count)
        gc.collect()
        t0 = time.process_time_ns()
        open_ = table.open
        for key in fresh:
            open_(key, 0, 104, 0, -1)
        return (time.process_time_ns() - t0) / count

    show("open() with room", rounds(insert_room, max(3, args.rounds // 3)))

    replies = [key_v4(datagram(count + i, 4, True), 0) for i in range(count // 2)]
    clock = time.process_time_ns
    overhead = min(-clock() + clock() for _ in range(1000))

    def insert_answered() -> float:
        """The table full of answered flows, then new flows each answered at once: every insert
        evicts the longest idle answered flow (only the open() calls are timed)."""
        table, _ = filled(count, 4, answered=True)
        now = 2 << TICK_SHIFT
        open_, seen = table.open, table.seen
        spent = 0
        gc.collect()
        for key, reply in zip(flood, replies, strict=False):
            t0 = clock()
            open_(key, now, 104, 0, -1)
            spent += clock() - t0 - overhead
            seen(reply, now, 104)
        assert table.evicted_idle == len(replies) and table.evicted_early == 0, table.counters()
        return spent / len(replies)

    def insert_flood_early() -> float:
        """Half the table answered, half new flows; then a flood of new flows: each evicts a
        flow that never saw a reply (the table's own, then the flood's), never an answered one."""
        table = FlowTable(count)
        for i, key in enumerate(fresh):
            table.open(key, 0, 104, 0, -1)
            if i % 2 == 0:
                table.seen(key_v4(datagram(i, 4, True), 0), 0, 104)
        now = 2 << TICK_SHIFT
        open_ = table.open
        gc.collect()
        t0 = time.process_time_ns()
        for key in flood:
            open_(key, now, 104, 0, -1)
        spent = (time.process_time_ns() - t0) / count
        assert table.evicted_idle == 0 and table.evicted_early == count, table.counters()
        return spent

    show("open() in a full table, flood: early drop", rounds(insert_flood_early, 3))
    show("open() in a full table of answered flows: longest idle", rounds(insert_answered, 3))


# ---- sweep --------------------------------------------------------------------------------------


def sweeps(args: argparse.Namespace) -> None:
    count = args.flows
    print(f"sweep() per batch, {count} flows, budget {FlowTable(1).sweep_budget} flows per call:")
    table, _ = filled(count, 4)
    now = 10 * NS  # long before the 350 s timeout

    def nothing_due() -> float:
        t0 = time.process_time_ns()
        for i in range(10000):
            table.sweep(now + i)  # a new batch, a new time: every wheel is looked at
        return (time.process_time_ns() - t0) / 10000

    show("nothing due (per call)", rounds(nothing_due, args.rounds))

    def all_due() -> tuple[float, float]:
        expiring, _ = filled(count, 4)
        later = 400 * NS
        calls = 0
        gc.collect()
        t0 = time.process_time_ns()
        while len(expiring):
            expiring.sweep(later)
            calls += 1
        spent = time.process_time_ns() - t0
        assert expiring.expired == count
        return spent / calls, spent / count

    results = [all_due() for _ in range(3)]
    per_call = [r[0] for r in results]
    per_flow = [r[1] for r in results]
    show(
        "every flow due (per call, a full budget expired)",
        (min(per_call), statistics.median(per_call)),
    )
    show("every flow due (per expired flow)", (min(per_flow), statistics.median(per_flow)))


# ---- memory -------------------------------------------------------------------------------------


def listing(args: argparse.Namespace) -> None:
    count = args.flows
    table, _ = filled(count, 4)
    print(f"Listing (appliancectl flows), {count} flows:")

    def every_record() -> float:
        t0 = time.process_time_ns()
        records = sum(1 for _ in list_flows(table, 5 * NS))
        assert records == count
        return (time.process_time_ns() - t0) / count

    def one_match() -> float:
        t0 = time.process_time_ns()
        records = sum(1 for _ in list_flows(table, 5 * NS, address="10.64.0.5"))
        assert records == 1
        return (time.process_time_ns() - t0) / count

    show("every flow as a record (per flow)", rounds(every_record, 3))
    show("filtered by address, one match (per flow walked)", rounds(one_match, 3))


def memory(args: argparse.Namespace) -> None:
    print("Memory per flow (tracemalloc; answered flows, counters past the small-int cache):")
    for version in (4, 6):
        read = key_v4 if version == 4 else key_v6
        samples = []
        for count in (args.flows // 2, args.flows * 3 // 4, args.flows):
            outbound = [datagram(i, version) for i in range(count)]
            inbound = [datagram(i, version, True) for i in range(count)]
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            table = FlowTable(count)
            now = 0
            for i in range(count):
                if i % BATCH == 0:
                    now = 10**12 + i * 1000  # one time per batch, shared by its packets
                key = read(outbound[i], 0)  # the stored key is the packet's: count it
                table.open(key, now, 1400 + i, 0, -1)
                table.seen(read(inbound[i], 0), now, 1400 + i)
                flow = table.seen(read(outbound[i], 0), now, 1000 + i)
                assert flow is not None
                flow.fwd_packets += 1000 + i  # a busy flow's counters are big ints
                flow.rev_packets += 1000 + i
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            samples.append(used / count)
            del table, outbound, inbound
        per_flow = max(samples)
        print(
            f"  IPv{version} TCP: {min(samples):.0f}..{per_flow:.0f} bytes per flow (dict fill "
            f"varies), so {(1 << 30) // per_flow / 1e6:.2f} M flows per worker in 1 GiB"
        )
    garbage_collection(args)


def garbage_collection(args: argparse.Namespace) -> None:
    """Every flow is an object the cyclic collector walks in a full collection, and CPython runs
    one by itself once the objects that survived since the last have grown by a quarter: with a
    churning table that is a stall per quarter of the table's size in new flows. gc.freeze()
    takes every object alive from the walk (they are still freed when unreferenced, and dead
    flows form no cycles), so a worker that freezes now and then only pays for what is new."""
    print("Garbage collection (each flow is an object the cyclic collector tracks):")

    def full_collection() -> float:
        t0 = time.perf_counter_ns()
        gc.collect()
        return (time.perf_counter_ns() - t0) / 1e6

    gc.collect()
    empty = min(full_collection() for _ in range(3))
    table, _ = filled(args.flows, 4)
    walked = min(full_collection() for _ in range(3)) - empty
    print(f"  a full collection with {args.flows} flows: {walked:.1f} ms more than without them")
    t0 = time.perf_counter_ns()
    gc.freeze()
    frozen_ns = time.perf_counter_ns() - t0
    now = 1000 * NS
    churn = args.flows // 10
    for i in range(churn):  # a tenth of the table replaced by new flows
        table.open(key_v4(datagram(args.flows + i, 4), 0), now, 104, 0, -1)
    print(
        f"  gc.freeze(): {frozen_ns / 1e3:.1f} us; a full collection then, after {churn} new "
        f"flows: {min(full_collection() for _ in range(3)):.1f} ms"
    )
    gc.unfreeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--packets", type=int, default=64 * 400, help="per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="20000 flows, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.flows, args.rounds = 20_000, 3
    known_flow(args, 4)
    known_flow(args, 6)
    new_flows(args)
    sweeps(args)
    listing(args)
    memory(args)


if __name__ == "__main__":
    main()
