#!/usr/bin/env python3
"""Chaos under load: `python3 deploy/bench/chaos.py [--scenario all|worker-kill|health-stop|
disk-full|reload-storm]` (root).

Each scenario runs a fresh applianced (--workers 2, the shipped demo policy, the allow-list set
to the generator) on the benchmark's test bed (harness/, gen.c), while gen sends the benchmark's
mix paced at 50,000 pps and validates every reply (gen --mode paced: each reply is filed under its
send time, so a loss can be placed around the moment something was done). By default the
appliance's whole tree runs on the second CPU and the generator, this tool and its pollers on the
first (--app-cpus 0,1 spreads the workers instead). Only the operator interface is used: the config
file, signals, `appliancectl --json`, the health endpoint.

  worker-kill   kill -9 of a random worker every 2 s for 60 s: each slot back in RUNNING within 1 s,
                never FATAL; replies lost per kill (total / kills, and the distribution)
  health-stop   SIGSTOP of the health service (gunicorn master and worker) for 10 s, then SIGCONT:
                the data path unaffected (against the 10 s before, same run), the supervisor runs
  disk-full     the runtime directory on a small tmpfs, filled up while running; then reload, tail,
                restart of a worker, SIGHUP: forwarding goes on, errors come as sentences, no crash
  reload-storm  100 SIGHUPs in 10 s alternating valid and invalid configs: 0 loss, the last valid
                config applied in every worker, the refused reloads counted

For each: PASS/FAIL per target with the figures, and a JSON file of the raw figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.bed import Bed, check_host
from harness.chaos_config import disk_full, reload_storm
from harness.chaos_process import health_stop, worker_kill
from harness.chaosbed import ChaosRun, Outcome
from harness.env import BenchError

SCENARIOS: dict[str, Callable[[ChaosRun], Outcome]] = {
    "worker-kill": worker_kill,
    "health-stop": health_stop,
    "disk-full": disk_full,
    "reload-storm": reload_storm,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    p.add_argument("--rate", type=float, default=50_000.0, help="paced pps (default 50,000)")
    p.add_argument("--workers", type=int, default=2, help="applianced --workers (default 2)")
    p.add_argument(
        "--app-cpus",
        default=None,
        help="taskset -c list for applianced's tree (default: the second CPU)",
    )
    p.add_argument("--kill-every", type=float, default=2.0, help="worker-kill period (2 s)")
    p.add_argument("--kill-seconds", type=float, default=60.0, help="worker-kill span (60 s)")
    p.add_argument("--seed", type=int, default=10, help="worker-kill's choice of workers")
    p.add_argument("--stop-seconds", type=float, default=10.0, help="health-stop (10 s)")
    p.add_argument("--tmpfs-size", default="1m", help="disk-full's tmpfs (default 1m)")
    p.add_argument("--reloads", type=int, default=100, help="reload-storm SIGHUPs (100)")
    p.add_argument("--storm-seconds", type=float, default=10.0, help="reload-storm span (10 s)")
    p.add_argument("--json", metavar="FILE", help="raw figures (default /tmp/gwlb-chaos-*.json)")
    p.add_argument("--applianced", help="the applianced executable (default: next to python)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    if not (1 <= args.rate <= 500_000 and 1 <= args.workers <= 8):
        p.error("--rate in [1, 500000], --workers in [1, 8]")
    if not (0.2 <= args.kill_every <= 60 and 1 <= args.kill_seconds <= 600):
        p.error("--kill-every in [0.2, 60], --kill-seconds in [1, 600]")
    if not (1 <= args.stop_seconds <= 120 and 2 <= args.reloads <= 1000):
        p.error("--stop-seconds in [1, 120], --reloads in [2, 1000]")
    if not 1 <= args.storm_seconds <= 120:
        p.error("--storm-seconds in [1, 120]")
    return args


def render(facts: dict[str, Any], outcomes: list[Outcome], args: argparse.Namespace) -> str:
    out = [
        f"CHAOS {facts['date']}, {facts['cpu_model']}, {facts['cores']} CPUs, kernel "
        f"{facts['kernel']}, Python {facts['python']}, product {facts['product']}",
        f"applianced --workers {args.workers} on CPUs {args.app_cpus}, gen on CPU "
        f"{facts['cpus'][0]}, the 64 B mix paced at {args.rate:,.0f} pps; load average before "
        f"{facts['load_average_before'][0]:.2f}",
    ]
    for o in outcomes:
        out += ["", f"== {o.name}: {'PASS' if o.passed else 'FAIL'}"]
        out += [f"  {line}" for line in o.lines]
        for v in o.verdicts:
            out.append(f"  {'PASS' if v['pass'] else 'FAIL'}  {v['target']}: {v['figure']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_host("chaos.py")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json or f"/tmp/gwlb-chaos-{stamp}.json")
    bed = Bed("gwlb-chaos-", args.applianced, args.keep)
    args.app_cpus = args.app_cpus or str(bed.cpus[1])
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    outcomes: list[Outcome] = []
    status = 0
    try:
        bed.up()
        run = ChaosRun(bed, args)
        for name in names:
            print(f"# chaos: {name}", file=sys.stderr, flush=True)
            try:
                outcome = SCENARIOS[name](run)
            except BenchError as error:  # this scenario could not run; the others still do
                outcome = Outcome(name)
                outcome.verdict("the scenario ran", False, str(error)[:2000])
            outcomes.append(outcome)
            for target in bed.started:  # each scenario's applianced is gone before the next
                bed.stop_target(target)
            verdicts = ", ".join("PASS" if v["pass"] else "FAIL" for v in outcome.verdicts)
            print(f"#   {name}: {verdicts}", file=sys.stderr, flush=True)
        print(render(bed.facts, outcomes, args))
        everything = {
            "facts": bed.facts,
            "args": vars(args),
            "scenarios": {
                o.name: {"pass": o.passed, "verdicts": o.verdicts, "figures": o.raw}
                for o in outcomes
            },
        }
        json_path.write_text(json.dumps(everything, indent=1, default=str))
        print(f"\nraw figures: {json_path}")
        status = 0 if all(o.passed for o in outcomes) else 3
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except (BenchError, subprocess.SubprocessError, OSError, json.JSONDecodeError) as error:
        print(f"chaos failed: {error}", file=sys.stderr)
        status = 1
    except Exception:  # a bug here must still not leave namespaces, mounts or processes behind
        traceback.print_exc()
        status = 1
    finally:
        status = bed.close() or status
    return status


if __name__ == "__main__":
    sys.exit(main())
