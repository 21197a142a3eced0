"""Prometheus metrics over the stats table, through a custom prometheus_client collector.

Each scrape reads one fresh snapshot; nothing is cached or counted twice. Per-worker families carry
a `slot` label; the appliance-wide totals are separate families without it, so sum() over the
per-worker ones and the totals never mix.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from health.reader import StatsReader, WorkerView
from supervisor.states import State

PREFIX = "gwlb"
# Words that say how much there is now, not how often something happened.
GAUGES = frozenset({"flows_active"})
_BREAKDOWNS = {
    "malformed_by_reason": ("malformed_by_reason", "reason"),
    "dropped_by_rule": ("dropped_by_rule", "rule"),
    "hits_by_rule": ("hits_by_rule", "rule"),
    "audited_by_rule": ("audited_by_rule", "rule"),
    "send_errors_by_errno": ("send_errors_by_errno", "errno"),
}


class StatsCollector(Collector):
    def __init__(self, reader: StatsReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        snap = self.reader.snapshot()
        yield GaugeMetricFamily(f"{PREFIX}_up", "1 when the stats table exists", int(snap.present))
        if not snap.present:
            return
        yield GaugeMetricFamily(f"{PREFIX}_ready", "1 once every worker heartbeated", snap.ready)
        yield GaugeMetricFamily(
            f"{PREFIX}_draining", "1 while drained by the operator", snap.draining
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_config_generation", "config reloads applied", snap.generation
        )
        yield CounterMetricFamily(
            f"{PREFIX}_reloads_refused", "reloads refused as invalid", snap.reloads_refused
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_supervisor_heartbeat_age_seconds",
            "seconds since the supervisor's last heartbeat",
            snap.supervisor_heartbeat_age_s or 0.0,
        )
        yield from self._workers(snap.workers)

    def _workers(self, workers: tuple[WorkerView, ...]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            f"{PREFIX}_worker_state", "1 for the worker's current state", labels=["slot", "state"]
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts", "restarts of the slot", labels=["slot"]
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_worker_heartbeat_age_seconds",
            "seconds since the worker's last heartbeat",
            labels=["slot"],
        )
        plain: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        totals: dict[str, float] = {}
        broken: dict[str, CounterMetricFamily] = {}
        broken_totals: dict[str, dict[str, float]] = {}
        for w in workers:
            slot = str(w.slot)
            for name in State.__members__:
                state.add_metric([slot, name], float(w.state == name))
            restarts.add_metric([slot], w.restarts)
            if w.heartbeat_age_s is not None:
                age.add_metric([slot], w.heartbeat_age_s)
            for name, value in w.counters.items():
                if isinstance(value, dict):
                    metric, label = _BREAKDOWNS[name]
                    family = broken.setdefault(
                        name,
                        CounterMetricFamily(
                            f"{PREFIX}_worker_{metric}",
                            f"{name} per worker",
                            labels=["slot", label],
                        ),
                    )
                    for key, count in value.items():
                        family.add_metric([slot, key], count)
                        sums = broken_totals.setdefault(name, {})
                        sums[key] = sums.get(key, 0) + count
                else:
                    kind = GaugeMetricFamily if name in GAUGES else CounterMetricFamily
                    one = plain.setdefault(
                        name, kind(f"{PREFIX}_worker_{name}", f"{name} per worker", labels=["slot"])
                    )
                    one.add_metric([slot], float(value))  # type: ignore[arg-type]
                    totals[name] = totals.get(name, 0) + float(value)  # type: ignore[arg-type]
        yield from (state, restarts, age, *plain.values(), *broken.values())
        for name, value in totals.items():
            kind = GaugeMetricFamily if name in GAUGES else CounterMetricFamily
            yield kind(f"{PREFIX}_{name}", f"{name}, all workers", value)
        for name, sums in broken_totals.items():
            metric, label = _BREAKDOWNS[name]
            family = CounterMetricFamily(
                f"{PREFIX}_{metric}", f"{name}, all workers", labels=[label]
            )
            for key, count in sums.items():
                family.add_metric([key], count)
            yield family


def registry_for(reader: StatsReader) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(reader))
    return registry
