"""What every chaos scenario shares: a fresh applianced (2 workers) per scenario on the shared test
bed, paced load, timing helpers, and how a scenario hands back its figures."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bed import Bed
from harness.env import APP_NS, delta, ns_counters
from harness.paced import PacedGen
from harness.product import Ctl, config_text, http_get, in_netns, write_config
from harness.targets import Target

HEALTH_HOST = "127.0.0.1"


@dataclass
class Product:
    target: Target
    ctl: Ctl
    config: Path
    runtime: Path
    app_before: dict[str, int]

    def kernel_delta(self) -> dict[str, int]:
        return delta(ns_counters(APP_NS), self.app_before)


@dataclass
class Outcome:
    """A scenario's result: its verdicts (target, pass, figure), its figures for the report (in
    order) and everything raw for the JSON file."""

    name: str
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def verdict(self, target: str, ok: bool, figure: str) -> None:
        self.verdicts.append({"target": target, "pass": bool(ok), "figure": figure})

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v["pass"] for v in self.verdicts)


class ChaosRun:
    def __init__(self, bed: Bed, args: argparse.Namespace) -> None:
        self.bed = bed
        self.args = args

    def product(self, name: str, runtime: Path | None = None, extra: str = "") -> Product:
        """A fresh applianced for one scenario: its own config file and runtime directory."""
        runtime = runtime or self.bed.work / f"runtime-{name}"
        config = self.bed.work / f"{name}.toml"
        write_config(config, config_text(runtime, extra))
        target, ctl = self.bed.start_product(config, self.args.workers, self.args.app_cpus, runtime)
        return Product(target, ctl, config, runtime, ns_counters(APP_NS))

    def paced(self, seconds: float, name: str) -> PacedGen:
        return PacedGen(
            self.bed.tools["gen"],
            self.bed.cpus[0],
            self.args.rate,
            seconds,
            self.bed.work,
            name=name,
        )

    def finish(self, product: Product) -> dict[str, Any]:
        """Stop the scenario's applianced (SIGTERM by PID); its exit and its last log lines."""
        alive = product.target.alive()
        code = self.bed.stop_target(product.target)
        return {
            "alive_at_end": alive,
            "exit_code": code,
            "log_tail": product.target.tail(30).splitlines(),
        }


def health(path: str = "/health", timeout: float = 1.0) -> tuple[int, Any]:
    """GET the health service from inside the appliance's namespace."""
    return in_netns(APP_NS, lambda: http_get(HEALTH_HOST, 80, path, timeout))


def health_fetch(path: str, timeout: float = 1.0) -> Any:
    """For a Poller that already runs inside the appliance's namespace."""
    return lambda: http_get(HEALTH_HOST, 80, path, timeout)


def sleep_until_ns(t_ns: int) -> None:
    left = (t_ns - time.monotonic_ns()) / 1e9
    if left > 0:
        time.sleep(left)


def load_now() -> float:
    return os.getloadavg()[0]


def ms(t_ns: int | float) -> float:
    return round(t_ns / 1e6, 1)
