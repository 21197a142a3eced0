"""The health service's Flask application factory.

`create_app(reader, policy)` takes its collaborators as arguments (Flask's app factory pattern):
tests pass a fake reader and use `app.test_client()`; gunicorn runs the real one (health.wsgi).
Every snapshot a probe or /status reads is also an observation of the workers' receive-buffer
drops (health.overflow), so the verdict can say when they keep rising.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from flask import Flask, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from appliance.counters import total
from health.metrics import registry_for
from health.overflow import OverflowWatch
from health.reader import Snapshot, StatsReader
from health.verdict import HealthPolicy, assess

JSON = "application/json"


def create_app(
    reader: StatsReader, policy: HealthPolicy | None = None, watch: OverflowWatch | None = None
) -> Flask:
    """`watch`: a test's, with its own clock; by default one over the policy's bound."""
    app = Flask("gwlb_health")
    rules = policy or HealthPolicy()
    registry = registry_for(reader)
    overflow = watch or OverflowWatch(rules.overflow_unready_s)

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        snap = reader.snapshot()
        verdict = assess(snap, rules, overflow.observe(snap))
        body = {
            "status": "ok" if verdict.healthy else "unhealthy",
            "reason": verdict.reason,
            "detail": verdict.detail,
            "live_workers": verdict.live,
            "needed_workers": verdict.needed,
            "workers": [
                {
                    "slot": w.slot,
                    "pid": w.pid,
                    "state": w.state,
                    "heartbeat_age_s": _round(w.heartbeat_age_s),
                }
                for w in snap.workers
            ],
        }
        return _json(body, 200 if verdict.healthy else 503)

    @app.get("/status")
    def status() -> Response:
        snap = reader.snapshot()
        verdict = assess(snap, rules, overflow.observe(snap))
        return _json({"health": asdict(verdict), **_status(snap)}, 200)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), 200, content_type=CONTENT_TYPE_LATEST)

    return app


def _status(snap: Snapshot) -> dict[str, Any]:
    workers = [asdict(w) for w in snap.workers]
    for w in workers:
        w["heartbeat_age_s"] = _round(w["heartbeat_age_s"])
    return {
        "supervisor": {
            "present": snap.present,
            "pid": snap.supervisor_pid,
            "heartbeat_age_s": _round(snap.supervisor_heartbeat_age_s),
            "ready": snap.ready,
            "draining": snap.draining,
            "generation": snap.generation,
            "reloads_refused": snap.reloads_refused,
            "uptime_s": _round(snap.uptime_s),
        },
        "workers": workers,
        "total": total([w.counters for w in snap.workers]),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status, content_type=JSON)
