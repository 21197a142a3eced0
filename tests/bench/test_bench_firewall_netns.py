"""The firewall case for real, in two network namespaces (deploy/bench/harness): gen against the C
reflector (a pass-through baseline, and a target that denies nothing) and against applianced with
firewall_policy.toml; then run.py --firewall-only as an operator runs it. Short runs: these check
validation, not speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.env import FIREWALL, Netns, find_applianced
from harness.firewall import write_firewall_config
from harness.product import Ctl, find_appliancectl
from harness.targets import Target, run_gen

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
ALLOWED = sorted(os.sched_getaffinity(0))
GEN_CPU, TARGET_CPU = ALLOWED[0], ALLOWED[-1]
DENIED = ("fw_deny_v4", "fw_deny_v6")


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    netns = Netns()
    try:
        netns.up()
        yield
    finally:
        problems = netns.down()
    assert not problems


@pytest.fixture
def start(namespaces: None, tmp_path: Path) -> Iterator[Callable[[str, list[str]], Target]]:
    """start(name, argv) -> a target bound to UDP 6081 in the appliance's namespace; every one
    started is stopped (and what it left behind killed) at the end."""
    started: list[Target] = []

    def run(name: str, argv: list[str]) -> Target:
        target = Target(name, argv, TARGET_CPU, tmp_path)
        started.append(target)
        target.wait_ready()
        return target

    yield run
    for target in started:
        target.stop()


def firewall(
    gen: str, target: Target, mode: str, seconds: float, pass_all: bool = False
) -> dict[str, Any]:
    """A gen run of the firewall case (64 B, 4 flows) on connections `target` has not seen."""
    out = run_gen(
        *(gen, GEN_CPU, mode, 64, FIREWALL, seconds, 4, int(seconds * 3e6) + 1000),
        rx_nap_us=100,
        first_conn=target.next_conn,
        pass_all=pass_all,
    )
    target.next_conn = out["firewall"]["next_conn"]
    return out


def replies_to_denied(run: dict[str, Any]) -> int:
    return sum(run["classes"][c]["valid"] for c in DENIED)


def test_the_reflector_is_a_pass_through_baseline_and_an_unfit_firewall(
    bench_tools: dict[str, str], start: Callable[[str, list[str]], Target]
) -> None:
    reflector = start("C reflector", [bench_tools["reflector"], "--max-seconds", "120"])
    gen = bench_tools["gen"]
    baseline = firewall(gen, reflector, "latency", 0.3, pass_all=True)
    assert baseline["invalid"] == 0 and baseline["silent_templates"] == 0, baseline["errors"]
    assert baseline["valid"] == baseline["expected"] == baseline["sent"] > 0
    assert replies_to_denied(baseline) > 0  # answered, and checked as pass-through
    # Judged as a firewall, every reply to a denied connection is an error, and nothing else is.
    judged = firewall(gen, reflector, "latency", 0.3)
    denied_sent = sum(judged["classes"][c]["sent"] for c in DENIED)
    assert denied_sent > 0
    assert {k: v for k, v in judged["errors"].items() if v} == {"unexpected": denied_sent}
    assert judged["valid"] == judged["expected"] == judged["sent"] - denied_sent


def test_applianced_answers_allowed_connections_and_nothing_of_denied_ones(
    tmp_path: Path, start: Callable[[str, list[str]], Target], bench_tools: dict[str, str]
) -> None:
    applianced = find_applianced(None)
    config = write_firewall_config(tmp_path, "worker")
    argv = [applianced, "--config", str(config), "--workers", "1"]
    target, gen = start("applianced", argv), bench_tools["gen"]
    for _ in range(20):  # until its worker answers (the supervisor binds before it forks)
        if firewall(gen, target, "flood", 0.2)["received"]:
            break
    ctl = Ctl(find_appliancectl(applianced), config.parent / "runtime" / "control.sock")
    before = counters(ctl)
    paced = firewall(gen, target, "latency", 0.5)
    assert paced["invalid"] == 0 and paced["silent_templates"] == 0, paced["error_samples"]
    assert paced["valid"] == paced["expected"] > 0  # nothing lost at 10k pps
    assert replies_to_denied(paced) == 0
    assert all(paced["classes"][c]["sent"] > 0 for c in DENIED)
    after = counters(ctl)
    dropped = {
        rule: n - before["dropped_by_rule"].get(rule, 0)
        for rule, n in after["dropped_by_rule"].items()
    }
    # Each denied kind by its own rule; no allowed packet dropped (e3-deny would be one).
    assert {rule for rule, n in dropped.items() if n} == {"e0-telnet", "e1-quarantine", "e2-deny"}
    created = after["flows_created"] - before["flows_created"]
    assert created >= paced["firewall"]["connections_opened"]  # every connection a new flow
    flood = firewall(gen, target, "flood", 0.5)  # overloads it: loss, never a wrong reply
    assert flood["invalid"] == 0, flood["error_samples"]
    assert replies_to_denied(flood) == 0 and flood["valid"] > 0


def counters(ctl: Ctl) -> dict[str, Any]:
    result = ctl.run("stats")
    assert result.code == 0 and isinstance(result.data, dict), result.stderr
    total: dict[str, Any] = result.data.get("total", result.data)
    return total


def test_run_py_firewall_only(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(REPO / "deploy" / "bench" / "run.py"), "--firewall-only"]
    argv += ["--seconds", "0.3", "--latency-seconds", "0.3", "--product-mode", "worker"]
    proc = subprocess.Popen(
        [*argv, "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()  # run.py's own cleanup is what this checks; a hung one still goes
            proc.wait(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
    assert "PASS-THROUGH BASELINE" in stdout and "FIREWALL HEADLINE" in stdout
    rows = json.loads(out.read_text())["rows"]
    assert {(r["target"], r["payload"]) for r in rows} == {
        (t, p) for t in ("C reflector", "applianced") for p in (64, 1400)
    }
    for r in rows:
        assert r["case"] == FIREWALL and r["errors"] == 0, (r["target"], r["errors_by_kind"])
        assert r["silent_templates"] == 0 and r["conn_per_s"] > 0
        if r["target"] == "applianced":
            assert replies_to_denied(r["flood"]) == replies_to_denied(r["latency"]) == 0
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert f"bn{proc.pid}-" not in namespaces  # run.py removed its namespaces
