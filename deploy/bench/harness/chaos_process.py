"""Chaos under load, the process scenarios: worker-kill and health-stop.

worker-kill: `kill -9` of a random worker every 2 s for 60 s while the mix flows at 50,000 pps;
each slot must be back in RUNNING within 1 s, never FATAL; the packets lost per kill are placed
in time by gen's timeline (each reply is filed under its send time).
health-stop: SIGSTOP of the health service (gunicorn's master and worker) for 10 s, then SIGCONT;
the data path must not notice (loss and rate in that window against the window before it, in the
same run) and the supervisor must keep running (it answers `status`, its uptime advances, its
workers' heartbeats stay fresh).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import time
from typing import Any

from harness.chaosbed import ChaosRun, Outcome, health, health_fetch, load_now, sleep_until_ns
from harness.env import APP_NS
from harness.paced import Timeline, summary
from harness.product import Poller, Sample, ctl_fetch, pids_with, wait_until

RECOVERY_LIMIT_MS = 1000.0


def _worker(data: Any, slot: int) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    for w in data.get("workers") or []:
        if isinstance(w, dict) and w.get("slot") == slot:
            return w
    return None


def _states(samples: list[Sample]) -> set[str]:
    return {
        str(w.get("state"))
        for s in samples
        if s.ok and isinstance(s.data, dict)
        for w in s.data.get("workers") or []
        if isinstance(w, dict)
    }


def recovery(samples: list[Sample], kill: dict[str, Any]) -> dict[str, Any]:
    """When the killed slot was seen RUNNING again with a new PID: `upper_ms` (the answer that
    first showed it, from the kill), `lower_ms` (the last question whose answer did not)."""
    lower = 0.0
    for s in samples:
        if s.t0_ns < kill["t_ns"] or not s.ok:
            continue
        w = _worker(s.data, kill["slot"])
        if w is None:
            continue
        if w.get("state") == "RUNNING" and w.get("pid") and w.get("pid") != kill["pid"]:
            return {
                "upper_ms": round((s.t1_ns - kill["t_ns"]) / 1e6, 1),
                "lower_ms": round(lower, 1),
                "new_pid": w.get("pid"),
            }
        lower = (s.t0_ns - kill["t_ns"]) / 1e6
    return {"upper_ms": None, "lower_ms": round(lower, 1), "new_pid": None}


def worker_kill(run: ChaosRun) -> Outcome:
    args = run.args
    out = Outcome("worker-kill")
    product = run.product("worker-kill")
    pre, every, post = 3.0, args.kill_every, 4.0
    planned = round(args.kill_seconds / every)
    seconds = pre + planned * every + post
    rng = random.Random(args.seed)
    ctl_poll = Poller(ctl_fetch(product.ctl, "status"), 0.02, seconds + 30)
    http_poll = Poller(health_fetch("/status"), 0.05, seconds + 30, netns=APP_NS)
    kills: list[dict[str, Any]] = []
    load = [load_now()]
    try:
        with run.paced(seconds, "worker-kill") as gen:
            t0 = time.monotonic_ns()
            ctl_poll.start()
            http_poll.start()
            for i in range(planned):
                sleep_until_ns(t0 + int((pre + i * every) * 1e9))
                slot = rng.randrange(args.workers)
                pids = pids_with(product.target, f"worker {slot}")
                if len(pids) != 1:
                    kills.append({"slot": slot, "skipped": f"worker {slot} pids {pids}"})
                    continue
                t = time.monotonic_ns()
                os.kill(pids[0], signal.SIGKILL)
                kills.append({"slot": slot, "pid": pids[0], "t_ns": t})
            result = gen.result()
    finally:
        ctl_samples, http_samples = ctl_poll.stop(), http_poll.stop()
    load.append(load_now())
    time.sleep(1.0)
    final = product.ctl.run("status")
    out.raw["kernel"] = product.kernel_delta()
    timeline = Timeline(result)
    done = [k for k in kills if "t_ns" in k]
    for i, k in enumerate(done):
        k["at_s"] = round(timeline.at(k["t_ns"]), 3)
        k["ctl"] = recovery(ctl_samples, k)
        k["http"] = recovery(http_samples, k)
        ups = [r["upper_ms"] for r in (k["ctl"], k["http"]) if r["upper_ms"] is not None]
        k["recovered_ms"] = min(ups) if ups else None
        end = done[i + 1]["t_ns"] if i + 1 < len(done) else k["t_ns"] + int(every * 1e9)
        window = timeline.window(k["t_ns"] - 500_000_000, end - 500_000_000)
        k["lost"], k["window"] = window.lost, window.as_dict()
    first = done[0]["t_ns"] if done else t0 + int(pre * 1e9)
    baseline = timeline.window(timeline.start_ns + 500_000_000, first - 500_000_000)
    states = _states(ctl_samples) | _states(http_samples) | _states_of(final.data)
    recovered = [k["recovered_ms"] for k in done if k["recovered_ms"] is not None]
    lost = [k["lost"] for k in done]
    total_lost = result["expected"] - result["valid"]
    final_states = [w.get("state") for w in (final.data or {}).get("workers", [])]
    out.raw.update(
        kills=kills,
        gen=summary(result),
        baseline=baseline.as_dict(),
        states_seen=sorted(states),
        final_status=final.data,
        polls={"ctl": len(ctl_samples), "http": len(http_samples)},
        ctl_poll_ms=_median_ms(ctl_samples),
        http_poll_ms=_median_ms(http_samples),
        load_average=load,
    )
    slow = [k for k in done if k["recovered_ms"] is None or k["recovered_ms"] > RECOVERY_LIMIT_MS]
    out.lines += [
        f"{len(done)} kills (of {planned} planned; {len(kills) - len(done)} skipped) of a random "
        f"worker every {every:g} s at {args.rate:,.0f} pps, {args.workers} workers; load average "
        f"{load[0]:.2f} -> {load[-1]:.2f}",
        "kill -> slot RUNNING with a new pid, upper bound, ms (appliancectl --json status polled "
        f"back to back, median {out.raw['ctl_poll_ms']} ms a call; GET /status every 50 ms, "
        f"median {out.raw['http_poll_ms']} ms): " + _spread(recovered),
        "  per kill (slot: ms): "
        + ", ".join(f"{k['slot']}: {_f(k['recovered_ms'])}" for k in done),
        f"replies lost per kill (window from 0.5 s before the kill to 0.5 s before the next): "
        f"total {sum(lost):,} / {len(done)} kills = {sum(lost) / max(len(done), 1):,.1f} per kill; "
        + _spread(lost),
        "  per kill: " + ", ".join(str(x) for x in lost),
        f"baseline before the first kill: {baseline.lost} lost of {baseline.expected:,}; whole "
        f"run: {total_lost:,} lost of {result['expected']:,}, {result['invalid']} invalid, gen "
        f"stalls {out.raw['gen']['stalls']}; appliance namespace RcvbufErrors "
        f"{out.raw['kernel'].get('udp_rcvbuf_errors', 0):,}",
        f"worker states seen: {', '.join(sorted(states))}; at the end: {final_states}",
    ]
    out.verdict(
        "each slot back in RUNNING within 1 s of its kill",
        bool(done) and not slow,
        f"slowest {_f(max(recovered) if recovered else None)} ms; {len(slow)} over 1 s or unseen",
    )
    out.verdict(
        "never FATAL",
        "FATAL" not in states and final.code == 0,
        f"states seen {sorted(states)}; final `status` exit {final.code}",
    )
    out.verdict(
        "0 validation errors",
        result["invalid"] == 0,
        f"{result['invalid']} invalid replies",
    )
    out.raw["exit"] = run.finish(product)
    return out


def _states_of(data: Any) -> set[str]:
    if not isinstance(data, dict):
        return set()
    return {str(w.get("state")) for w in data.get("workers") or [] if isinstance(w, dict)}


def _median_ms(samples: list[Sample]) -> float | None:
    took = [(s.t1_ns - s.t0_ns) / 1e6 for s in samples]
    return round(statistics.median(took), 1) if took else None


def _spread(values: list[float] | list[int]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"min {_f(ordered[0])}, median {_f(statistics.median(ordered))}, p90 {_f(p90)}, "
        f"max {_f(ordered[-1])}"
    )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


# ---------------------------------------------------------------- health-stop


def health_stop(run: ChaosRun) -> Outcome:
    args = run.args
    out = Outcome("health-stop")
    product = run.product("health-stop")
    before, stopped_s, after = 10.0, args.stop_seconds, 10.0
    seconds = 1.0 + before + stopped_s + after
    ctl_poll = Poller(ctl_fetch(product.ctl, "status"), 0.5, seconds + 30)
    http_poll = Poller(health_fetch("/health"), 0.25, seconds + 30, netns=APP_NS)
    stopped: list[int] = []

    def resume() -> None:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    run.bed.cleanups.append(resume)  # a failure in between must not leave them stopped
    load = [load_now()]
    try:
        with run.paced(seconds, "health-stop") as gen:
            t0 = time.monotonic_ns()
            ctl_poll.start()
            http_poll.start()
            sleep_until_ns(t0 + int((1.0 + before) * 1e9))
            pids = pids_with(product.target, "health")
            t_stop = time.monotonic_ns()
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            sleep_until_ns(t_stop + int(stopped_s * 1e9))
            t_cont = time.monotonic_ns()
            resume()
            result = gen.result()
    finally:
        ctl_samples, http_samples = ctl_poll.stop(), http_poll.stop()
    load.append(load_now())
    t_back = _first_200_after(http_samples, t_cont)
    if t_back is None and wait_until(lambda: health()[0] == 200, 15.0, 0.1):
        t_back = time.monotonic_ns()
    final = product.ctl.run("status")
    out.raw["kernel"] = product.kernel_delta()
    timeline = Timeline(result)
    base = timeline.window(t0 + 1_000_000_000, t_stop)
    during = timeline.window(t_stop, t_cont)
    rest = timeline.window(t_cont, t0 + int(seconds * 1e9))
    in_stop = [s for s in ctl_samples if t_stop <= s.t0_ns and s.t1_ns <= t_cont]
    answered = [s for s in in_stop if s.ok and isinstance(s.data, dict)]
    uptimes = [float((s.data.get("supervisor") or {}).get("uptime_s") or 0) for s in answered]
    ages = [
        float(w.get("heartbeat_age_s") or 0)
        for s in answered
        for w in s.data.get("workers") or []
        if isinstance(w, dict)
    ]
    sup_beats = [b for s in answered if (b := _supervisor_heartbeat(s.data)) is not None]
    probes_during = [s for s in http_samples if t_stop <= s.t0_ns < t_cont]
    health_after = (final.data or {}).get("health") if isinstance(final.data, dict) else None
    rate_ratio = during.valid_pps / base.valid_pps if base.valid_pps else 0.0
    out.raw.update(
        health_pids=pids,
        windows={"before": base.as_dict(), "stopped": during.as_dict(), "after": rest.as_dict()},
        gen=summary(result),
        supervisor_uptimes_during_stop=uptimes,
        worker_heartbeat_ages_during_stop=ages,
        supervisor_heartbeat_ages_during_stop=sup_beats,
        health_polls_during_stop=[(s.ok, s.status, s.error[:80]) for s in probes_during],
        health_back_ms=None if t_back is None else round((t_back - t_cont) / 1e6, 1),
        final_status=final.data,
        load_average=load,
    )
    out.lines += [
        f"SIGSTOP to the health service {pids} for {stopped_s:g} s, mix at {args.rate:,.0f} pps, "
        f"{args.workers} workers; load average {load[0]:.2f} -> {load[-1]:.2f}",
        "data path (valid replies per second / lost / expected): "
        + "; ".join(
            f"{name} {w.valid_pps:,.0f}/s, {w.lost} / {w.expected:,}"
            for name, w in (("before", base), ("stopped", during), ("after", rest))
        )
        + f" (stopped / before = {rate_ratio:.4f})",
        f"supervisor during the stop: {len(answered)}/{len(in_stop)} `status` calls answered, "
        f"uptime {_range(uptimes)} s"
        + (f", its heartbeat age {_range(sup_beats)} s" if sup_beats else "")
        + f"; worker heartbeat ages {_range(ages)} s",
        f"health endpoint during the stop: {sum(1 for s in probes_during if s.ok)} of "
        f"{len(probes_during)} GETs answered; 200 again "
        + ("never (15 s)" if t_back is None else f"{(t_back - t_cont) / 1e6:,.0f} ms after SIGCONT")
        + f"; after: {health_after}",
        f"gen health probes (10/s): {result.get('probes')}",
    ]
    out.verdict(
        "data path unaffected while the health service is stopped",
        during.lost <= base.lost and abs(rate_ratio - 1) < 0.01 and result["invalid"] == 0,
        f"lost {during.lost} (before: {base.lost}), rate ratio {rate_ratio:.4f}, "
        f"{result['invalid']} invalid",
    )
    out.verdict(
        "the supervisor keeps running (answers status, uptime advances, workers beat)",
        bool(answered)
        and len(answered) == len(in_stop)
        and uptimes == sorted(uptimes)
        and (not ages or max(ages) < 2.0),
        f"{len(answered)}/{len(in_stop)} answered, uptime {_range(uptimes)} s, worker "
        f"heartbeat ages {_range(ages)} s",
    )
    out.verdict(
        "health answers 200 again after SIGCONT",
        t_back is not None,
        "never" if t_back is None else f"{(t_back - t_cont) / 1e6:,.0f} ms after SIGCONT",
    )
    out.raw["exit"] = run.finish(product)
    return out


def _supervisor_heartbeat(data: Any) -> float | None:
    sup = data.get("supervisor") if isinstance(data, dict) else None
    if isinstance(sup, dict):
        for key in ("heartbeat_age_s", "heartbeat_age"):
            if isinstance(sup.get(key), int | float):
                return float(sup[key])
    return None


def _first_200_after(samples: list[Sample], t_ns: int) -> int | None:
    for s in samples:
        if s.t0_ns >= t_ns and s.ok and s.status == 200:
            return s.t1_ns
    return None


def _range(values: list[float]) -> str:
    return f"{min(values):g}-{max(values):g}" if values else "-"
