"""A read-only snapshot of the stats table: what the health service and `appliancectl status`
both know, read the same way, never from the data path itself.

`StatsReader` is the seam: the real `TableReader` maps the table the supervisor created; tests pass
a fake that returns hand-made snapshots. Rule names (for the dropped-by-rule counters) come from
`rule_names.json`, which the supervisor writes beside the table at each config generation, so a
reader never loads or compiles a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from appliance import counters as cnt
from appliance.stats import H, S, StatsTable, now_ns
from supervisor.files import write_whole
from supervisor.states import State

RULE_NAMES = "rule_names.json"  # {"generation": N, "names": [...]}, written by the supervisor


@dataclass(frozen=True)
class WorkerView:
    slot: int
    pid: int
    state: str
    cpu: int
    restarts: int
    heartbeat_age_s: float | None  # None: never stamped
    generation: int
    counters: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    present: bool  # False: no stats table (the appliance is not running)
    supervisor_pid: int = 0
    supervisor_alive: bool = True  # its pid is an applianced that has not exited
    supervisor_heartbeat_age_s: float | None = None
    ready: bool = False
    draining: bool = False
    generation: int = 0
    reloads_refused: int = 0
    uptime_s: float = 0.0
    workers: tuple[WorkerView, ...] = ()


class StatsReader(Protocol):
    def snapshot(self) -> Snapshot: ...


class TableReader:
    """Reads the stats table in `runtime_dir`; maps it again when the supervisor made a new one."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self._table: StatsTable | None = None
        self._inode = 0
        self._names: tuple[int, tuple[str, ...]] = (-1, ())

    def _open(self) -> StatsTable | None:
        try:
            inode = (self.runtime_dir / "stats.bin").stat().st_ino
            if self._table is None or inode != self._inode:
                self._table, self._inode = StatsTable.open(self.runtime_dir), inode
        except (OSError, ValueError):
            self._table = None
        return self._table

    def rule_names(self, generation: int) -> tuple[str, ...]:
        if self._names[0] != generation:
            try:
                data = orjson.loads((self.runtime_dir / RULE_NAMES).read_bytes())
                names = tuple(str(n) for n in data["names"])
                if data["generation"] == generation:  # else: read again at the next snapshot
                    self._names = (generation, names)
                return names
            except (OSError, ValueError, KeyError, TypeError):
                return ()
        return self._names[1]

    def snapshot(self) -> Snapshot:
        table = self._open()
        if table is None:
            return Snapshot(present=False)
        now, header = now_ns(), table.header
        generation = int(header[H.CONFIG_GENERATION])
        names = self.rule_names(generation)
        workers = []
        for k in range(table.slots):
            words = table.slot(k)
            stamp = int(words[S.HEARTBEAT_NS])
            workers.append(
                WorkerView(
                    slot=k,
                    pid=int(words[S.PID]),
                    state=_state_name(int(words[S.STATE])),
                    cpu=int(words[S.CPU]),
                    restarts=int(words[S.RESTARTS]),
                    heartbeat_age_s=(now - stamp) / 1e9 if stamp else None,
                    generation=int(words[S.GENERATION]),
                    counters=cnt.snapshot(table.counters(k), names),
                )
            )
        beat = int(header[H.SUPERVISOR_HEARTBEAT_NS])
        return Snapshot(
            present=True,
            supervisor_pid=int(header[H.SUPERVISOR_PID]),
            supervisor_alive=applianced_alive(int(header[H.SUPERVISOR_PID])),
            supervisor_heartbeat_age_s=(now - beat) / 1e9 if beat else None,
            ready=bool(header[H.READY]),
            draining=bool(header[H.DRAINING]),
            generation=generation,
            reloads_refused=int(header[H.RELOADS_REFUSED]),
            uptime_s=(now - int(header[H.STARTED_NS])) / 1e9,
            workers=tuple(workers),
        )


def applianced_alive(pid: int) -> bool:
    """Whether `pid` is still a running applianced: not gone, not a zombie, not reused by
    another program. Why ask the kernel: a heartbeat only goes stale after staleness_s, and for
    that long a dead supervisor's workers (which die with it) would look alive."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]  # after "(comm) "
    return state not in (b"Z", b"X") and b"applianced" in cmdline


def _state_name(value: int) -> str:
    try:
        return State(value).name
    except ValueError:
        return f"UNKNOWN({value})"


def write_rule_names(runtime_dir: Path, generation: int, names: tuple[str, ...]) -> None:
    """Publish the rule names of a config generation for readers (atomically, by rename)."""
    write_whole(
        runtime_dir / RULE_NAMES, orjson.dumps({"generation": generation, "names": list(names)})
    )
