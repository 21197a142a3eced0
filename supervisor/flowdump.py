"""`appliancectl flows`: each worker lists its own flows, on request, between two batches.

Why files and a counter: a worker's flow table lives in its own process, and nothing may make a
worker wait (nor the supervisor: control.py). The supervisor writes the request (filters and a
limit) to `flows-request.json`, then bumps the stats table's FLOWS_REQUEST word; each worker sees
it at its next heartbeat (at least once a second), writes `flows-SLOT.json` and stamps
FLOWS_SERVED; the supervisor's deferred reply gathers the answers once every running worker has
stamped, or says which did not in time. Files are written whole and renamed into place.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import orjson

from appliance.flowlist import list_flows
from appliance.flowverdict import NAMES
from appliance.stats import H, S, StatsTable
from appliance.worker import Worker
from supervisor.files import write_whole

REQUEST = "flows-request.json"
LIMIT = 1000  # flows per worker in one answer; the rest are counted, not listed
WAIT_S = 3.0
FILTERS = ("addr", "port", "endpoint", "verdict")


def answer_path(runtime_dir: Path, slot: int) -> Path:
    return runtime_dir / f"flows-{slot}.json"


def parse_filters(words: list[str]) -> dict[str, Any]:
    """`key=value` words from appliancectl into checked filters; ValueError with a sentence."""
    filters: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in FILTERS:
            raise ValueError(f"flows filters are {', '.join(FILTERS)} as key=value, not {word!r}")
        if key == "addr":
            try:
                value = str(ipaddress.ip_address(value))
            except ValueError:
                raise ValueError(f"addr must be an IPv4 or IPv6 address, not {value!r}") from None
        elif key == "port":
            if not value.isdigit() or int(value) > 65535:
                raise ValueError(f"port must be 0-65535, not {value!r}")
            filters[key] = int(value)
            continue
        elif key == "verdict" and value not in ("pass", "drop", "reject"):
            raise ValueError(f"verdict must be pass, drop or reject, not {value!r}")
        filters[key] = value
    return filters


# --- in the worker ------------------------------------------------------------------------------


def serve(worker: Worker, runtime_dir: Path, slot: int, rule_names: tuple[str, ...]) -> None:
    """Answer the current request with this worker's flows (its heartbeat calls this)."""
    try:
        request = orjson.loads((runtime_dir / REQUEST).read_bytes())
    except (OSError, ValueError):
        request = {"filters": {}, "limit": LIMIT}
    filters, limit = request.get("filters", {}), int(request.get("limit", LIMIT))
    wanted = filters.get("verdict")
    now = time.monotonic_ns()
    listed: list[dict[str, Any]] = []
    matched = 0
    for record in list_flows(
        worker.flows,
        now,
        address=filters.get("addr"),
        port=filters.get("port"),
        endpoint=filters.get("endpoint"),
    ):
        verdict = NAMES.get(record.verdict, str(record.verdict))
        if wanted is not None and verdict != wanted:
            continue
        matched += 1
        if len(listed) < limit:
            listed.append(_record(slot, record, verdict, rule_names))
    answer = {"slot": slot, "flows": listed, "matched": matched, "active": worker.flows.active}
    write_whole(answer_path(runtime_dir, slot), orjson.dumps(answer))


def _record(slot: int, r: Any, verdict: str, names: tuple[str, ...]) -> dict[str, Any]:
    rule = names[r.rule] if 0 <= r.rule < len(names) else ("default" if r.rule == -2 else None)
    return {
        "slot": slot,
        "endpoint": r.endpoint,
        "protocol": r.protocol,
        "src": r.src,
        "src_port": r.src_port,
        "dst": r.dst,
        "dst_port": r.dst_port,
        "age_s": round(r.age_s, 1),
        "idle_s": round(r.idle_s, 1),
        "packets_out": r.fwd_packets,
        "bytes_out": r.fwd_bytes,
        "packets_in": r.rev_packets,
        "bytes_in": r.rev_bytes,
        "verdict": verdict,
        "rule": rule,
        "name": r.name,
    }


# --- in the supervisor --------------------------------------------------------------------------


def ask(table: StatsTable, runtime_dir: Path, filters: dict[str, Any]) -> int:
    """Post a request; its number, for `gather`."""
    write_whole(runtime_dir / REQUEST, orjson.dumps({"filters": filters, "limit": LIMIT}))
    number = int(table.header[H.FLOWS_REQUEST]) + 1
    table.header[H.FLOWS_REQUEST] = number  # after the file: a worker that sees it reads it
    return number


def gather(
    table: StatsTable, runtime_dir: Path, number: int, slots: list[int], final: bool
) -> dict[str, Any] | None:
    """The answer once every slot in `slots` served request `number`; before that None, unless
    `final` (the wait is over): then what came, and a note on what did not."""
    served = [k for k in slots if int(table.slot(k)[S.FLOWS_SERVED]) >= number]
    if len(served) < len(slots) and not final:
        return None
    flows: list[dict[str, Any]] = []
    notes = []
    for k in served:
        try:
            answer = orjson.loads(answer_path(runtime_dir, k).read_bytes())
        except (OSError, ValueError) as error:
            notes.append(f"worker {k}: its answer could not be read ({error})")
            continue
        flows += answer["flows"]
        if answer["matched"] > len(answer["flows"]):
            notes.append(f"worker {k}: {answer['matched'] - len(answer['flows'])} more not shown")
    missing = sorted(set(slots) - set(served))
    if missing:
        notes.append(f"workers {missing} did not answer within {WAIT_S:g} s")
    return {"flows": flows, "notes": notes}
