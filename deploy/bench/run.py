#!/usr/bin/env python3
"""The appliance benchmark, in one command: `python3 deploy/bench/run.py [--seconds 3] [--quick]`.

It compiles the C load generator (gen.c) and the C reference reflector (reflector.c), builds two
network namespaces joined by a veth pair (generator 10.77.200.1, appliance 10.77.200.2, MTU 9001),
then measures, for each target (the C reflector as the baseline, then applianced with one worker)
and each traffic case (64 and 1400 payload bytes; the traffic mix, then pass-through and rewrite
alone):
  - flood: offered and returned packets per second, loss against the replies expected, validation
    errors, and the CPU time of the target's processes (user and kernel, from /proc/PID/stat) per
    packet its socket received;
  - latency: round-trip p50/p99 at a paced 10,000 packets per second.
The headline is the mix (gen.c says what it holds), next to the generator's ceiling measured in the
same run (gen flooding a sink that never answers). applianced runs as an operator runs it
(--product-mode tree: supervisor, worker and the health service, probed over HTTP during every run)
or as the data path alone (--product-mode worker). With --health-load (tree mode) it also loads the
health service with back-to-back probes from 50 concurrent clients on loopback and measures the
probes' latency and the mix flood's rate and worker CPU with and without that load, in the same
run. With --firewall it also measures new TCP connections (whole handshakes, a new inner 5-tuple
each, some denied) through a 50-rule policy with the flow table (firewall_policy.toml), in an
applianced of its own, against the C reflector as a pass-through baseline (it does not implement
that policy). The generator runs on one CPU, the target on another (taskset). Nothing here imports
the product: packets are built and checked by gen.c.
Namespaces and processes are always torn down (by name and by PID), also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from harness.env import (
    APP_NS,
    BASELINE,
    CASES,
    FIREWALL,
    FIREWALL_CASES,
    GEN_NS,
    MIX,
    PRODUCT,
    PRODUCT_RING,
    BenchError,
    Netns,
    compile_tools,
    find_applianced,
    header_facts,
    write_config,
)
from harness.firewall import describe_firewall, write_firewall_config
from harness.healthload import health_load
from harness.measure import applianced_counters, bench_target, generator_ceiling
from harness.report import report
from harness.targets import Target, describe_mix, machine_noise

# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="flood time per case (default 3, 1 with --quick)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=None,
        help="paced latency run per case (default 4, 0.5 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="1 s floods, 0.5 s latency runs")
    p.add_argument("--flows", type=int, default=16, help="outer source ports (default 16)")
    p.add_argument(
        "--max-pps",
        type=float,
        default=3e6,
        help="caps a flood's packet count at seconds * this (default 3e6)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    p.add_argument("--applianced", help="the applianced executable (default: next to python)")
    p.add_argument("--only", choices=["reflector", "applianced"], help="benchmark one target")
    p.add_argument(
        "--product-mode",
        choices=["tree", "worker"],
        default="tree",
        help="tree (default): applianced as an operator runs it, supervisor + 1 worker + the "
        "health service on port 80, probed during every run, CPU of the whole tree; worker: "
        "the data path alone (health service off), CPU of the worker process",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=10.0,
        help="health probes per second in tree mode (default 10)",
    )
    p.add_argument(
        "--health-load",
        action="store_true",
        help="tree mode: after the cases, load the health service with --probe-clients clients "
        "probing http://127.0.0.1:80/ back to back (from the appliance's namespace, on the "
        "generator's CPU): their latency alone, then the 64 B mix flood without and with them",
    )
    p.add_argument(
        "--probe-clients",
        type=int,
        default=50,
        help="concurrent probing clients for --health-load (default 50)",
    )
    p.add_argument(
        "--probe-seconds",
        type=float,
        default=3.0,
        help="each --health-load phase: probes alone, flood alone, flood with probes (default 3)",
    )
    p.add_argument(
        "--rx-nap-us",
        type=int,
        default=100,
        help="in a flood, gen's receiver naps this long after a partial batch instead of sleeping "
        "on its socket, so replies do not wake it from the target's CPU (default 100; 0: it "
        "sleeps on the socket, as before 2026-11-26: see README.md)",
    )
    p.add_argument("--mix-only", action="store_true", help="only the mix, not the single cases")
    p.add_argument(
        "--io",
        choices=["socket", "ring"],
        default="socket",
        help="socket (default): applianced with its default I/O; ring: also applianced with "
        "dataplane.io = ring (packet rings), after it, the two side by side against the C "
        "socket reflector",
    )
    p.add_argument(
        "--track-flows",
        action="store_true",
        help="applianced with the flow table on ([policy] track_flows = true): every packet is "
        "looked up in its worker's flow table, as under any policy that decides flows",
    )
    p.add_argument(
        "--firewall",
        action="store_true",
        help="also the firewall case: new TCP connections (handshake, data, FINs; some denied) "
        "through firewall_policy.toml (50 rules, flow table) in an applianced of its own, with "
        "the C reflector as a pass-through baseline",
    )
    p.add_argument(
        "--firewall-only",
        action="store_true",
        help="only the firewall case (implies --firewall)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (binaries, logs)")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.latency_seconds is None:
        args.latency_seconds = 0.5 if args.quick else 4.0
    if not (0 < args.seconds <= 30 and 0 < args.latency_seconds <= 30 and 1 <= args.flows <= 64):
        p.error("--seconds and --latency-seconds in (0, 30], --flows in [1, 64]")
    if not 0 < args.probe_rate <= 100:
        p.error("--probe-rate in (0, 100]")
    if not 0 <= args.rx_nap_us <= 10_000:
        p.error("--rx-nap-us in [0, 10000]")
    if not (1 <= args.probe_clients <= 256 and 0 < args.probe_seconds <= 30):
        p.error("--probe-clients in [1, 256], --probe-seconds in (0, 30]")
    if args.health_load and (args.product_mode != "tree" or args.only == "reflector"):
        p.error("--health-load needs applianced in --product-mode tree (the health service)")
    if args.firewall_only and (args.mix_only or args.health_load):
        p.error("--firewall-only runs no mix: not with --mix-only or --health-load")
    args.firewall = args.firewall or args.firewall_only
    args.cases = [c for c in CASES if c[1] == MIX] if args.mix_only else CASES
    args.cases = ([] if args.firewall_only else args.cases) + (
        FIREWALL_CASES if args.firewall else []
    )
    return args


def product_targets(
    args: argparse.Namespace, work: Path, applianced: str
) -> list[tuple[str, list[str], float, tuple[str, ...] | None, list[tuple[int, str]], str]]:
    """applianced's runs: (name, argv, health probes per second, whose CPU the headline counts,
    cases, label). The demo cases with the shipped config, the firewall case with its own; on
    sockets, then (--io ring) on packet rings."""
    demo = [c for c in args.cases if c[1] != FIREWALL]
    firewall = [c for c in args.cases if c[1] == FIREWALL]
    # One worker on the target's CPU, like the single-threaded C reflector; in tree mode the
    # supervisor and the health service share that CPU (they inherit its affinity).
    tree = args.product_mode == "tree"
    rate, roles = (args.probe_rate, None) if tree else (0.0, ("worker",))
    out = []
    for io, name in [("socket", PRODUCT)] + ([("ring", PRODUCT_RING)] if args.io == "ring" else []):
        if demo:
            config = write_config(work, args.product_mode, args.track_flows, io=io)
            argv = [applianced, "--config", str(config), "--workers", "1"]
            out.append((name, argv, rate, roles, demo, ""))
        if firewall:
            config = write_firewall_config(work, args.product_mode, io=io)
            argv = [applianced, "--config", str(config), "--workers", "1"]
            out.append((name, argv, rate, roles, firewall, FIREWALL))
    return out


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    for tool in ("ip", "taskset", "gcc"):
        if shutil.which(tool) is None:
            print(f"run.py needs `{tool}`", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[1]) if len(allowed) >= 2 else (allowed[0], allowed[0])
    if cpus[0] == cpus[1]:
        print("warning: one CPU only: generator and target share it", file=sys.stderr)

    facts = header_facts()
    work = Path(tempfile.mkdtemp(prefix="gwlb-bench-"))
    netns = Netns()
    started: list[Target] = []
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    health: dict[str, Any] = {}
    status = 0
    try:
        applianced = find_applianced(args.applianced)
        tools = compile_tools(work)
        facts.update(
            rx_nap_us=args.rx_nap_us,
            gcc=tools["gcc"],
            applianced=applianced,
            seconds=args.seconds,
            latency_seconds=args.latency_seconds,
            flows=args.flows,
            cpus=cpus,
            product_mode=args.product_mode,
            track_flows=args.track_flows,
            io=args.io,
            firewall=args.firewall,
            probe_rate=args.probe_rate,
            health_load={"clients": args.probe_clients, "seconds": args.probe_seconds}
            if args.health_load
            else None,
        )
        facts["mix"] = describe_mix(tools["gen"])
        if args.firewall:
            facts["firewall"] = describe_firewall(tools["gen"])
        print(f"# {facts['gcc']}; namespaces {GEN_NS} / {APP_NS}; temp {work}", file=sys.stderr)
        facts["noise"] = machine_noise(tools["gen"], cpus, 0.5 if args.quick else 1.0)
        busy = [c for c, n in facts["noise"].items() if n["busy_pct_before"] > 10]
        if busy:
            print(
                f"warning: {', '.join(busy)} already busy before the run: numbers will be noisy",
                file=sys.stderr,
            )
        netns.up()
        facts["ceiling"] = generator_ceiling(tools, cpus, args, work, started)
        if args.firewall:
            facts["ceiling_firewall"] = generator_ceiling(
                tools, cpus, args, work, started, FIREWALL
            )
        # (name, argv, health probes per second, whose CPU the headline counts: None = all,
        # cases, label)
        targets: list[
            tuple[str, list[str], float, tuple[str, ...] | None, list[tuple[int, str]], str]
        ] = []
        if args.only != "applianced":
            reflector = [tools["reflector"], "--max-seconds", "600"]
            targets.append((BASELINE, reflector, 0.0, None, args.cases, ""))
        if args.only != "reflector":
            targets += product_targets(args, work, applianced)
        processes: dict[str, list[str]] = {}
        facts["processes"] = processes

        def product_finish(target: Target) -> None:
            if args.health_load:
                health.update(health_load(target, tools, cpus, args))
            extra["applianced counters"] = applianced_counters(applianced, work / "runtime")

        def firewall_finish(target: Target) -> None:
            runtime = work / "firewall" / "runtime"
            extra["applianced counters (firewall)"] = applianced_counters(applianced, runtime)

        for name, argv, probe_rate, roles, cases, label in targets:
            finish = None
            if name == PRODUCT:
                finish = firewall_finish if label == FIREWALL else product_finish
            rows += bench_target(
                name,
                argv,
                tools,
                cpus,
                args,
                work,
                started,
                processes,
                probe_rate,
                roles,
                finish,
                cases,
                label,
            )
            log = started[-1].tail(3).strip().splitlines()
            extra[f"{name}{f' ({label})' if label else ''} exit"] = (
                f"code {started[-1].proc.returncode}; " + (log[-1] if log else "")
            )
        stats = work / "runtime" / "stats.json"  # the first build's counters, written at exit
        if stats.exists():
            extra["applianced stats.json"] = json.dumps(json.loads(stats.read_text())["counters"])
        text = report(facts, rows, extra, health or None)
        print(text)
        if args.json:
            everything = {
                "facts": facts,
                "rows": rows,
                "exits": extra,
                "health_load": health or None,
            }
            Path(args.json).write_text(json.dumps(everything, indent=1, default=str))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except (BenchError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        status = 1
    except Exception:  # a bug here must still not leave namespaces or processes behind
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish the cleanup whatever comes now
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for target in started:
            try:
                target.stop()
            except Exception as error:  # keep cleaning up whatever failed
                print(
                    f"cleanup: stopping {target.name} (pid {target.pid}): {error}", file=sys.stderr
                )
        for problem in netns.down():
            print(f"cleanup: {problem}", file=sys.stderr)
            status = status or 1
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
