"""The health app with a fake stats reader: every verdict, the JSON shapes, HEAD, /metrics."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from appliance.counters import new_counters, snapshot
from health.app import create_app
from health.reader import Snapshot, WorkerView
from health.verdict import HealthPolicy


def worker(slot: int, state: str = "RUNNING", age: float | None = 0.2) -> WorkerView:
    counters = new_counters()
    counters[0] = 10 * (slot + 1)  # received
    counters[1] = 9 * (slot + 1)  # sent
    return WorkerView(
        slot=slot,
        pid=1000 + slot,
        state=state,
        cpu=slot,
        restarts=slot,
        heartbeat_age_s=age,
        generation=0,
        counters=snapshot(counters, ("drop-me",)),
    )


HEALTHY = Snapshot(
    present=True,
    supervisor_pid=999,
    supervisor_heartbeat_age_s=0.1,
    ready=True,
    draining=False,
    generation=2,
    uptime_s=50.0,
    workers=(worker(0), worker(1)),
)


class FakeReader:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def snapshot(self) -> Snapshot:
        return self.snap


def probe(snap: Snapshot, policy: HealthPolicy | None = None, path: str = "/"):
    return create_app(FakeReader(snap), policy or HealthPolicy()).test_client().get(path)


def test_healthy_appliance_answers_200_with_its_workers() -> None:
    response = probe(HEALTHY)
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = orjson.loads(response.data)
    assert body["status"] == "ok" and body["reason"] == "ok"
    assert body["live_workers"] == 2 and body["needed_workers"] == 1
    assert body["workers"] == [
        {"slot": 0, "pid": 1000, "state": "RUNNING", "heartbeat_age_s": 0.2},
        {"slot": 1, "pid": 1001, "state": "RUNNING", "heartbeat_age_s": 0.2},
    ]
    assert int(response.headers["Content-Length"]) == len(response.data)


@pytest.mark.parametrize(
    ("snap", "policy", "reason"),
    [
        (Snapshot(present=False), None, "no_appliance"),
        (replace(HEALTHY, supervisor_heartbeat_age_s=None), None, "supervisor_stale"),
        (replace(HEALTHY, supervisor_alive=False), None, "supervisor_gone"),
        (replace(HEALTHY, supervisor_heartbeat_age_s=3.5), None, "supervisor_stale"),
        (replace(HEALTHY, ready=False), None, "starting"),
        (replace(HEALTHY, draining=True), None, "draining"),
        (replace(HEALTHY, workers=(worker(0, age=3.01), worker(1, age=9.0))), None, "workers_down"),
        (
            replace(HEALTHY, workers=(worker(0, "BACKOFF"), worker(1, "FATAL"))),
            None,
            "workers_down",
        ),
        (
            replace(HEALTHY, workers=(worker(0), worker(1, age=None))),
            HealthPolicy(2),
            "workers_down",
        ),
        (
            replace(HEALTHY, workers=(worker(0), worker(1, "STARTING"))),
            HealthPolicy(0.75),
            "workers_down",
        ),
    ],
    ids=[
        "no-table",
        "supervisor-never",
        "supervisor-gone",
        "supervisor-stale",
        "starting",
        "draining",
        "heartbeats-stale",
        "states",
        "count",
        "fraction",
    ],
)
def test_every_unhealthy_path_answers_503_with_its_reason(snap, policy, reason) -> None:
    response = probe(snap, policy)
    assert response.status_code == 503
    body = orjson.loads(response.data)
    assert body["status"] == "unhealthy" and body["reason"] == reason and body["detail"]


def test_the_minimum_counts_and_fractions_allow_some_loss() -> None:
    one_down = replace(HEALTHY, workers=(worker(0), worker(1, age=10.0)))
    assert probe(one_down, HealthPolicy(min_workers=1)).status_code == 200
    assert probe(one_down, HealthPolicy(min_workers=0.5)).status_code == 200
    assert probe(one_down, HealthPolicy(min_workers=0.51)).status_code == 503
    assert probe(one_down, HealthPolicy(staleness_s=11)).status_code == 200


def test_head_has_the_headers_and_no_body() -> None:
    client = create_app(FakeReader(HEALTHY)).test_client()
    get, head = client.get("/health"), client.head("/health")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"]
    assert (
        client.head(
            "/",
        ).status_code
        == 200
    )
    assert create_app(FakeReader(Snapshot(False))).test_client().head("/").status_code == 503


def test_status_has_everything_the_cli_knows() -> None:
    response = probe(HEALTHY, path="/status")
    assert response.status_code == 200
    body = orjson.loads(response.data)
    assert body["health"]["healthy"] is True
    assert body["supervisor"]["pid"] == 999 and body["supervisor"]["generation"] == 2
    assert [w["slot"] for w in body["workers"]] == [0, 1]
    assert body["total"]["received"] == 30 and body["total"]["sent"] == 27
    assert body["workers"][1]["counters"]["received"] == 20


def test_metrics_parse_back_with_prometheus_client() -> None:
    response = probe(HEALTHY, path="/metrics")
    assert response.status_code == 200
    assert response.content_type == CONTENT_TYPE_LATEST  # Prometheus text exposition
    samples = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("gwlb_worker_received_total", (("slot", "1"),))] == 20
    assert samples[("gwlb_received_total", ())] == 30
    assert samples[("gwlb_worker_state", (("slot", "0"), ("state", "RUNNING")))] == 1
    assert samples[("gwlb_worker_state", (("slot", "0"), ("state", "FATAL")))] == 0
    assert samples[("gwlb_worker_restarts_total", (("slot", "1"),))] == 1
    assert samples[("gwlb_worker_heartbeat_age_seconds", (("slot", "0"),))] == 0.2
    assert samples[("gwlb_config_generation", ())] == 2
    assert samples[("gwlb_draining", ())] == 0
    assert samples[("gwlb_up", ())] == 1


def test_metrics_without_an_appliance_say_it_is_down() -> None:
    response = probe(Snapshot(False), path="/metrics")
    families = list(text_string_to_metric_families(response.data.decode()))
    assert [(f.name, f.samples[0].value) for f in families] == [("gwlb_up", 0.0)]
