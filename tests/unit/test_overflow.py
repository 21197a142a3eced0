"""Readiness and receive-buffer drops: the watch over each worker's drop count (health.overflow),
the verdict's reason, and the health app answering with it, on a clock the tests move."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from appliance.counters import Counter, new_counters, snapshot
from config.loader import parse_config
from health import wsgi
from health.app import create_app
from health.overflow import OverflowWatch
from health.reader import Snapshot, WorkerView
from health.verdict import HealthPolicy, assess
from supervisor.healthproc import HealthService

BOUND_S = 10.0
S = 1_000_000_000  # ns


def worker(slot: int, drops: int) -> WorkerView:
    counters = new_counters()
    counters[Counter.RX_BUFFER_DROPS] = drops
    return WorkerView(slot, 1000 + slot, "RUNNING", slot, 0, 0.2, 0, snapshot(counters))


def table(*drops: int) -> Snapshot:
    """A healthy appliance whose worker k's socket has dropped drops[k] datagrams."""
    workers = tuple(worker(k, d) for k, d in enumerate(drops))
    return Snapshot(True, 999, True, 0.1, True, False, 1, 0, 50.0, workers)


class Clock:
    def __init__(self) -> None:
        self.ns = 1000 * S

    def __call__(self) -> int:
        return self.ns

    def at(self, seconds: float) -> None:
        self.ns = 1000 * S + int(seconds * S)


def watch_over(
    times_and_drops: list[tuple[float, int]], bound_s: float = BOUND_S
) -> list[dict[int, float]]:
    """Observe one worker's counts at the given seconds; each observation's answer."""
    clock = Clock()
    watch = OverflowWatch(bound_s, clock)
    seen = []
    for t, drops in times_and_drops:
        clock.at(t)
        seen.append(watch.observe(table(drops)))
    return seen


# ---- the watch ---------------------------------------------------------------------------------


def test_drops_rising_for_the_bound_make_the_worker_overflowing() -> None:
    seen = watch_over([(0, 0), (1, 5), (4, 9), (8, 20), (11, 31), (12, 40)])
    assert seen[:4] == [{}, {}, {}, {}]  # rising since 1 s: 7 s of it at 8 s
    assert seen[4] == {0: 10.0} and seen[5] == {0: 11.0}  # 10 s at 11 s


def test_it_recovers_once_the_count_stands_still_for_the_bound() -> None:
    rising = [(t, 100 * t) for t in range(0, 14)]  # overflowing from 11 s (rising since 1 s)
    still = [(14, 1300), (20, 1300), (22.9, 1300), (23, 1300), (30, 1300)]
    seen = watch_over([*rising, *still])
    assert seen[10:14] == [{}, {0: 10.0}, {0: 11.0}, {0: 12.0}]
    # still overflowing until its last rise (13 s) is 10 s old, then ready
    assert seen[14:] == [{0: 12.0}, {0: 12.0}, {0: 12.0}, {}, {}]


def test_a_burst_is_not_an_overflow() -> None:
    """A count that rose once (a worker stopped for a moment) and then stands still."""
    seen = watch_over([(0, 0), (1, 5000), (2, 5000), (10, 5000), (11, 5000), (30, 5000)])
    assert seen == [{}] * 6


def test_short_pauses_do_not_end_a_run_of_rises() -> None:
    """Several probes close together see no change between them: the run goes on."""
    seen = watch_over([(0, 0), (1, 1), (1.1, 1), (1.2, 1), (6, 2), (6.1, 2), (11, 3)])
    assert seen[-1] == {0: 10.0}


def test_a_pause_as_long_as_the_bound_ends_the_run() -> None:
    seen = watch_over([(0, 0), (1, 1), (5, 2), (15, 2), (16, 3), (20, 4), (25, 5), (26, 6)])
    assert seen[:6] == [{}] * 6  # quiet from 5 s to 15 s: the run restarts at 16 s
    assert seen[6:] == [{}, {0: 10.0}]


def test_probes_as_far_apart_as_the_bound_still_see_an_overflow() -> None:
    """GWLB's default: every 10 s, maybe from one node only."""
    seen = watch_over([(0, 0), (10, 100), (20, 200), (30, 300), (40, 300), (50, 300)])
    assert seen == [{}, {}, {0: 10.0}, {0: 20.0}, {}, {}]


def test_a_rise_after_the_watch_was_not_asked_for_long_starts_a_new_run() -> None:
    """Nothing says the drops went on while no probe looked (over twice the bound)."""
    seen = watch_over([(0, 0), (1, 10), (5, 20), (40, 30), (41, 40)])
    assert seen == [{}] * 5


def test_a_count_that_goes_down_starts_over() -> None:
    """A new stats table (a new supervisor) starts every count from zero."""
    seen = watch_over([(0, 0), (1, 10), (6, 20), (8, 1), (12, 2), (16, 3), (19, 4), (22, 5)])
    assert seen == [{}] * 7 + [{0: 10.0}]  # rising from 12 s, not from 1 s


def test_each_worker_is_watched_on_its_own_and_the_state_follows_the_table() -> None:
    clock = Clock()
    watch = OverflowWatch(BOUND_S, clock)
    for t in range(0, 12):
        clock.at(t)
        seen = watch.observe(table(0, 7 * t, 5))
    assert seen == {1: 10.0}
    clock.at(12)
    assert watch.observe(table(0)) == {}  # a table of one slot: the others are forgotten
    assert len(watch._tracks) == 1
    assert watch.observe(Snapshot(present=False)) == {}
    assert watch._tracks == {}


def test_a_bound_of_zero_never_watches() -> None:
    seen = watch_over([(t, 100 * t) for t in range(0, 30)], bound_s=0)
    assert seen == [{}] * 30


# ---- the verdict -------------------------------------------------------------------------------


def test_the_verdict_names_the_overflowing_workers_and_for_how_long() -> None:
    verdict = assess(table(0, 5, 9), HealthPolicy(), {2: 12.25, 1: 10.5})
    assert (verdict.healthy, verdict.reason) == (False, "rx_buffer_overflow")
    assert verdict.detail == (
        "workers 1, 2 kept losing datagrams to a full receive buffer for 12.2 s "
        "(overflow_unready_s 10)"
    )
    assert (verdict.live, verdict.needed) == (3, 1)
    one = assess(table(0, 5), HealthPolicy(overflow_unready_s=2.5), {1: 3.0})
    assert one.detail.startswith("worker 1 kept losing") and "overflow_unready_s 2.5" in one.detail
    assert assess(table(0, 5), HealthPolicy(), {}).reason == "ok"


def test_draining_and_dead_workers_are_said_first() -> None:
    drained = replace(table(0, 5), draining=True)
    assert assess(drained, HealthPolicy(), {1: 11.0}).reason == "draining"
    one_down = replace(table(0, 5), workers=(worker(0, 0), replace(worker(1, 5), state="FATAL")))
    assert assess(one_down, HealthPolicy(min_workers=2), {1: 11.0}).reason == "workers_down"


# ---- the app -----------------------------------------------------------------------------------


class SteppedReader:
    """A reader whose worker 0 has dropped `drops` datagrams; the test raises it."""

    def __init__(self) -> None:
        self.drops = 0

    def snapshot(self) -> Snapshot:
        return table(self.drops, 0)


@pytest.mark.parametrize("path", ["/", "/health", "/status"])
def test_the_probe_turns_503_while_drops_keep_rising_and_200_after(path: str) -> None:
    clock, reader = Clock(), SteppedReader()
    policy = HealthPolicy(overflow_unready_s=2)
    client = create_app(reader, policy, OverflowWatch(2, clock)).test_client()

    def verdict_at(seconds: float, drops: int) -> tuple[int, str]:
        clock.at(seconds)
        reader.drops = drops
        response = client.get(path)
        body = orjson.loads(response.data)
        health = body["health"] if path == "/status" else body
        healthy = health["healthy"] if path == "/status" else health["status"] == "ok"
        assert healthy == (health["reason"] == "ok")
        return response.status_code, health["reason"]

    assert verdict_at(0, 0) == (200, "ok")
    assert verdict_at(1, 50) == (200, "ok")
    assert verdict_at(2, 90) == (200, "ok")
    overflowing = 200 if path == "/status" else 503  # /status answers 200 with the verdict in it
    assert verdict_at(3, 130) == (overflowing, "rx_buffer_overflow")
    assert verdict_at(4.9, 130) == (overflowing, "rx_buffer_overflow")
    assert verdict_at(5, 130) == (200, "ok")


def test_status_shows_each_workers_drops_and_their_total() -> None:
    body = orjson.loads(create_app(SteppedReader()).test_client().get("/status").data)
    assert [w["counters"]["rx_buffer_drops"] for w in body["workers"]] == [0, 0]
    reader = SteppedReader()
    reader.drops = 17
    body = orjson.loads(create_app(reader).test_client().get("/status").data)
    assert [w["counters"]["rx_buffer_drops"] for w in body["workers"]] == [17, 0]
    assert body["total"]["rx_buffer_drops"] == 17


def test_metrics_serve_the_drops_per_worker_and_in_total() -> None:
    reader = SteppedReader()
    reader.drops = 17
    text = create_app(reader).test_client().get("/metrics").data.decode()
    assert "# TYPE gwlb_worker_rx_buffer_drops_total counter" in text
    assert 'gwlb_worker_rx_buffer_drops_total{slot="0"} 17.0' in text
    assert 'gwlb_worker_rx_buffer_drops_total{slot="1"} 0.0' in text
    assert "gwlb_rx_buffer_drops_total 17.0" in text


def test_the_configured_bound_reaches_the_health_service(tmp_path, monkeypatch) -> None:
    """From [health] through the supervisor's environment for gunicorn to the app's policy."""
    config = parse_config(f'[runtime]\ndir = "{tmp_path}"\n[health]\noverflow_unready_s = 2.5\n')
    environment = HealthService(config, log_fd=2).environment()
    assert environment[wsgi.ENV_OVERFLOW_UNREADY_S] == "2.5"
    made: list[HealthPolicy] = []
    monkeypatch.setattr(wsgi, "create_app", lambda reader, policy: made.append(policy))
    monkeypatch.setenv(wsgi.ENV_OVERFLOW_UNREADY_S, environment[wsgi.ENV_OVERFLOW_UNREADY_S])
    wsgi.from_environment()
    assert made[0].overflow_unready_s == 2.5
    monkeypatch.delenv(wsgi.ENV_OVERFLOW_UNREADY_S)
    wsgi.from_environment()
    assert made[1].overflow_unready_s == HealthPolicy().overflow_unready_s == 10
