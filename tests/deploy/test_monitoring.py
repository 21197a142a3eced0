"""The monitoring files in deploy/monitoring: Prometheus alerts, their unit tests, the Grafana
dashboard, and the one fact that ties them to the product: every metric they name is one that the
health service's /metrics really serves.

Why the exposition comes from a stats table and not from a running appliance: the collector only
yields a breakdown family (malformed by reason, drops by rule, send errors by errno) once one of
its counters is non-zero, and no traffic a test can send makes them all so. A real stats table
(appliance/stats.py) with every word set, read by the real reader and served by the real Flask app
at /metrics, shows every family, and needs neither root nor a namespace.

Why a missing promtool fails instead of skipping: it is the only judge of the rules and of their
unit tests, deploy/local/bootstrap.sh installs it (Debian's `prometheus` package), and a skip would
let a broken rule through without anyone noticing.

Metric names are read out of PromQL with a regular expression (promtool cannot print the selectors
of an expression offline): strings, label matchers, ranges, label lists and Grafana variables are
removed first, then every identifier that is not a function call or a keyword is a metric name.
promtool does parse every expression, the dashboard's too, so the regular expression only ever
reads valid PromQL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deployfiles import REPO
from prometheus_client.parser import text_string_to_metric_families

from appliance.counters import Counter
from appliance.stats import H, S, StatsTable, now_ns
from health.app import create_app
from health.metrics import GAUGES
from health.reader import TableReader
from supervisor.snapshot import write_rule_names
from supervisor.states import State

MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "dashboard.json"
README = MONITORING / "README.md"

SCRAPE_SERIES = {"up"}  # written by Prometheus for every target, not by the appliance
SEVERITIES = {"critical", "warning", "info"}
BREAKDOWNS = ("malformed_by_reason", "dropped_by_rule", "send_errors_by_errno")
INSTALL = "apt-get install --no-install-recommends prometheus (deploy/local/bootstrap.sh does)"


# ---- metric names out of PromQL --------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]*)"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")  # not a call
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $variables allowed)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers (their strings are gone)
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries: durations, $__interval
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside the above
    for match in _IDENTIFIER.finditer(text):
        word = match.group(1)
        if word.lower() not in _KEYWORDS:
            names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        (
            'sum by (instance, reason) (rate(gwlb_a_total{instance=~"$instance", reason!="x"}'
            "[$__rate_interval])) > 0.1 and on (instance, slot) gwlb_b == 1",
            {"gwlb_a_total", "gwlb_b"},
        ),
        ("rate(gwlb_c_total[10m]) > 3 * rate(gwlb_c_total[6h] offset 10m) + 1e3", {"gwlb_c_total"}),
        (
            "sum(gwlb_d) without (slot) / ignoring(x) group_left(y) gwlb_e @ start()",
            {"gwlb_d", "gwlb_e"},
        ),
        (
            '{__name__="gwlb_f", slot="1"} or label_replace(gwlb_g, "a", "$1", "b", "(.*)")',
            {"gwlb_f", "gwlb_g"},
        ),
        ("gwlb_h unless NaN > Inf", {"gwlb_h"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# ---- what /metrics really serves -------------------------------------------------------------


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names of /metrics over a two-slot stats table whose every counter is non-zero."""
    runtime = tmp_path_factory.mktemp("runtime")
    table = StatsTable.create(runtime, slots=2)
    stamp = now_ns()
    header = table.header
    header[H.SUPERVISOR_PID], header[H.SUPERVISOR_HEARTBEAT_NS] = os.getpid(), stamp
    header[H.STARTED_NS], header[H.READY], header[H.CONFIG_GENERATION] = stamp, 1, 1
    header[H.RELOADS_REFUSED] = 1
    write_rule_names(runtime, 1, ("drop-me", "no-telnet"))
    for k in range(table.slots):
        words = table.slot(k)
        words[S.PID], words[S.STATE], words[S.RESTARTS] = 1000 + k, State.RUNNING, 1
        words[S.HEARTBEAT_NS] = stamp
        counters = table.counters(k)
        for index in range(len(counters)):
            counters[index] = index + 1
    response = create_app(TableReader(runtime)).test_client().get("/metrics")
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.get_data(as_text=True)))
    assert all(family.samples for family in families), [f.name for f in families if not f.samples]
    return {sample.name for family in families for sample in family.samples}


def test_the_exposition_has_every_family(exposed: set[str]) -> None:
    """Else a name missing below could be the fixture's fault rather than the dashboard's."""
    for counter in Counter:
        name = counter.name.lower()
        end = "" if name in GAUGES else "_total"
        assert {f"gwlb_{name}{end}", f"gwlb_worker_{name}{end}"} <= exposed, name
    for name in BREAKDOWNS:
        assert {f"gwlb_{name}_total", f"gwlb_worker_{name}_total"} <= exposed, name
    for name in ("up", "ready", "draining", "config_generation", "reloads_refused_total"):
        assert f"gwlb_{name}" in exposed
    assert {"gwlb_worker_state", "gwlb_worker_restarts_total"} <= exposed
    assert {"gwlb_supervisor_heartbeat_age_seconds", "gwlb_worker_heartbeat_age_seconds"} <= exposed


# ---- the files -------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]
    return tests


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _exprs(node: Any) -> Iterator[str]:
    """Every `expr` anywhere in the dashboard: panel targets and annotation queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def _dashboard_exprs() -> list[str]:
    dashboard = _dashboard()
    exprs = list(_exprs(dashboard["panels"])) + list(_exprs(dashboard["annotations"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"])
            assert found, f"${variable['name']}: {variable['query']}"
            exprs.append(found.group(1))
    return exprs


def _unknown(exprs: list[str], exposed: set[str]) -> dict[str, set[str]]:
    unknown = {}
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"names no metric: {expr}"
        if missing := names - exposed - SCRAPE_SERIES:
            unknown[expr] = missing
    return unknown


def test_alerts_name_only_metrics_that_exist(exposed: set[str]) -> None:
    assert _unknown([rule["expr"] for rule in _rules()], exposed) == {}


def test_the_dashboard_names_only_metrics_that_exist(exposed: set[str]) -> None:
    assert _unknown(_dashboard_exprs(), exposed) == {}


def test_the_alert_unit_tests_feed_only_series_that_exist(exposed: set[str]) -> None:
    series = [s["series"] for test in _unit_tests() for s in test["input_series"]]
    assert _unknown(series, exposed) == {}


def test_the_readme_lists_the_metrics_used_and_only_real_ones(exposed: set[str]) -> None:
    exprs = [rule["expr"] for rule in _rules()] + _dashboard_exprs()
    used = set().union(*(metric_names(expr) for expr in exprs))
    listed = set(re.findall(r"`(gwlb_[a-z_]+|up)`", README.read_text(encoding="utf-8")))
    assert used - listed == set()
    assert listed - exposed - SCRAPE_SERIES == set()


def test_every_alert_says_how_bad_what_and_what_to_do() -> None:
    for rule in _rules():
        assert rule["alert"].startswith("Gwlb"), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert "{{ $labels.instance }}" in summary, rule["alert"]
        assert 40 <= len(description) <= 400, (rule["alert"], len(description))


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    outcomes: dict[str, set[bool]] = {}
    for test in _unit_tests():
        for case in test["alert_rule_test"]:
            outcomes.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {rule["alert"]: {True, False} for rule in _rules()} == outcomes


def test_the_dashboard_is_importable() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert variables["instance"]["type"] == "query"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert '$instance"' in target["expr"], (panel["title"], target["expr"])
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


# ---- promtool --------------------------------------------------------------------------------


def _promtool(*args: str | Path) -> str:
    """promtool's output, after asserting it succeeded; a failure (never a skip) without it."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(f"promtool is not installed: {INSTALL}")
    result = subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_accepts_the_rules() -> None:
    output = _promtool("check", "rules", ALERTS)
    assert f"SUCCESS: {len(_rules())} rules found" in output


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", ALERTS_TEST)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, its Grafana variables given values, as a recording rule promtool checks."""
    values = {"$__rate_interval": "5m", "$__range": "6h", "$instance": ".*"}
    rules = []
    for n, expr in enumerate(_dashboard_exprs()):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        rules.append({"record": f"dashboard:query:{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _promtool("check", "rules", path)
