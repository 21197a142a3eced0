"""Which workers keep losing datagrams to a full receive buffer, as the probes see it.

Why the health service keeps state of its own: the stats table holds each worker's count of
datagrams its socket dropped (counters.RX_BUFFER_DROPS), not when they were dropped, and a count
that rose once (a burst, a worker stopped for a moment) is no reason to turn new flows away. What
is, is a count that keeps rising: the data plane cannot keep up. So every snapshot a request reads
is also an observation, remembered per slot, and a worker is overflowing once its count has been
seen rising over `bound_s` without ever standing still for `bound_s` in between; it recovers once
its count stands still for `bound_s`. A rise seen after the watch was not asked for over twice
`bound_s` starts afresh (nothing says the drops went on in between). The state is one small record
per slot of the current table, and is shared by the service's request threads under a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from health.reader import Snapshot

COUNTER = "rx_buffer_drops"  # the counters.RX_BUFFER_DROPS word, as snapshots name it


@dataclass
class _Track:
    count: int
    seen_ns: int  # the last observation
    rose_ns: int = 0  # the last observation that found the count higher
    since_ns: int | None = None  # the first rise of the current run of rises; None: no run


class OverflowWatch:
    """Per slot, whether its drop count has kept rising for `bound_s` (0: never asked)."""

    def __init__(self, bound_s: float, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.bound_ns = int(bound_s * 1e9)
        self._clock = clock
        self._tracks: dict[int, _Track] = {}
        self._lock = threading.Lock()

    def observe(self, snapshot: Snapshot) -> dict[int, float]:
        """Take the snapshot's counts in; the overflowing slots, each with the seconds its count
        has been rising."""
        if not self.bound_ns:
            return {}
        with self._lock:
            now = self._clock()
            tracks = {}
            for worker in snapshot.workers:
                count = int(worker.counters.get(COUNTER, 0))  # type: ignore[call-overload]
                tracks[worker.slot] = self._follow(self._tracks.get(worker.slot), count, now)
            self._tracks = tracks  # slots the table no longer has are forgotten
            return {
                slot: (t.rose_ns - t.since_ns) / 1e9
                for slot, t in tracks.items()
                if t.since_ns is not None and t.rose_ns - t.since_ns >= self.bound_ns
            }

    def _follow(self, track: _Track | None, count: int, now: int) -> _Track:
        bound = self.bound_ns
        if track is None or count < track.count:  # a new table, or a worker that started over
            return _Track(count, now)
        if count > track.count:
            if track.since_ns is None or now - track.seen_ns > 2 * bound:
                track.since_ns = now
            track.rose_ns = now
        elif track.since_ns is not None and now - track.rose_ns >= bound:
            track.since_ns = None  # stood still for the bound: recovered
        track.count, track.seen_ns = count, now
        return track
