"""The stats table: a memory-mapped file with one fixed slot per worker.

Why a file of plain 64-bit words: the supervisor, each worker, the health service and the admin CLI
are separate processes that must read each other's state without asking anyone and without locks.
Each word has exactly one writer (the supervisor writes the header and each slot's identity, a
worker writes its own heartbeat and counters), aligned 64-bit stores are atomic on the platforms we
run on, and a reader that sees a counter one batch old is fine. Readers never block writers.

Layout (all little-endian unsigned 64-bit words):
    header  HEADER_WORDS words: magic, version, slots, words per slot, supervisor pid and heartbeat,
            config generation, draining, ready, started, reload refusals, flows request,
            capture request (words up to HEADER_WORDS not named here are zero: room to grow)
    slot k  SLOT_WORDS words: pid, state, cpu, restarts, started_ns, heartbeat_ns, generation,
            flows served, then counters.SIZE counters
"""

from __future__ import annotations

import enum
import mmap
import os
import time
from pathlib import Path

from appliance import counters as cnt

MAGIC = int.from_bytes(b"GWLBSTAT", "little")
VERSION = 3  # 2: the counters of flows and rejects, flows request words; 3: hits per rule
HEADER_WORDS = 16
SLOT_META_WORDS = 8
SLOT_WORDS = SLOT_META_WORDS + cnt.SIZE
FILE_NAME = "stats.bin"


class H(enum.IntEnum):
    """Header word indices."""

    MAGIC = 0
    VERSION = 1
    SLOTS = 2
    SLOT_WORDS = 3
    SUPERVISOR_PID = 4
    SUPERVISOR_HEARTBEAT_NS = 5
    CONFIG_GENERATION = 6
    DRAINING = 7
    READY = 8
    STARTED_NS = 9
    RELOADS_REFUSED = 10
    FLOWS_REQUEST = 11  # bumped by `appliancectl flows`: each worker lists its flows once
    CAPTURE_REQUEST = 12  # bumped by `appliancectl capture`: workers read their request


class S(enum.IntEnum):
    """Slot metadata word indices (counters follow at SLOT_META_WORDS)."""

    PID = 0
    STATE = 1
    CPU = 2
    RESTARTS = 3
    STARTED_NS = 4
    HEARTBEAT_NS = 5
    GENERATION = 6  # the config generation this worker applies
    FLOWS_SERVED = 7  # the last FLOWS_REQUEST this worker answered (flows-SLOT.json)


def now_ns() -> int:
    """The clock of every timestamp in the table: CLOCK_MONOTONIC, shared by all processes."""
    return time.monotonic_ns()


class StatsTable:
    """A view over the table: `header` and `slot(k)` are uint64 memoryviews."""

    def __init__(self, path: Path, buffer: mmap.mmap) -> None:
        self.path = path
        self._map = buffer
        self.words = memoryview(buffer).cast("Q")
        self.header = self.words[:HEADER_WORDS]
        if self.header[H.MAGIC] != MAGIC or self.header[H.VERSION] != VERSION:
            raise ValueError(f"{path}: not a version {VERSION} stats table")
        self.slots = int(self.header[H.SLOTS])
        if self.header[H.SLOT_WORDS] != SLOT_WORDS:
            raise ValueError(f"{path}: slot layout differs from this build's")

    @classmethod
    def create(cls, runtime_dir: Path, slots: int) -> StatsTable:
        """A fresh zeroed table for `slots` workers (the supervisor, before any fork)."""
        path = runtime_dir / FILE_NAME
        size = 8 * (HEADER_WORDS + slots * SLOT_WORDS)
        temporary = path.with_suffix(".new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        words = memoryview(buffer).cast("Q")
        words[H.MAGIC], words[H.VERSION], words[H.SLOTS] = MAGIC, VERSION, slots
        words[H.SLOT_WORDS] = SLOT_WORDS
        words.release()
        os.replace(temporary, path)  # readers only ever see a complete header
        return cls(path, buffer)

    @classmethod
    def open(cls, runtime_dir: Path, writable: bool = False) -> StatsTable:
        """Map an existing table (readers: read-only)."""
        path = runtime_dir / FILE_NAME
        flags = os.O_RDWR if writable else os.O_RDONLY
        fd = os.open(path, flags)
        try:
            size = os.fstat(fd).st_size
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        return cls(path, buffer)

    def slot(self, k: int) -> memoryview:
        """Slot k's words: metadata, then counters."""
        if not 0 <= k < self.slots:
            raise IndexError(f"slot {k} is not in 0..{self.slots - 1}")
        start = HEADER_WORDS + k * SLOT_WORDS
        return self.words[start : start + SLOT_WORDS]

    def counters(self, k: int) -> memoryview:
        """Slot k's counters, laid out as appliance.counters says."""
        return self.slot(k)[SLOT_META_WORDS:]
