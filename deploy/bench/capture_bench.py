#!/usr/bin/env python3
"""What `appliancectl capture` costs the data path: `python3 deploy/bench/capture_bench.py`.

The benchmark's bed and tools (run.py's harness: gen.c in one namespace on one CPU, applianced
with one worker in another on the other CPU, the health service off), then the same 64 B mix
flood three times: without a capture, with `appliancectl capture 0` keeping every packet, and
with one whose filter keeps only the dropped ones (`verdict drop`, 7 of 100), each capture
running through the flood and stopped by Ctrl-C (SIGINT) after it. For each it prints the rate
the appliance returned, the worker's CPU per packet, and what the capture says it kept and the
worker dropped (its client too slow), with the worker's own counters. The capture's client runs
on the appliance's CPU by default (an appliance's CPUs all run workers), or --client-cpu
generator / any. Needs root. Nothing here imports the product.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from harness.env import MIX, BenchError, Netns, compile_tools, find_applianced, write_config
from harness.measure import measure
from harness.targets import Target, run_gen

FILTERS = {"no capture": None, "capture all": "", "capture verdict drop": "verdict drop"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="flood time per run (default 3)")
    p.add_argument("--payload", type=int, default=64, choices=(64, 1400))
    p.add_argument("--client-cpu", choices=("target", "generator", "any"), default="target")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (captures, logs)")
    args = p.parse_args(argv)
    # what harness.measure reads
    args.latency_seconds, args.flows, args.max_pps, args.rx_nap_us = 0.5, 16, 3e6, 100
    return args


def start_capture(
    ctl: str, runtime: Path, text: str, seconds: float, out: Path, cpu: str | None
) -> subprocess.Popen[str]:
    argv = [ctl, "--socket", str(runtime / "control.sock"), "capture", "0", "--filter", text]
    argv += ["--count", "10000000", "--seconds", f"{seconds:g}", "-w", str(out)]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)


def wait_started(target: Target, count: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if target.log.read_text(errors="replace").count(" started: filter") >= count:
            return
        time.sleep(0.05)
    raise BenchError(f"the worker never started capture {count}:\n{target.tail()}")


def counters(ctl: str, runtime: Path) -> dict[str, int]:
    done = subprocess.run(
        [ctl, "--socket", str(runtime / "control.sock"), "--json", "stats"],
        capture_output=True,
        text=True,
        check=True,
        timeout=15,
    )
    total = json.loads(done.stdout)["total"]
    return {k: int(total.get(k, 0)) for k in ("received", "capture_kept", "capture_dropped")}


def run(args: argparse.Namespace, work: Path, netns: Netns, started: list[Target]) -> None:
    applianced = find_applianced(None)
    ctl = str(Path(applianced).with_name("appliancectl"))
    tools = compile_tools(work)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[-1])
    client_cpu = {"target": str(cpus[1]), "generator": str(cpus[0]), "any": None}[args.client_cpu]
    netns.up()
    config = write_config(work, "worker")
    target = Target(
        "applianced", [applianced, "--config", str(config), "--workers", "1"], cpus[1], work
    )
    started.append(target)
    target.wait_ready()
    for _ in range(20):  # warm-up, and the worker's first heartbeat
        warm = run_gen(tools["gen"], cpus[0], "flood", 64, MIX, 0.3, 16, 100_000, rx_nap_us=100)
        if warm["received"]:
            break
        time.sleep(0.5)
    target.describe()
    runtime = work / "runtime"
    captures = 0
    where = client_cpu or "any"
    print(f"{args.payload} B mix, {args.seconds:g} s floods; capture client on CPU {where}")
    for label, text in FILTERS.items():
        before = counters(ctl, runtime)
        proc = None
        if text is not None:
            captures += 1
            out = work / f"capture-{captures}.pcapng"
            proc = start_capture(ctl, runtime, text, args.seconds + 30, out, client_cpu)
            wait_started(target, captures)
        row = measure(target, tools, cpus, args, args.payload, MIX, 0.0, ("worker",))
        said = ""
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=15)
            said = err.strip()
        after = counters(ctl, runtime)
        kept = after["capture_kept"] - before["capture_kept"]
        dropped = after["capture_dropped"] - before["capture_dropped"]
        handled = after["received"] - before["received"]
        print(
            f"  {label:22} returned {row['returned_pps']:>9,.0f} pps, loss {row['loss_pct']:4.1f}%,"
            f" worker {row['cpu_us_per_pkt'] or 0:.2f} us/pkt, errors {row['errors']}"
        )
        if proc is not None:
            match = re.match(r"captured (\d+) packets", said)
            print(
                f"  {'':22} worker counted {kept:,} kept, {dropped:,} dropped of {handled:,} "
                f"received ({100 * dropped / max(1, kept + dropped):.1f}% dropped); "
                f"appliancectl: {said!r}; file {out.stat().st_size:,} bytes"
            )
            if match is None:
                raise BenchError(f"appliancectl capture said {said!r}")
    target.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gwlb-capture-bench-"))
    netns = Netns()
    started: list[Target] = []
    status = 0
    try:
        run(args, work, netns, started)
    except KeyboardInterrupt:
        status = 130
    except (BenchError, subprocess.SubprocessError, OSError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        status = 1
    except Exception:  # a bug here must still not leave namespaces or processes behind
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for target in started:
            target.stop()
        for problem in netns.down():
            print(f"cleanup: {problem}", file=sys.stderr)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
