"""Measuring one target: a flood and a paced latency run per case, and the generator's ceiling."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.env import (
    APP_IP,
    APP_NS,
    BASELINE,
    CLK_TCK,
    FIREWALL,
    GEN_NS,
    HEALTH_PORT,
    LATENCY_RATE,
    MIX,
    PRODUCT_RING,
    READY_TIMEOUT_S,
    BenchError,
    cpu_shares,
    cpu_times,
    delta,
    in_ns,
    ns_counters,
)
from harness.firewall import connection_rates
from harness.report import fmt
from harness.targets import Target, run_gen

# ---------------------------------------------------------------- measuring


def measure(
    target: Target,
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    payload: int,
    case: str,
    probe_rate: float,
    headline_roles: tuple[str, ...] | None,
) -> dict[str, Any]:
    """One case against one target: a flood, then a paced latency run. `headline_roles`: whose CPU
    time the headline counts (None: the whole process tree)."""
    ring = target.name == PRODUCT_RING
    drops_before = ring_drops(target) if ring else 0
    app_before, gen_before = ns_counters(APP_NS), ns_counters(GEN_NS)
    cpu_before, stat_before = target.cpu(), cpu_times()
    flood = gen_run(
        target,
        tools["gen"],
        cpus[0],
        "flood",
        payload,
        case,
        args.seconds,
        args.flows,
        int(args.seconds * args.max_pps),
        probe_rate,
        rx_nap_us=args.rx_nap_us,
    )
    cpu_after, stat_after = target.cpu(), cpu_times()
    app_after, gen_after = ns_counters(APP_NS), ns_counters(GEN_NS)
    dropped = ring_drops(target) - drops_before if ring else 0
    latency = gen_run(
        target,
        tools["gen"],
        cpus[0],
        "latency",
        payload,
        case,
        args.latency_seconds,
        args.flows,
        int(args.latency_seconds * LATENCY_RATE) + 1,
        probe_rate,
        rx_nap_us=args.rx_nap_us,
    )
    if not target.alive():
        raise BenchError(f"{target.name} died during {payload} B {case}:\n{target.tail()}")
    kernel_app = delta(app_after, app_before)
    # The packets the target had to handle: what the kernel delivered to its socket(s) in its
    # namespace during the flood (the ones its receive buffer had no room for cost it nothing).
    handled = kernel_app.get("udp_in_datagrams", 0)
    if ring:
        # No datagram reaches the UDP stack: the frames the interface received (the health
        # probes' few among them) less those a full ring had no room for (the worker's count).
        handled = kernel_app.get("dev_rx_packets", 0) - dropped
        kernel_app["ring_drops"], kernel_app["ring_delivered"] = dropped, handled
    # Over the processes alive at the end (a process that started during the flood counts whole).
    by_role: dict[str, list[int]] = {}
    run_ns = 0
    for pid, (u, st, ns) in cpu_after.items():
        u0, st0, ns0 = cpu_before.get(pid, (0, 0, 0))
        role = target.roles.get(pid, "other")
        acc = by_role.setdefault(role, [0, 0])
        acc[0] += u - u0
        acc[1] += st - st0
        run_ns += ns - ns0
    if any(v[2] < 0 for v in (*cpu_before.values(), *cpu_after.values())):
        run_ns = -1
    counted = [v for role, v in by_role.items() if headline_roles is None or role in headline_roles]
    utime, stime = sum(v[0] for v in counted), sum(v[1] for v in counted)

    def per_pkt(ticks: int) -> float | None:
        return ticks / CLK_TCK * 1e6 / handled if handled else None

    def loss(run: dict[str, Any]) -> float:
        return 100.0 * (1 - run["valid"] / run["expected"]) if run["expected"] else 100.0

    return {
        "target": target.name,
        "payload": payload,
        "case": case,
        "offered_pps": flood["offered_pps"],
        "returned_pps": flood["returned_pps"],
        "sent": flood["sent"],
        "expected": flood["expected"],
        "received": flood["received"],
        "valid": flood["valid"],
        "handled": handled,
        "loss_pct": loss(flood),
        "errors": flood["invalid"] + latency["invalid"],
        # Templates that expect replies and never got one at 10k pps, where nothing should be lost.
        "silent_templates": latency["silent_templates"],
        "errors_by_kind": {
            k: flood["errors"][k] + latency["errors"][k]
            for k in flood["errors"]
            if flood["errors"][k] + latency["errors"][k]
        },
        "cpu_counts": "the whole process tree"
        if headline_roles is None
        else " + ".join(headline_roles),
        "cpu_us_per_pkt": per_pkt(utime + stime),
        "cpu_user_us_per_pkt": per_pkt(utime),
        "cpu_kernel_us_per_pkt": per_pkt(stime),
        "cpu_user_s": utime / CLK_TCK,
        "cpu_system_s": stime / CLK_TCK,
        "cpu_by_role_us_per_pkt": {
            role: per_pkt(u + st) for role, (u, st) in sorted(by_role.items())
        },
        "cpu_tree_sched_us_per_pkt": run_ns / 1e3 / handled if handled and run_ns >= 0 else None,
        "cpu_by_pid": {
            str(pid): [
                target.roles.get(pid, "other"),
                *(
                    a - b
                    for a, b in zip(cpu_after[pid], cpu_before.get(pid, (0, 0, 0)), strict=True)
                ),
            ]
            for pid in cpu_after
        },
        "p50_us": latency["rtt_p50_ns"] / 1e3 if latency["rtt_samples"] else None,
        "p99_us": latency["rtt_p99_ns"] / 1e3 if latency["rtt_samples"] else None,
        "latency_loss_pct": loss(latency),
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
        "kernel_app_ns": kernel_app,
        "kernel_gen_ns": delta(gen_after, gen_before),
        "flood": flood,
        "latency": latency,
        **(connection_rates(flood) if case == FIREWALL else {}),
    }


def gen_run(
    target: Target, gen: str, cpu: int, mode: str, payload: int, case: str, *rest: Any, **kw: Any
) -> dict[str, Any]:
    """run_gen against `target`; in the firewall case with connections it has not seen (from
    its next number on), all due back from the C reflector (which does not implement the
    policy)."""
    if case == FIREWALL:
        kw.update(first_conn=target.next_conn, pass_all=target.name == BASELINE)
    out = run_gen(gen, cpu, mode, payload, case, *rest, **kw)
    if case == FIREWALL:
        target.next_conn = out["firewall"]["next_conn"]
    return out


def wait_healthy(target: Target, gen: str, cpu: int) -> dict[str, Any]:
    """Until the health service answers 200 to a probe from the generator's namespace."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if not target.alive():
            raise BenchError(f"{target.name} exited:\n{target.tail()}")
        proc = subprocess.run(
            in_ns(
                GEN_NS,
                [
                    "taskset",
                    "-c",
                    str(cpu),
                    gen,
                    "--mode",
                    "probe",
                    "--dst",
                    APP_IP,
                    "--probe-port",
                    str(HEALTH_PORT),
                    "--probe-rate",
                    "10",
                    "--seconds",
                    "0.25",
                ],
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"gen --mode probe failed: {proc.stderr.strip()}")
        last = json.loads(proc.stdout)["probes"]
        if last["last_status"] == 200:
            return last
        time.sleep(0.2)
    raise BenchError(
        f"the health service did not answer 200 on {APP_IP}:{HEALTH_PORT} in {READY_TIMEOUT_S} s "
        f"(last probe: {last}):\n{target.tail()}"
    )


def bench_target(
    name: str,
    argv: list[str],
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    logs: Path,
    started: list[Target],
    processes: dict[str, list[str]],
    probe_rate: float = 0.0,
    headline_roles: tuple[str, ...] | None = None,
    finish: Callable[[Target], None] | None = None,
    cases: list[tuple[int, str]] | None = None,
    label: str = "",
) -> list[dict[str, Any]]:
    """`cases`: default args.cases; `label` names a second run of the same target (its log)."""
    cases = args.cases if cases is None else cases
    # Warm up on the firewall case when that is all this target runs (its policy's paths).
    warm_case = FIREWALL if all(c == FIREWALL for _, c in cases) else MIX
    target = Target(name, argv, cpus[1], logs, label)
    started.append(target)
    rows = []
    try:
        target.wait_ready()
        cmdline = Path(f"/proc/{target.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if Path(argv[0]).name not in cmdline:  # CPU time must be read from the target itself
            raise BenchError(f"PID {target.pid} is `{cmdline}`, not {argv[0]}")
        if probe_rate:
            wait_healthy(target, tools["gen"], cpus[0])
        # Warm-up (not reported): first packets, page faults, Python's first calls on every path
        # of the mix; it also waits for a target whose socket is bound before its worker runs
        # (applianced's supervisor).
        for _ in range(20):
            warm = gen_run(
                target,
                tools["gen"],
                cpus[0],
                "flood",
                64,
                warm_case,
                0.3,
                args.flows,
                100_000,
                probe_rate,
                rx_nap_us=args.rx_nap_us,
            )
            if warm["received"] or not target.alive():
                break
            time.sleep(0.5)
        if not warm["received"]:
            raise BenchError(f"{name} answered no warm-up packet:\n{target.tail()}")
        processes[name + (f" ({label})" if label else "")] = target.describe()
        for payload, case in cases:
            row = measure(target, tools, cpus, args, payload, case, probe_rate, headline_roles)
            rows.append(row)
            print(
                f"  {name:12} {payload:5} B {case:8} returned {row['returned_pps']:>11,.0f} pps"
                f"  loss {row['loss_pct']:5.1f}%  errors {row['errors']}"
                f"  CPU {fmt(row['cpu_us_per_pkt'], 2)} us/pkt  p50 {fmt(row['p50_us'], 1)} us"
                + (f"  {fmt(row['conn_per_s'])} conn/s" if case == FIREWALL else ""),
                file=sys.stderr,
                flush=True,
            )
        if finish is not None:
            finish(target)
    finally:
        code = target.stop()
        for row in rows:
            row["target_exit_code"] = code
    return rows


def generator_ceiling(
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    logs: Path,
    started: list[Target],
    case: str = MIX,
) -> dict[int, dict[str, Any]]:
    """What gen offers `case` (the mix, or the firewall case) when nothing comes back: flooding
    the reflector in --sink mode, which only receives. Its CPU then does nothing but send (and
    deliver into the sink's socket)."""
    argv = [tools["reflector"], "--sink", "--max-seconds", "600"]
    sink = Target("sink", argv, cpus[1], logs, "" if case == MIX else case)
    started.append(sink)
    out = {}
    try:
        sink.wait_ready()
        for payload in sorted({p for p, c in args.cases if c == case}):
            flood = run_gen(
                tools["gen"],
                cpus[0],
                "flood",
                payload,
                case,
                args.seconds,
                args.flows,
                int(args.seconds * args.max_pps),
                rx_nap_us=args.rx_nap_us,
            )
            out[payload] = {
                "offered_pps": flood["offered_pps"],
                "sent": flood["sent"],
                "received": flood["received"],
                "send_errors": flood["send_errors"],
                "partial_sends": flood["partial_sends"],
            }
            print(
                f"  gen ceiling  {payload:5} B {case:8} offers   {flood['offered_pps']:>11,.0f} pps"
                " into a sink",
                file=sys.stderr,
                flush=True,
            )
    finally:
        sink.stop()
    return out


def ctl_stats(ctl: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    """`appliancectl --json stats` against the daemon whose runtime directory is `runtime`."""
    return subprocess.run(
        [str(ctl), "--socket", str(runtime / "control.sock"), "--json", "stats"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def ring_drops(target: Target) -> int:
    """Frames the ring backend's full rings dropped so far (`appliancectl stats`'s
    rx_buffer_drops), for the applianced whose `--config` is in the target's command line."""
    argv = target.argv
    config = Path(argv[argv.index("--config") + 1])
    proc = ctl_stats(Path(argv[0]).parent / "appliancectl", config.parent / "runtime")
    if proc.returncode != 0:
        raise BenchError(f"appliancectl stats failed ({proc.returncode}): {proc.stderr[:300]}")
    data = json.loads(proc.stdout)
    return int(data.get("total", data).get("rx_buffer_drops", 0))


def applianced_counters(applianced: str, runtime: Path) -> str:
    """The product's own totals, from `appliancectl stats` when this build has a control socket."""
    ctl = Path(applianced).parent / "appliancectl"
    if not ctl.exists() or not (runtime / "control.sock").exists():
        return "no control socket (see stats.json)"
    proc = ctl_stats(ctl, runtime)
    if proc.returncode != 0:
        return f"appliancectl stats failed ({proc.returncode}): {proc.stderr.strip()[:300]}"
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc.stdout.strip()[:600]
    total = data.get("total", data) if isinstance(data, dict) else data
    return json.dumps(total, separators=(",", ":"))[:900]
