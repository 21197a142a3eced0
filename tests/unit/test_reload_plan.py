"""The reload plan: which changed keys a reload applies and which need a restart, from the
schema's marks; and the worker applies exactly the marked keys."""

from __future__ import annotations

from config.diff import live_keys, reload_plan, with_live_keys
from config.loader import default_config_path, parse_config
from supervisor.workerproc import APPLIED_LIVE

DEFAULT = default_config_path().read_text()


def test_the_worker_applies_exactly_the_keys_the_schema_marks_live() -> None:
    assert set(live_keys()) == set(APPLIED_LIVE)


def test_an_unchanged_config_plans_nothing() -> None:
    plan = reload_plan(parse_config(DEFAULT), parse_config(DEFAULT, "another-name.toml"))
    assert plan.live == () and plan.restart == ()


def test_changed_keys_are_split_into_live_and_restart() -> None:
    old = parse_config(DEFAULT)
    text = (
        DEFAULT.replace("batch_size = 128", "batch_size = 64")
        .replace("allow_sources = []", 'allow_sources = ["10.0.0.0/8"]')
        .replace('name = "drop-me"', 'name = "drop-me-please"')
        .replace("slice_us = 100", "slice_us = 200")
        .replace("# dir = ", "dir = ")
        .replace('"/run/gwlb-appliance"', '"/run/elsewhere"')
    )
    new = parse_config(text)
    plan = reload_plan(old, new)
    assert plan.live == ("dataplane.allow_sources", "policy")
    assert plan.restart == ("dataplane.batch_size", "health.slice_us", "runtime.dir")
    assert "not applied until applianced restarts: dataplane.batch_size" in plan.describe()
    running = with_live_keys(old, new)
    assert running.dataplane.batch_size == 128 and running.health.slice_us == 100
    assert running.dataplane.allow_sources == new.dataplane.allow_sources
    assert running.policy.rules[0].name == "drop-me-please"
