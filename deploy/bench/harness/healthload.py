"""--health-load: the health service under back-to-back probes, and the data path beside it."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

from harness.env import (
    APP_NS,
    CLK_TCK,
    GEN_NS,
    HEALTH_LOAD_PAYLOAD,
    HEALTH_PORT,
    LOOPBACK,
    MIX,
    STOP_TIMEOUT_S,
    BenchError,
    cpu_shares,
    cpu_times,
    delta,
    in_ns,
    ns_counters,
)
from harness.report import fmt, kept_up
from harness.targets import Target, run_gen

# ---------------------------------------------------------------- health load


class ProbeLoad:
    """`gen --mode probe-load` in the appliance's namespace: `clients` threads probing the health
    service at 127.0.0.1:80 back to back for `seconds`, pinned to `cpu`. A context manager: the
    process is killed by its PID if it still runs when the block ends (`ip netns exec` and
    `taskset` exec in place, so the PID is gen's own)."""

    def __init__(self, gen: str, cpu: int, clients: int, seconds: float) -> None:
        self.seconds = seconds
        argv = [
            gen,
            "--mode",
            "probe-load",
            "--dst",
            LOOPBACK,
            "--probe-port",
            str(HEALTH_PORT),
            "--probe-clients",
            str(clients),
            "--seconds",
            f"{seconds:g}",
        ]
        self.proc = subprocess.Popen(
            in_ns(APP_NS, ["taskset", "-c", str(cpu), *argv]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def __enter__(self) -> ProbeLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is not None:
            return  # collected by result()
        if self.proc.poll() is None:
            print(f"cleanup: SIGKILL to probe-load pid {self.proc.pid}", file=sys.stderr)
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=STOP_TIMEOUT_S)  # reaps it, closes the pipes

    def result(self) -> dict[str, Any]:
        """Its report, when it is done (every probe is bounded: at most 2 s after `seconds`)."""
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired as error:
            raise BenchError(
                f"gen --mode probe-load did not finish in {self.seconds + 30:g} s"
            ) from error
        if self.proc.returncode != 0:
            raise BenchError(
                f"gen --mode probe-load failed ({self.proc.returncode}): {err.strip()}"
            )
        result: dict[str, Any] = json.loads(out)
        return result


def _usage_by_role(
    target: Target,
    before: dict[int, tuple[int, int, int]],
    after: dict[int, tuple[int, int, int]],
) -> dict[str, dict[str, int]]:
    """CPU used per role of the tree between two `Target.cpu()` snapshots: clock ticks
    (user+kernel) and schedstat ns (-1 without schedstats)."""
    out: dict[str, dict[str, int]] = {}
    for pid, (u, st, ns) in after.items():
        u0, st0, ns0 = before.get(pid, (0, 0, 0))
        acc = out.setdefault(target.roles.get(pid, "other"), {"ticks": 0, "ns": 0})
        acc["ticks"] += u + st - u0 - st0
        known = acc["ns"] >= 0 and ns >= 0 and ns0 >= 0 and ns >= ns0  # (a thread may end)
        acc["ns"] = acc["ns"] + ns - ns0 if known else -1
    return out


def _pct_of_cpu(usage: dict[str, int], wall_ns: int) -> float | None:
    """A role's CPU time as a share of one CPU over `wall_ns`, in %."""
    if wall_ns <= 0:
        return None
    used_ns = usage["ns"] if usage["ns"] >= 0 else usage["ticks"] * 1e9 / CLK_TCK
    return 100.0 * used_ns / wall_ns


def probes_alone(
    target: Target, gen: str, cpus: tuple[int, int], clients: int, seconds: float
) -> dict[str, Any]:
    """The probe load on its own: the health service's latency with no data-path traffic."""
    cpu_before, stat_before, t0 = target.cpu(), cpu_times(), time.monotonic_ns()
    with ProbeLoad(gen, cpus[0], clients, seconds) as load:
        probes = load.result()
    cpu_after, stat_after, t1 = target.cpu(), cpu_times(), time.monotonic_ns()
    usage = _usage_by_role(target, cpu_before, cpu_after)
    return {
        "phase": "probes alone",
        "probes": probes,
        "cpu_pct_by_role": {r: _pct_of_cpu(u, t1 - t0) for r, u in sorted(usage.items())},
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
    }


def flood_phase(
    target: Target,
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    clients: int,
) -> dict[str, Any]:
    """The 64 B mix flood for --probe-seconds, without health probes at all (clients 0), or while
    `clients` probe the health service back to back: the probe load and the flood start together
    and last as long. The worker's CPU per packet is from schedstat ns when the kernel keeps it."""
    seconds = args.probe_seconds
    app_before, gen_before = ns_counters(APP_NS), ns_counters(GEN_NS)
    cpu_before, stat_before, t0 = target.cpu(), cpu_times(), time.monotonic_ns()
    with contextlib.ExitStack() as stack:
        load = (
            stack.enter_context(ProbeLoad(tools["gen"], cpus[0], clients, seconds))
            if clients
            else None
        )
        flood = run_gen(
            tools["gen"],
            cpus[0],
            "flood",
            HEALTH_LOAD_PAYLOAD,
            MIX,
            seconds,
            args.flows,
            int(seconds * args.max_pps),
            rx_nap_us=args.rx_nap_us,
        )
        probes = load.result() if load else None
        cpu_after, stat_after, t1 = target.cpu(), cpu_times(), time.monotonic_ns()
    app_after, gen_after = ns_counters(APP_NS), ns_counters(GEN_NS)
    if not target.alive():
        raise BenchError(f"{target.name} died during the health load:\n{target.tail()}")
    kernel_app = delta(app_after, app_before)
    handled = kernel_app.get("udp_in_datagrams", 0)
    usage = _usage_by_role(target, cpu_before, cpu_after)
    worker = usage.get("worker", {"ticks": 0, "ns": -1})
    ticks_us = worker["ticks"] / CLK_TCK * 1e6 / handled if handled else None
    ns_us = worker["ns"] / 1e3 / handled if handled and worker["ns"] >= 0 else None
    overlap = None
    if probes is not None and flood["last_tx_ns"] > flood["first_tx_ns"]:
        start = max(probes["start_ns"], flood["first_tx_ns"])
        end = min(probes["end_ns"], flood["last_tx_ns"])
        overlap = 100.0 * max(0, end - start) / (flood["last_tx_ns"] - flood["first_tx_ns"])
    row = {
        "phase": f"{clients} clients probing" if clients else "no probes",
        "probe_clients": clients,
        "seconds": seconds,
        "payload": HEALTH_LOAD_PAYLOAD,
        "case": MIX,
        "offered_pps": flood["offered_pps"],
        "returned_pps": flood["returned_pps"],
        "sent": flood["sent"],
        "expected": flood["expected"],
        "valid": flood["valid"],
        "errors": flood["invalid"],
        "errors_by_kind": {k: v for k, v in flood["errors"].items() if v},
        "loss_pct": 100.0 * (1 - flood["valid"] / flood["expected"])
        if flood["expected"]
        else 100.0,
        "handled": handled,
        "kernel_app_ns": kernel_app,
        "kernel_gen_ns": delta(gen_after, gen_before),
        "kept_up": kept_up({"kernel_app_ns": kernel_app}),
        "worker_cpu_us_per_pkt": ns_us if ns_us is not None else ticks_us,
        "worker_cpu_us_per_pkt_ticks": ticks_us,
        "worker_cpu_us_per_pkt_schedstat": ns_us,
        "cpu_pct_by_role": {r: _pct_of_cpu(u, t1 - t0) for r, u in sorted(usage.items())},
        "cpu_by_role": usage,
        "wall_s": (t1 - t0) / 1e9,
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
        "probes": probes,
        "probe_overlap_pct": overlap,
        "flood": flood,
    }
    return row


def health_load(
    target: Target, tools: dict[str, str], cpus: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """--health-load: the probe load alone, then the 64 B mix flood without probes, then the same
    flood while the probe load runs; one applianced, one run."""
    clients, seconds = args.probe_clients, args.probe_seconds
    alone = probes_alone(target, tools["gen"], cpus, clients, seconds)
    p = alone["probes"]
    print(
        f"  health load  {clients} clients alone: {p['probes_per_s']:,.0f} probes/s, "
        f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, non-200 {p['other_status']}, "
        f"failed {p['failed']}",
        file=sys.stderr,
        flush=True,
    )
    phases = []
    for n in (0, clients):
        row = flood_phase(target, tools, cpus, args, n)
        phases.append(row)
        print(
            f"  health load  {HEALTH_LOAD_PAYLOAD} B mix, {row['phase']:18} offered "
            f"{row['offered_pps']:>11,.0f} returned {row['returned_pps']:>9,.0f} pps, worker "
            f"{fmt(row['worker_cpu_us_per_pkt'], 2)} us/pkt",
            file=sys.stderr,
            flush=True,
        )
    without, loaded = phases

    def ratio(key: str) -> float | None:
        a, b = without[key], loaded[key]
        return b / a if a and b is not None else None

    return {
        "clients": clients,
        "seconds": seconds,
        "url": f"http://{LOOPBACK}:{HEALTH_PORT}/ in the appliance's namespace",
        "client_cpu": cpus[0],
        "probes_alone": alone,
        "flood_without_probes": without,
        "flood_with_probes": loaded,
        "ratios_with_over_without": {
            k: ratio(k) for k in ("returned_pps", "offered_pps", "worker_cpu_us_per_pkt")
        },
    }
