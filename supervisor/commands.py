"""What `appliancectl` can ask of the supervisor: one handler per command, and the status and
stats they answer with.

Status and stats are read from the stats table through the same snapshot reader the health
service uses (supervisor/snapshot.py), so `appliancectl status` and GET /status cannot disagree;
only what the table does not hold (uptime, the last exit, the reload outcome, the interface facts,
the health service's process) comes from the supervisor's own state. Handlers raise ValueError
with a sentence for a request they refuse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import counters as cnt
from appliance.stats import H, StatsTable, now_ns
from supervisor import flowdump
from supervisor.arbiter import Arbiter
from supervisor.capturing import CaptureDesk
from supervisor.control import Deferred, Handler
from supervisor.healthproc import HealthService
from supervisor.logring import LogRing
from supervisor.snapshot import TableReader
from supervisor.states import State

PROTOCOL = 1
TAIL_DEFAULT = 50
_DROPS = tuple(c.name.lower() for c in cnt.REFUSALS)

log = logging.getLogger("applianced")


class Commands:
    def __init__(
        self,
        arbiter: Arbiter,
        table: StatsTable,
        runtime_dir: Path,
        ring: LogRing,
        health: HealthService,
        supervisor_facts: Callable[[], dict[str, Any]],
        reload: Callable[[], dict[str, Any]],
        shutdown: Callable[[], None],
    ) -> None:
        self.arbiter = arbiter
        self.table = table
        self.reader = TableReader(runtime_dir)
        self.runtime_dir = runtime_dir
        self.ring = ring
        self.health = health
        self.supervisor_facts = supervisor_facts
        self._reload = reload
        self._shutdown = shutdown
        self.captures = CaptureDesk(table, runtime_dir)

    def handlers(self) -> dict[str, Handler]:
        return {
            "status": self._no_args(self.status),
            "stats": self._no_args(self.stats),
            "start": lambda args: self._each_slot(args, self.arbiter.start),
            "stop": lambda args: self._each_slot(args, self.arbiter.stop),
            "restart": lambda args: self._each_slot(args, self.arbiter.restart),
            "reload": self._no_args(lambda: {"reload": self._reload()}),
            "drain": self._no_args(lambda: self._set_draining(1)),
            "undrain": self._no_args(lambda: self._set_draining(0)),
            "tail": self.tail,
            "flows": self.flows,
            "capture": self.capture,
            "version": self._no_args(lambda: {"version": version(), "protocol": PROTOCOL}),
            "shutdown": self._no_args(self.shutdown),
        }

    @staticmethod
    def _no_args(handler: Callable[[], dict[str, Any]]) -> Handler:
        def checked(args: list[str]) -> dict[str, Any]:
            if args:
                raise ValueError(f"takes no arguments, not {' '.join(args)!r}")
            return handler()

        return checked

    # --- verbs ------------------------------------------------------------------------------

    def _slots(self, words: list[str]) -> list[int]:
        """The slots `SLOT|all` names; ValueError with a sentence otherwise."""
        slots = len(self.arbiter.slots)
        if words == ["all"]:
            return list(range(slots))
        if len(words) == 1 and words[0].isdigit() and int(words[0]) < slots:
            return [int(words[0])]
        raise ValueError(f"name a slot from 0 to {slots - 1}, or all")

    def _each_slot(self, args: list[str], verb: Callable[[int], None]) -> dict[str, Any]:
        targets = self._slots(args)
        for k in targets:
            verb(k)
        return {"slots": targets}

    def _set_draining(self, value: int) -> dict[str, Any]:
        self.table.header[H.DRAINING] = value
        log.info("draining %s", "on: health answers 503" if value else "off")
        return {"draining": bool(value)}

    def tail(self, args: list[str]) -> dict[str, Any]:
        follow = "follow" in args
        rest = [a for a in args if a != "follow"]
        if len(rest) > 1 or (rest and not rest[0].isdigit()):
            raise ValueError(f"tail takes a line count and -f, not {' '.join(rest)!r}")
        count = int(rest[0]) if rest else TAIL_DEFAULT
        lines = list(self.ring.lines)[-count:] if count else []
        return {"lines": lines, "follow": follow}

    def flows(self, args: list[str]) -> Deferred:
        """Ask the running workers for their flows; the answer comes when they have given it."""
        chosen, filters = self._slots(args[:1] or ["all"]), flowdump.parse_filters(args[1:])
        running = [k for k in chosen if self.arbiter.slots[k].state is State.RUNNING]
        number = flowdump.ask(self.table, self.runtime_dir, filters)
        deadline = now_ns() + int(flowdump.WAIT_S * 1e9)

        def poll() -> dict[str, Any] | None:
            final = now_ns() > deadline
            return flowdump.gather(self.table, self.runtime_dir, number, running, final)

        return Deferred(poll, deadline + int(1e9), "the workers did not answer in time")

    def capture(self, args: list[str]) -> dict[str, Any]:
        """Start a capture on the running workers asked for (supervisor/capturing.py), or
        `stop` one; the packets go from the workers to the client's socket."""
        if args[:1] == ["stop"]:
            return self.captures.stop(args[1:])
        chosen = self._slots(args[:1] or ["all"])
        running = [k for k in chosen if self.arbiter.slots[k].state is State.RUNNING]
        reply = self.captures.begin(running, args[1:])
        log.info("capture %d on workers %s for %s", reply["request"], running, args[1:])
        return {**reply, "workers": len(self.arbiter.slots)}

    def shutdown(self) -> dict[str, Any]:
        log.info("shutdown requested over the control socket")
        self._shutdown()
        return {"detail": "shutting down"}

    # --- what the operator reads ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        snap, now = self.reader.snapshot(), now_ns()
        workers = []
        for slot, view in zip(self.arbiter.slots, snap.workers, strict=True):
            alive = slot.state in (State.STARTING, State.RUNNING, State.STOPPING)
            counters = view.counters
            workers.append(
                {
                    "slot": slot.index,
                    "pid": slot.pid or None,
                    "cpu": slot.cpu,
                    "state": slot.state.name,
                    "restarts": slot.restarts,
                    "uptime_s": round((now - slot.started_ns) / 1e9, 1) if alive else None,
                    "heartbeat_age_s": None
                    if view.heartbeat_age_s is None
                    else round(view.heartbeat_age_s, 3),
                    "generation": view.generation,
                    "packets_in": counters.get("received", 0),
                    "packets_out": counters.get("sent", 0),
                    "drops": sum(int(counters.get(name, 0)) for name in _DROPS),  # type: ignore[call-overload]
                    # the kernel's, before the worker saw them: its socket's buffer was full
                    "rx_buffer_drops": counters.get("rx_buffer_drops", 0),
                    "last_exit": slot.last_exit or None,
                }
            )
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round(snap.uptime_s, 1),
                "generation": snap.generation,
                "draining": snap.draining,
                "ready": snap.ready,
                "reloads_refused": snap.reloads_refused,
                **self.supervisor_facts(),
            },
            "workers": workers,
            "health": self.health.status(),
        }

    def stats(self) -> dict[str, Any]:
        per_worker = [view.counters for view in self.reader.snapshot().workers]
        return {"workers": per_worker, "total": cnt.total(per_worker)}


def version() -> str:
    try:
        return metadata.version("gwlb-appliance")
    except metadata.PackageNotFoundError:
        return "unknown"
