#!/usr/bin/env python3
"""The soak test: `python3 deploy/bench/soak.py [--minutes 10] [--fraction 0.8]` (root).

Target (issue 10): 10 minutes at 80% of the measured capacity with the benchmark's mix: the RSS of
every process grows by less than 1 MiB after the warm-up, 0 validation errors, 0 loss at that rate.

In one run, on the benchmark's test bed (harness/, gen.c): applianced as an operator runs it (the
supervisor, --workers N, the health service on port 80, its whole tree pinned to the second CPU,
gen on the first) is first flooded with the mix as run.py does (--capacity-floods floods of 3 s;
the capacity is the median of the rates it returned), then sent the mix paced at --fraction of that
for --minutes (gen --mode paced, health probes at 10/s as in run.py). Every --sample-s it samples
the RSS (and its anonymous, file and shared parts), descriptors and threads of every process of the
tree, the appliance's counters (`appliancectl --json stats`), the workers' states (`status`) and
the UDP counters of both namespaces. It reports, per process, the growth of RSS from the first
sample after --warmup-s to the last and its linear trend; validation errors; loss (replies expected
against valid replies received, where in time any was lost, the appliance's own counters and the
kernel's receive-buffer overflows in its namespace); the health probes; and PASS/FAIL per target.
The raw figures (every sample, gen's timeline) go to a JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from harness.bed import Bed, check_host
from harness.env import APP_NS, GEN_NS, MIX, BenchError, cpu_times, delta, ns_counters
from harness.paced import PacedGen, Timeline, summary
from harness.procstat import growth, sample_tree
from harness.product import Ctl, config_text, write_config
from harness.report import fmt
from harness.targets import Target, describe_mix, run_gen

RSS_LIMIT_KIB = 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="paced run (default 10)")
    p.add_argument("--fraction", type=float, default=0.8, help="of the capacity (default 0.8)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="before the RSS baseline (60)")
    p.add_argument("--sample-s", type=float, default=10.0, help="sampling period (default 10)")
    p.add_argument("--workers", type=int, default=1, help="applianced --workers (default 1)")
    p.add_argument("--payload", type=int, default=64, help="inner payload bytes (default 64)")
    p.add_argument("--capacity-floods", type=int, default=5, help="3 s floods (default 5)")
    p.add_argument("--flood-seconds", type=float, default=3.0, help="each flood (default 3)")
    p.add_argument("--batch", type=int, default=64, help="paced sendmmsg batch (default 64)")
    p.add_argument("--rate", type=float, help="paced rate in pps instead of --fraction")
    p.add_argument("--json", metavar="FILE", help="raw figures (default /tmp/gwlb-soak-*.json)")
    p.add_argument("--applianced", help="the applianced executable (default: next to python)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    if not (0 < args.minutes <= 55 and 0 < args.fraction <= 1.5 and 1 <= args.workers <= 8):
        p.error("--minutes in (0, 55], --fraction in (0, 1.5], --workers in [1, 8]")
    if not (0 <= args.warmup_s < args.minutes * 60 and 1 <= args.sample_s <= 120):
        p.error("--warmup-s in [0, minutes), --sample-s in [1, 120]")
    if not (1 <= args.capacity_floods <= 9 and 0.5 <= args.flood_seconds <= 30):
        p.error("--capacity-floods in [1, 9], --flood-seconds in [0.5, 30]")
    if not 1 <= args.batch <= 64 or (args.rate is not None and not 1 <= args.rate <= 1e6):
        p.error("--batch in [1, 64], --rate in [1, 1e6]")
    return args


# ---------------------------------------------------------------- capacity


CLEAN_OTHERS_PCT = 5.0  # a flood is clean when others took less than this share of the target CPU


def measure_capacity(bed: Bed, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """The mix flood as run.py runs it (16 flows, batches of 64, health probes at 10/s), a few
    times. Another tenant of the machine on the appliance's CPU can only lower a flood's rate, so
    each flood notes how busy that CPU was and how much of it the appliance's processes were
    charged: the capacity is the median of the clean floods (others under 5% of the CPU), or the
    highest rate when none was clean."""
    floods = []
    cpu = bed.cpus[1]
    for k in range(args.capacity_floods):
        app0, jiffies0 = ns_counters(APP_NS), cpu_times()
        ticks0 = sum(u + st for u, st, _ in target.cpu().values())
        flood = run_gen(
            bed.tools["gen"],
            bed.cpus[0],
            "flood",
            args.payload,
            MIX,
            args.flood_seconds,
            16,
            int(args.flood_seconds * 3e6),
            10.0,
            rx_nap_us=100,
        )
        ticks1 = sum(u + st for u, st, _ in target.cpu().values())
        split = _cpu_split(
            {"cpu_jiffies": jiffies0, "tree_ticks": ticks0},
            {"cpu_jiffies": cpu_times(), "tree_ticks": ticks1},
            cpu,
        )
        others = max(0.0, split.get("cpu_busy_pct", 0) - split.get("cpu_tree_pct", 0))
        kernel = delta(ns_counters(APP_NS), app0)
        overflow = kernel.get("udp_rcvbuf_errors", 0)
        floods.append(
            {
                "offered_pps": flood["offered_pps"],
                "returned_pps": flood["returned_pps"],
                "invalid": flood["invalid"],
                "app_rcvbuf_overflows": overflow,
                "kept_up": overflow <= 0.001 * (overflow + kernel.get("udp_in_datagrams", 0)),
                **split,
                "others_pct": round(others, 1),
                "clean": others < CLEAN_OTHERS_PCT,
            }
        )
        print(
            f"  capacity flood {k + 1}: offered {flood['offered_pps']:,.0f} pps, returned "
            f"{flood['returned_pps']:,.0f} pps, invalid {flood['invalid']}, socket overflows "
            f"{overflow:,}; CPU {cpu} {split.get('cpu_busy_pct', 0):.0f}% busy, appliance "
            f"{split.get('cpu_tree_pct', 0):.0f}%",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(1.0)
    clean = [f["returned_pps"] for f in floods if f["clean"]]
    returned = [f["returned_pps"] for f in floods]
    return {
        "floods": floods,
        "capacity_pps": statistics.median(clean) if clean else max(returned),
        "basis": f"median of {len(clean)} clean floods"
        if clean
        else "no clean flood: the highest rate",
        "returned_pps_median": statistics.median(returned),
        "generator_bound": any(f["kept_up"] for f in floods),
        "invalid": sum(f["invalid"] for f in floods),
    }


# ---------------------------------------------------------------- the paced run


def observe(target: Target, ctl: Ctl, t0_ns: int) -> dict[str, Any]:
    """One sample: the processes, the appliance's counters and states, both namespaces' UDP."""
    sample = sample_tree(target)
    stats, status = ctl.run("stats", timeout=10), ctl.run("status", timeout=10)
    sample["t_s"] = round((sample["t_ns"] - t0_ns) / 1e9, 2)
    sample["stats_total"] = (stats.data or {}).get("total") if stats.code == 0 else None
    workers = (status.data or {}).get("workers", []) if status.data else []
    sample["worker_states"] = {str(w.get("slot")): w.get("state") for w in workers}
    sample["restarts"] = sum(int(w.get("restarts") or 0) for w in workers)
    sample["app_ns"], sample["gen_ns"] = ns_counters(APP_NS), ns_counters(GEN_NS)
    sample["load_average"] = os.getloadavg()
    sample["cpu_jiffies"] = cpu_times()
    sample["tree_ticks"] = sum(u + st for u, st, _ in target.cpu().values())
    return sample


def soak(
    bed: Bed, target: Target, ctl: Ctl, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    seconds = args.minutes * 60
    before = observe(target, ctl, time.monotonic_ns())
    samples: list[dict[str, Any]] = []
    with PacedGen(
        bed.tools["gen"],
        bed.cpus[0],
        rate,
        seconds,
        bed.work,
        payload=args.payload,
        batch=args.batch,
    ) as gen:
        t0 = time.monotonic_ns()
        next_sample, next_print = time.monotonic(), time.monotonic() + 60
        while gen.running() and time.monotonic_ns() - t0 < (seconds + 40) * 1e9:
            if not target.alive():
                raise BenchError(f"applianced exited during the soak:\n{target.tail()}")
            if time.monotonic() >= next_sample:
                samples.append(observe(target, ctl, t0))
                next_sample += args.sample_s
            if time.monotonic() >= next_print:
                _progress(samples[-1], before, seconds)
                next_print += 60
            time.sleep(0.2)
        result = gen.result()
    after = observe(target, ctl, t0)
    return {"t0_ns": t0, "before": before, "samples": samples, "after": after, "gen": result}


def _progress(s: dict[str, Any], before: dict[str, Any], seconds: float) -> None:
    rss = ", ".join(f"{role} {p['VmRSS'] / 1024:.1f}" for role, p in s["procs"].items())
    received = (s["stats_total"] or {}).get("received", 0) - (before["stats_total"] or {}).get(
        "received", 0
    )
    overflow = s["app_ns"].get("udp_rcvbuf_errors", 0) - before["app_ns"].get(
        "udp_rcvbuf_errors", 0
    )
    print(
        f"  soak {s['t_s'] / 60:4.1f}/{seconds / 60:g} min: appliance received {received:,}, "
        f"socket overflows {overflow:,}, load {s['load_average'][0]:.2f}; RSS MiB: {rss}",
        file=sys.stderr,
        flush=True,
    )


# ---------------------------------------------------------------- verdicts


def _counter_delta(after: dict[str, Any] | None, before: dict[str, Any] | None) -> dict[str, Any]:
    if not after or not before:
        return {}
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, int):
            out[key] = value - int(before.get(key, 0))
        elif isinstance(value, dict):
            inner = {k: v - int(before.get(key, {}).get(k, 0)) for k, v in value.items()}
            out[key] = {k: v for k, v in inner.items() if v}
    return out


def analyse(run: dict[str, Any], rate: float, args: argparse.Namespace) -> dict[str, Any]:
    gen, before, after = run["gen"], run["before"], run["after"]
    since = run["t0_ns"] + int(args.warmup_s * 1e9)
    procs = growth(run["samples"], since)
    timeline = Timeline(gen)
    app_kernel = delta(after["app_ns"], before["app_ns"])
    gen_kernel = delta(after["gen_ns"], before["gen_ns"])
    counters = _counter_delta(after["stats_total"], before["stats_total"])
    validation = gen["invalid"] + gen["silent_templates"]
    lost = gen["expected"] - gen["valid"]
    worst = max(procs.values(), key=lambda p: p["rss_growth_kib"]) if procs else None
    restarted = [name for name, p in procs.items() if p["restarted"] or not p["present_throughout"]]
    restarts = after["restarts"] - before["restarts"]
    probes = gen.get("probes") or {}
    verdicts = {
        "rss": {
            "target": f"every process's RSS grows by less than {RSS_LIMIT_KIB} KiB after warm-up",
            "pass": bool(procs)
            and all(p["rss_growth_kib"] < RSS_LIMIT_KIB for p in procs.values())
            and not restarted
            and not restarts,
            "figure": f"largest growth {worst['rss_growth_kib']} KiB ({worst_name(procs)})"
            if worst
            else "no samples after the warm-up",
        },
        "validation": {
            "target": "0 validation errors",
            "pass": validation == 0,
            "figure": f"{gen['invalid']} invalid replies, "
            f"{gen['silent_templates']} silent templates",
        },
        "loss": {
            "target": "0 loss at that rate",
            "pass": lost == 0,
            "figure": f"{lost:,} of {gen['expected']:,} expected replies missing "
            f"({100.0 * lost / gen['expected'] if gen['expected'] else 0:.4f}%)",
        },
    }
    return {
        "rate_pps": rate,
        "processes": procs,
        "worker_restarts": restarts,
        "processes_restarted": restarted,
        "gen": summary(gen),
        "lossy_buckets": timeline.lossy_buckets()[:200],
        "minutes": by_minute(run, timeline, args.app_cpu),
        "app_counters": counters,
        "app_kernel": app_kernel,
        "gen_kernel": gen_kernel,
        "probes": probes,
        "load_average": [s["load_average"] for s in run["samples"]],
        "verdicts": verdicts,
    }


def _cpu_split(before: dict[str, Any], after: dict[str, Any], cpu: int) -> dict[str, float]:
    """How busy the appliance's CPU was between two samples, and how much of that the appliance's
    own processes were charged (the rest: softirq work and other tenants of the machine)."""
    b, a = before["cpu_jiffies"][cpu], after["cpu_jiffies"][cpu]
    total = sum(a) - sum(b)
    if total <= 0:
        return {}
    busy = 100.0 * (total - (a[3] - b[3]) - (a[4] - b[4])) / total
    tree = 100.0 * (after["tree_ticks"] - before["tree_ticks"]) / total
    return {"cpu_busy_pct": round(busy, 1), "cpu_tree_pct": round(tree, 1)}


def by_minute(run: dict[str, Any], timeline: Timeline, cpu: int) -> list[dict[str, Any]]:
    """Per minute of the paced run: replies lost (by send time), the appliance socket's overflows
    and the load average at the last sample of that minute (to tell the product from the
    machine's other tenants)."""
    out = []
    start, samples = timeline.start_ns, run["samples"]
    previous = run["before"]
    for minute in range(int(len(timeline.sent) * timeline.bucket_ns / 60e9) + 1):
        t0, t1 = start + minute * 60 * 10**9, start + (minute + 1) * 60 * 10**9
        window = timeline.window(t0, t1)
        if not window.expected:
            continue
        inside = [x for x in samples if x["t_ns"] < t1]
        last = inside[-1] if inside else previous
        out.append(
            {
                "minute": minute + 1,
                "lost": window.lost,
                "expected": window.expected,
                "rcvbuf_errors": last["app_ns"].get("udp_rcvbuf_errors", 0)
                - previous["app_ns"].get("udp_rcvbuf_errors", 0),
                "load_average": last["load_average"][0],
                **_cpu_split(previous, last, cpu),
            }
        )
        previous = last
    return out


def worst_name(procs: dict[str, dict[str, Any]]) -> str:
    return max(procs, key=lambda name: procs[name]["rss_growth_kib"])


# ---------------------------------------------------------------- the report


def render(facts: dict[str, Any], capacity: dict[str, Any], a: dict[str, Any], args: Any) -> str:
    g, c, k = a["gen"], a["app_counters"], a["app_kernel"]
    loads = [x[0] for x in a["load_average"]] or [0.0]
    out = [
        f"SOAK {facts['date']}, {facts['cpu_model']}, {facts['cores']} CPUs, kernel "
        f"{facts['kernel']}, Python {facts['python']}, product {facts['product']}",
        f"applianced --workers {args.workers} (tree on CPU {facts['cpus'][1]}, gen on CPU "
        f"{facts['cpus'][0]}); the {args.payload} B mix; load average before "
        f"{facts['load_average_before'][0]:.2f}, during "
        f"{min(loads):.2f}-{max(loads):.2f}",
        "Capacity (mix floods of "
        f"{args.flood_seconds:g} s, returned pps, * = others took 5% or more of the CPU): "
        + ", ".join(
            f"{f['returned_pps']:,.0f}{'' if f['clean'] else '*'}" for f in capacity["floods"]
        )
        + f"; capacity {capacity['capacity_pps']:,.0f} ({capacity['basis']})"
        + (
            " (generator-bound: the socket kept up in a flood)"
            if capacity["generator_bound"]
            else " (socket overflowed in every flood: the appliance's own limit)"
        ),
        f"Paced run: {args.minutes:g} min at {a['rate_pps']:,.0f} pps "
        f"({a['rate_pps'] / capacity['capacity_pps']:.0%} of it), batches of {args.batch}; "
        f"gen sent {g['sent']:,} ({g['offered_pps']:,.0f} pps, "
        f"{g['offered_pps'] / capacity['capacity_pps']:.0%}), partial sends "
        f"{g['partial_sends']}, send errors {sum(g['send_errors'].values())}, sender stalls over "
        f"10 ms {g['stalls']}",
        "",
        f"RSS per process, from the first sample after {args.warmup_s:g} s to the last "
        f"(KiB; trend = least squares over the window; every {args.sample_s:g} s):",
    ]
    rows = []
    for name, p in a["processes"].items():
        rows.append(
            [
                name,
                ",".join(str(x) for x in p["pids"]),
                f"{p['rss_first_kib']:,}",
                f"{p['rss_last_kib']:,}",
                f"{p['rss_growth_kib']:+,}",
                f"{p['anon_growth_kib']:+,}",
                fmt(p["trend_kib_per_min"], 2),
                f"{p['rss_max_kib']:,}",
                f"{p['fds_first']}->{p['fds_last']}",
                "PASS" if p["rss_growth_kib"] < RSS_LIMIT_KIB and not p["restarted"] else "FAIL",
            ]
        )
    cols = ["process", "pid", "RSS first", "last", "growth", "anon growth", "KiB/min", "max"]
    out += table([*cols, "fds", "<1 MiB"], rows)
    if a["processes_restarted"] or a["worker_restarts"]:
        out.append(
            f"restarted during the soak: {a['processes_restarted']} "
            f"(worker restarts {a['worker_restarts']})"
        )
    lost = g["expected"] - g["valid"]
    out += [
        "",
        f"Validation: {g['valid']:,} valid replies, {g['invalid']} invalid"
        f"{' ' + str(g['errors']) if g['errors'] else ''}, {g['silent_templates']} silent "
        f"templates, {g['late_stamps']} late stamps",
        f"Loss: expected {g['expected']:,}, valid {g['valid']:,}, missing {lost:,}; "
        f"gen received {g['received']:,}",
        f"  appliance counters: received {c.get('received', '-'):,}, sent {c.get('sent', '-'):,}"
        f", dropped by rule {c.get('dropped', '-'):,} {c.get('dropped_by_rule', '')}, malformed "
        f"{c.get('malformed', '-')}, disallowed {c.get('disallowed_source', '-')}, send errors "
        f"{c.get('send_errors', '-')}",
        f"  kernel, appliance namespace: UDP delivered {k.get('udp_in_datagrams', 0):,}, "
        f"RcvbufErrors {k.get('udp_rcvbuf_errors', 0):,}, InErrors {k.get('udp_in_errors', 0):,}"
        f"; generator namespace RcvbufErrors {a['gen_kernel'].get('udp_rcvbuf_errors', 0):,}",
    ]
    out.append(
        f"  per minute (lost / socket overflows / load average / CPU {args.app_cpu} busy % / of "
        "which the appliance's processes %): "
        + "; ".join(
            f"{m['minute']}: {m['lost']:,}/{m['rcvbuf_errors']:,}/{m['load_average']:.1f}/"
            f"{m.get('cpu_busy_pct', 0):.0f}/{m.get('cpu_tree_pct', 0):.0f}"
            for m in a["minutes"]
        )
    )
    if a["lossy_buckets"]:
        shown = ", ".join(f"{t:g} s: {n}" for t, n in a["lossy_buckets"][:12])
        out.append(f"  losses by send time (100 ms buckets): {shown}")
    p = a["probes"]
    if p:
        out.append(
            f"Health probes (GET / at {p.get('rate', 0):g}/s): {p.get('sent')} sent, "
            f"{p.get('ok_200')} 200, {p.get('other_status')} other, {p.get('failed')} failed, "
            f"p50 {p.get('p50_ms')} ms, max {p.get('max_ms')} ms"
        )
    out += ["", "Targets:"]
    for v in a["verdicts"].values():
        out.append(f"  {'PASS' if v['pass'] else 'FAIL'}  {v['target']}: {v['figure']}")
    return "\n".join(out)


def table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_host("soak.py")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json or f"/tmp/gwlb-soak-{stamp}.json")
    bed = Bed("gwlb-soak-", args.applianced, args.keep)
    status = 0
    try:
        bed.up()
        facts = bed.facts
        facts["mix"] = describe_mix(bed.tools["gen"])["lines"]
        runtime = bed.work / "runtime"
        config = bed.work / "applianced.toml"
        write_config(config, config_text(runtime))
        target, ctl = bed.start_product(config, args.workers, str(bed.cpus[1]), runtime)
        facts["processes"] = target.describe()
        print(f"# soak: temp {bed.work}; measuring capacity", file=sys.stderr, flush=True)
        capacity = measure_capacity(bed, target, args)
        args.app_cpu = bed.cpus[1]
        rate = args.rate or args.fraction * capacity["capacity_pps"]
        print(
            f"# soak: {args.minutes:g} min at {rate:,.0f} pps (results at the end, progress "
            "every minute)",
            file=sys.stderr,
            flush=True,
        )
        run = soak(bed, target, ctl, rate, args)
        analysis = analyse(run, rate, args)
        text = render(facts, capacity, analysis, args)
        print(text)
        everything = {"facts": facts, "args": vars(args), "capacity": capacity, **analysis}
        everything["samples"] = run["samples"]
        everything["timeline"] = run["gen"].get("timeline")
        json_path.write_text(json.dumps(everything, indent=1, default=str))
        print(f"\nraw figures: {json_path}")
        status = 0 if all(v["pass"] for v in analysis["verdicts"].values()) else 3
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except (BenchError, subprocess.SubprocessError, OSError, json.JSONDecodeError) as error:
        print(f"soak failed: {error}", file=sys.stderr)
        status = 1
    except Exception:  # a bug here must still not leave namespaces or processes behind
        traceback.print_exc()
        status = 1
    finally:
        status = bed.close() or status
    return status


if __name__ == "__main__":
    sys.exit(main())
