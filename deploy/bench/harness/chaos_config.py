"""Chaos under load, the runtime-directory and config scenarios: disk-full and reload-storm.

disk-full: the runtime directory lives on a small tmpfs; while the mix flows it is filled up, then
the operator reloads, reads the log (`tail`), restarts a worker and sends SIGHUP; the data path must
keep forwarding, the daemon must answer with sentences (no traceback) and must not crash. Then the
space is freed and a reload must work again.
reload-storm: 100 SIGHUPs in 10 s, alternating valid configs (a renamed rule, one or two harmless
rules added) and invalid ones (a syntax error, an unknown key, a port out of range, an unknown
action); 0 loss, and at the end the last valid config applied in every worker: the generations
agree, the rule names in `stats` are its names, and hand-made packets show its harmless drop rule
dropping in every worker while the previous config's rule and the refused ones' do not.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from harness.chaosbed import ChaosRun, Outcome, Product, health, load_now, sleep_until_ns
from harness.craft import per_worker_rule, probe_ports
from harness.paced import Timeline, summary
from harness.product import CtlResult, config_text, drop_rule, wait_until, write_config

FILL_CHUNK = 64 * 1024
STORM_PORT = 3100  # + i: harmless rules (no packet of the mix goes to 3100-3299)
RENAMED = "drop-me"  # the demo rule each valid config renames (when the shipped config has it)


def fill_up(directory: Path) -> dict[str, Any]:
    """Write a file into `directory` until the file system says it is full."""
    written, error = 0, ""
    with (directory / "filler").open("wb", buffering=0) as f:
        chunk = b"\0" * FILL_CHUNK
        while written < 1 << 30:  # bounded: the tmpfs is a few MiB
            try:
                written += f.write(chunk) or 0
            except OSError as e:
                error = f"{errno.errorcode.get(e.errno or 0, e.errno)}: {e.strerror}"
                break
        # the last partial page, byte by byte up to a page
        for _ in range(4096):
            try:
                if not f.write(b"\0"):
                    break
                written += 1
            except OSError:
                break
    vfs = os.statvfs(directory)
    return {"bytes_written": written, "error": error, "free_bytes": vfs.f_bavail * vfs.f_frsize}


def _slot_running(run_status: CtlResult, slot: int, not_pid: int | None) -> bool:
    data = run_status.data if isinstance(run_status.data, dict) else {}
    for w in data.get("workers") or []:
        if w.get("slot") == slot:
            return bool(w.get("state") == "RUNNING" and w.get("pid") and w.get("pid") != not_pid)
    return False


def _pid_of(result: CtlResult, slot: int) -> int | None:
    data = result.data if isinstance(result.data, dict) else {}
    for w in data.get("workers") or []:
        if w.get("slot") == slot:
            return int(w.get("pid") or 0) or None
    return None


# The operator's actions once the runtime dir is full, in two variants, each on a fresh daemon:
# through the control socket (a reload last: it writes to the runtime dir), and by signal.
VARIANTS: dict[str, list[tuple[str, ...]]] = {
    "appliancectl": [
        ("tail", "20"),
        ("restart", "0"),
        ("status",),
        ("reload",),
        ("status",),
    ],
    "SIGHUP": [("SIGHUP",), ("status",)],
}


def disk_full(run: ChaosRun) -> Outcome:
    out = Outcome("disk-full")
    for variant, actions in VARIANTS.items():
        _disk_full_variant(run, out, variant, actions)
    return out


def _act(product: Product, action: tuple[str, ...], t0: int) -> dict[str, Any]:
    """One operator action; what it said, and whether the supervisor was alive 1 s later."""
    if action[0] == "SIGHUP":
        t = time.monotonic_ns()
        os.kill(product.target.pid, signal.SIGHUP)
        said: dict[str, Any] = {"command": "kill -HUP <supervisor>", "exit": None, "stdout": ""}
        said.update(stderr="", ms=0.0, at_s=round((t - t0) / 1e9, 2))
    else:
        old_pid = _pid_of(product.ctl.run("status"), 0) if action[0] == "restart" else None
        result = product.ctl.run(*action, as_json=False)
        said = {"at_s": round((result.t0_ns - t0) / 1e9, 2), **result.as_dict()}
        if action[0] == "restart" and result.code == 0:
            t = time.monotonic_ns()
            back = wait_until(
                lambda: _slot_running(product.ctl.run("status"), 0, old_pid), 10.0, step=0.05
            )
            said["running_again_ms"] = round((time.monotonic_ns() - t) / 1e6, 1) if back else None
    time.sleep(1.0)
    said["supervisor_alive_1s_later"] = product.target.alive()
    return said


def _disk_full_variant(
    run: ChaosRun, out: Outcome, variant: str, actions: list[tuple[str, ...]]
) -> None:
    args = run.args
    runtime = run.bed.work / f"tmpfs-runtime-{variant.lower()}"
    run.bed.mount_tmpfs(runtime, args.tmpfs_size)
    product = run.product(f"disk-full-{variant.lower()}", runtime=runtime)
    supervisor = product.target.pid
    before_s, full_s, after_s = 5.0, 15.0, 5.0
    seconds = before_s + full_s + after_s
    log_mark = product.target.log.stat().st_size
    steps: list[dict[str, Any]] = []
    load = [load_now()]
    with run.paced(seconds, f"disk-full-{variant.lower()}") as gen:
        t0 = time.monotonic_ns()
        sleep_until_ns(t0 + int(before_s * 1e9))
        t_fill = time.monotonic_ns()
        fill = fill_up(runtime)
        listing = {p.name: p.stat().st_size for p in runtime.iterdir()}
        for action in actions:
            steps.append(_act(product, action, t0))
        code, body = _health_or_error()
        alive_full = product.target.alive()
        sleep_until_ns(t_fill + int(full_s * 1e9))
        t_free = time.monotonic_ns()
        (runtime / "filler").unlink()
        if product.target.alive():
            steps.append({"after freeing": True, **_act(product, ("reload",), t0)})
        result = gen.result()
    load.append(load_now())
    log_text = product.target.log.read_bytes()[log_mark:].decode(errors="replace")
    timeline = Timeline(result)
    base = timeline.window(t0 + 1_000_000_000, t_fill)
    full = timeline.window(t_fill, t_free)
    rest = timeline.window(t_free, t0 + int(seconds * 1e9))
    dry = [
        i
        for i, t in enumerate(range(t_fill, t_free - 500_000_000, 10**9))
        if not timeline.window(t, t + 1_000_000_000).valid
    ]
    final = product.ctl.run("status")
    final_states = [w.get("state") for w in (final.data or {}).get("workers", [])]
    tracebacks = [s["command"] for s in steps if "Traceback" in s["stdout"] + s["stderr"]]
    notable = [
        line
        for line in log_text.splitlines()
        if re.search(r"ERROR|WARNING|Error|Traceback|refused", line)
    ]
    out.raw[variant] = {
        "tmpfs_size": args.tmpfs_size,
        "fill": fill,
        "runtime_listing": listing,
        "steps": steps,
        "health_while_full": {"status": code, "body": body},
        "windows": {"before": base.as_dict(), "full": full.as_dict(), "after": rest.as_dict()},
        "dry_seconds": dry,
        "gen": summary(result),
        "daemon_log": log_text.splitlines()[-80:],
        "final_status": final.data,
        "kernel": product.kernel_delta(),
        "load_average": load,
    }
    out.lines += [
        f"[{variant}] runtime dir on a {args.tmpfs_size} tmpfs, filled with "
        f"{fill['bytes_written']:,} bytes ({fill['error'] or 'no error'}); its files: {listing}",
        "  data path (valid replies/s, lost / expected): "
        + "; ".join(
            f"{name} {w.valid_pps:,.0f}/s, {w.lost:,} / {w.expected:,}"
            for name, w in (("before", base), ("full", full), ("after freeing", rest))
        )
        + f"; seconds without a reply while full: {len(dry)}",
    ]
    for s in steps:
        said = s["stdout"] + ((" | stderr: " + s["stderr"]) if s["stderr"] else "")
        extra = (
            f", worker RUNNING again in {s['running_again_ms']} ms"
            if "running_again_ms" in s
            else ""
        )
        alive = "alive" if s["supervisor_alive_1s_later"] else "GONE"
        out.lines.append(
            f"  {'(space freed) ' if s.get('after freeing') else ''}`{s['command']}` exit "
            f"{s['exit']}{extra}, supervisor {alive} 1 s later: {_short(said) or '(nothing)'}"
        )
    out.lines += [
        f"  GET /health while full: {code} {_short(str(body), 200)}",
        f"  daemon log from the fill on: {_short(' / '.join(notable), 600) or '(nothing notable)'}",
        f"  workers at the end: {final_states}; load average {load[0]:.2f} -> {load[-1]:.2f}",
    ]
    out.verdict(
        f"[{variant}] the data path keeps forwarding while the runtime dir is full",
        not dry and full.valid_pps >= 0.99 * base.valid_pps,
        f"{full.valid_pps:,.0f} valid/s while full against {base.valid_pps:,.0f} before; "
        f"{full.lost:,} lost; {len(dry)} seconds without replies",
    )
    out.verdict(
        f"[{variant}] the daemon does not crash",
        alive_full and product.target.alive() and final.code == 0,
        f"supervisor pid {supervisor} {'alive' if product.target.alive() else 'exited'} at the "
        f"end (exit {product.target.proc.returncode}); final status exit {final.code}, workers "
        f"{final_states}",
    )
    out.verdict(
        f"[{variant}] errors reported in sentences (no traceback)",
        not tracebacks and "Traceback" not in log_text,
        f"tracebacks in {tracebacks or 'no command'}; "
        f"{'a traceback' if 'Traceback' in log_text else 'none'} in the daemon's log",
    )
    out.raw[variant]["exit"] = run.finish(product)


def _health_or_error() -> tuple[int, Any]:
    try:
        return health("/health")
    except OSError as error:
        return 0, repr(error)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- reload-storm


def valid_extra(i: int) -> str:
    extra = drop_rule(f"storm-{i}", STORM_PORT + i)
    if i % 4 == 0:
        extra += drop_rule(f"storm-{i}-b", STORM_PORT + 100 + i)
    return extra


INVALID = (
    ("syntax error", '\n[[policy.rules]\nname = "broken\n'),
    (
        "unknown key",
        '\n[[policy.rules]]\nname = "x"\naction = "drop"\ncolour = "blue"\n'
        'match = { protocol = "udp", port = 3999 }\n',
    ),
    (
        "port out of range",
        '\n[[policy.rules]]\nname = "x"\naction = "drop"\n'
        'match = { protocol = "udp", port = 70000 }\n',
    ),
    (
        "unknown action",
        '\n[[policy.rules]]\nname = "x"\naction = "explode"\n'
        'match = { protocol = "udp", port = 3999 }\n',
    ),
)


def storm_config(runtime: Path, i: int) -> tuple[str, str]:
    """(kind, text) of the config written before SIGHUP number i: valid for even i (the demo's
    "drop-me" renamed "drop-me-i", harmless rules added), invalid for odd i (the rules of i plus a
    fault; were it accepted, its own storm-i rule would show)."""
    text = config_text(runtime, valid_extra(i)).replace(
        f'name = "{RENAMED}"', f'name = "{RENAMED}-{i}"'
    )
    if i % 2 == 0:
        return "valid", text
    kind, fault = INVALID[(i // 2) % len(INVALID)]
    return kind, text + fault


def _generations(data: Any) -> tuple[int | None, list[int | None]]:
    if not isinstance(data, dict):
        return None, []
    sup = data.get("supervisor") or {}
    return sup.get("generation"), [w.get("generation") for w in data.get("workers") or []]


def _refused(hstatus: tuple[int, Any]) -> int | None:
    body = hstatus[1]
    if isinstance(body, dict):
        value = (body.get("supervisor") or {}).get("reloads_refused")
        return int(value) if isinstance(value, int) else None
    return None


def reload_storm(run: ChaosRun) -> Outcome:
    args = run.args
    out = Outcome("reload-storm")
    product = run.product("reload-storm")
    n, span = args.reloads, args.storm_seconds
    seconds = 3.0 + span + 4.0
    gen0, _ = _generations(product.ctl.run("status").data)
    refused0 = _refused(health("/status"))
    sent: list[dict[str, Any]] = []
    load = [load_now()]
    with run.paced(seconds, "reload-storm") as gen:
        t0 = time.monotonic_ns()
        for i in range(n):
            sleep_until_ns(t0 + int((3.0 + i * span / n) * 1e9))
            kind, text = storm_config(product.runtime, i)
            write_config(product.config, text, check=kind == "valid")
            os.kill(product.target.pid, signal.SIGHUP)
            sent.append({"i": i, "kind": kind, "t_ns": time.monotonic_ns()})
        t_end = time.monotonic_ns()
        result = gen.result()
    load.append(load_now())
    time.sleep(1.0)
    last = max(s["i"] for s in sent if s["kind"] == "valid")
    previous = max(s["i"] for s in sent if s["kind"] == "valid" and s["i"] < last)
    last_invalid = max(s["i"] for s in sent if s["kind"] != "valid")
    status = product.ctl.run("status")
    stats_before = product.ctl.run("stats")
    hstatus = health("/status")
    ports = [STORM_PORT + last, STORM_PORT + previous, STORM_PORT + last_invalid]
    probes = probe_ports(ports)
    stats_after = product.ctl.run("stats")
    tail = product.ctl.run("tail", "400", as_json=False)
    sup_gen, worker_gens = _generations(status.data)
    applied = None if sup_gen is None or gen0 is None else sup_gen - gen0
    refused1 = _refused(hstatus)
    refused = None if refused1 is None or refused0 is None else refused1 - refused0
    refused_lines = sum("refused" in line for line in tail.stdout.splitlines())
    valid_sent = sum(s["kind"] == "valid" for s in sent)
    rule = f"storm-{last}"
    drops = [
        a - b
        for a, b in zip(
            per_worker_rule(stats_after.data, rule),
            per_worker_rule(stats_before.data, rule),
            strict=False,
        )
    ]
    total = (stats_after.data or {}).get("total") or {}
    names = sorted((total.get("dropped_by_rule") or {}).keys())
    last_reload = ((status.data or {}).get("supervisor") or {}).get("last_reload")
    timeline = Timeline(result)
    storm = timeline.window(t0 + 3_000_000_000, t_end + 500_000_000)
    out.raw.update(
        sent=[{k: v for k, v in s.items() if k != "t_ns"} for s in sent],
        generation_before=gen0,
        generation_after=sup_gen,
        worker_generations=worker_gens,
        applied=applied,
        refused=refused,
        refused_lines_in_tail=refused_lines,
        last_reload=last_reload,
        probes=probes,
        drops_per_worker=drops,
        rule_names_in_stats=names,
        storm_window=storm.as_dict(),
        gen=summary(result),
        health_status=hstatus[1] if isinstance(hstatus[1], dict) else str(hstatus[1])[:300],
        kernel=product.kernel_delta(),
        load_average=load,
    )
    renamed = f"{RENAMED}-{last}" in names or f'name = "{RENAMED}"' not in config_text(Path())
    ok_probe = (
        probes[ports[0]]["replies"] == 0
        and probes[ports[1]]["replies"] == probes[ports[1]]["sent"]
        and probes[ports[2]]["replies"] == probes[ports[2]]["sent"]
    )
    lost = result["expected"] - result["valid"]
    out.lines += [
        f"{n} SIGHUPs in {span:g} s ({valid_sent} valid configs, {n - valid_sent} invalid: "
        + ", ".join(f"{k}" for k, _ in INVALID)
        + f") at {args.rate:,.0f} pps, {args.workers} workers; load average {load[0]:.2f} -> "
        f"{load[-1]:.2f}",
        f"data path: {lost:,} lost of {result['expected']:,} ({storm.lost} during the storm), "
        f"{result['invalid']} invalid",
        f"generation {gen0} -> {sup_gen} ({applied} applied of {valid_sent} valid); workers at "
        f"{worker_gens}; refused {refused} (health /status reloads_refused), "
        f"{refused_lines} 'refused' lines in `tail 400`; last reload: {last_reload}",
        f"last valid config #{last}: rule names in `stats`: {names}",
        f"hand-made packets ({probes[ports[0]]['sent']} inner flows each): port {ports[0]} "
        f"(storm-{last}, last valid) {probes[ports[0]]['replies']} replies, dropped per worker "
        f"{drops}; port {ports[1]} (storm-{previous}, the valid one before) "
        f"{probes[ports[1]]['replies']} replies; port {ports[2]} (#{last_invalid}, refused) "
        f"{probes[ports[2]]['replies']} replies",
    ]
    out.verdict("0 loss during the storm", lost == 0 and result["invalid"] == 0, f"{lost} lost")
    every = bool(drops) and all(d > 0 for d in drops)
    out.verdict(
        "the last valid config is applied in every worker",
        ok_probe
        and every
        and bool(worker_gens)
        and all(g == sup_gen for g in worker_gens)
        and renamed,
        f"workers {worker_gens} vs supervisor {sup_gen}; storm-{last} dropped in workers {drops}; "
        f"names {'include' if renamed else 'lack'} {RENAMED}-{last}",
    )
    out.verdict(
        "every SIGHUP handled: each valid one applied, each invalid one refused and counted",
        applied == valid_sent and refused == n - valid_sent,
        f"applied {applied}/{valid_sent}, refused {refused}/{n - valid_sent}",
    )
    out.raw["exit"] = run.finish(product)
    return out
