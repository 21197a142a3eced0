"""The printed report: the headline, every case, the kernel counters, the health probes."""

from __future__ import annotations

from typing import Any

from harness.env import (
    APP_IP,
    BASELINE,
    CLK_TCK,
    FIREWALL,
    HEALTH_LOAD_PAYLOAD,
    HEALTH_PORT,
    LATENCY_RATE,
    LOOPBACK,
    MIX,
    PRODUCT,
    PRODUCT_RING,
)
from harness.firewall_report import firewall_section
from harness.tables import TAIL_COLS, class_cells, fmt, kept_up, tail_cells
from harness.tables import ratio as _ratio
from harness.tables import table as _table

# ---------------------------------------------------------------- report


MODE_TEXT = {
    "tree": "applianced as an operator runs it (--product-mode tree): the supervisor, 1 worker and "
    "the health service (gunicorn on port 80, the default config with --workers 1), probed with "
    "HTTP GET / at {probe_rate:g}/s from the generator's namespace during every run; its CPU is "
    "the whole process tree's",
    "worker": "applianced's data path (--product-mode worker): --workers 1, [health] enabled = "
    "false; its CPU is the worker process's alone (the supervisor's is listed apart)",
}


def report(
    facts: dict[str, Any],
    rows: list[dict[str, Any]],
    extra: dict[str, Any],
    health: dict[str, Any] | None = None,
) -> str:
    base = {(r["payload"], r["case"]): r for r in rows if r["target"] == BASELINE}
    product = {(r["payload"], r["case"]): r for r in rows if r["target"] == PRODUCT}
    ring = {(r["payload"], r["case"]): r for r in rows if r["target"] == PRODUCT_RING}
    out = [
        f"# gwlb-appliance benchmark  {facts['date']}  kernel {facts['kernel']}  "
        f"CPU {facts['cpu_model']} x{facts['cores']}",
        f"# {facts['gcc']}; Python {facts['python']}; applianced {facts['applianced']}; "
        f"product code {facts['product']}",
        "# "
        + MODE_TEXT[facts["product_mode"]].format(probe_rate=facts["probe_rate"])
        + ("; flow table on (policy.track_flows)" if facts.get("track_flows") else ""),
        f"# flood {facts['seconds']:g} s/case, {facts['flows']} flows (outer source ports), "
        f"sendmmsg batch 64; latency {facts['latency_seconds']:g} s at {LATENCY_RATE:,} pps; gen "
        f"on CPU {facts['cpus'][0]}, the target's processes on CPU {facts['cpus'][1]}",
        f"# in a flood, gen's receiver naps {facts['rx_nap_us']} us after a partial batch "
        + (
            "(it is never asleep on its socket, so a reply wakes no one on the target's CPU)"
            if facts["rx_nap_us"]
            else "(0: it sleeps on its socket; each wakeup is charged to the target's CPU)"
        ),
    ]
    for cpu, n in facts.get("noise", {}).items():
        out.append(
            f"# {cpu} before the run: {n['busy_pct_before']:.0f}% busy; 100 us sleeps wake "
            f"late by p50 {n['late_p50_ns'] / 1e3:.0f} us, p99 {n['late_p99_ns'] / 1e3:.0f} "
            f"us, max {n['late_max_ns'] / 1e3:,.0f} us"
        )
    out += [
        "# p99 at 10k pps is mostly this machine's scheduling noise (above): compare p50s, and "
        "repeat runs before reading a p99 ratio.",
        "",
    ]
    if any(r["case"] == MIX for r in rows):
        out += mix_headline(facts, rows, base, product, ring)
    out += firewall_section(facts, rows)

    # ---- every case
    out += ["", "All cases (the mix, then pass-through and rewrite alone):"]
    if any(r["case"] == FIREWALL for r in rows):
        out[-1] = "All cases (`vs C` of the firewall case on conn/s, the C reflector passing all):"
    cols = [
        "target",
        "case",
        "offered pps",
        "returned pps",
        "vs C",
        "loss %",
        "errors",
        "CPU us/pkt",
        "user",
        "kernel",
        "p50 us",
        "p99 us",
        "p50 vs C",
        "p99 vs C",
    ]
    table = []
    for r in rows:
        b = base.get((r["payload"], r["case"]))
        table.append(
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                fmt(r["offered_pps"]),
                fmt(r["returned_pps"]),
                _ratio(r, b, "conn_per_s" if r["case"] == FIREWALL else "returned_pps"),
                fmt(r["loss_pct"], 1),
                str(r["errors"]),
                fmt(r["cpu_us_per_pkt"], 2),
                fmt(r["cpu_user_us_per_pkt"], 2),
                fmt(r["cpu_kernel_us_per_pkt"], 2),
                fmt(r["p50_us"], 1),
                fmt(r["p99_us"], 1),
                _ratio(r, b, "p50_us"),
                _ratio(r, b, "p99_us"),
            ]
        )
    out += _table(cols, table)
    out.append(
        "loss % = expected replies missing in the flood (which overloads the target on purpose: "
        "see its receive-buffer overflows below)."
    )

    # ---- the mix by class
    mix_rows = [r for r in rows if r["case"] == MIX]
    if mix_rows:
        classes = list(dict.fromkeys(c for r in mix_rows for c in r["flood"]["classes"]))
        out += [
            "",
            "The mix by class: valid replies / replies expected (drop: packets sent, no reply "
            "due), in the flood and at 10k pps:",
        ]
        out += _table(["target", "run", *classes], class_cells(mix_rows, classes))

    # ---- CPU by process
    prod_rows = [r for r in rows if r["target"] == PRODUCT]
    if prod_rows:
        roles = sorted({k for r in prod_rows for k in r["cpu_by_role_us_per_pkt"]})
        out += ["", "applianced's CPU us/pkt by process (user+kernel, per packet received):"]
        table = [
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                *(fmt(r["cpu_by_role_us_per_pkt"].get(k), 2) for k in roles),
                fmt(sum(v for v in r["cpu_by_role_us_per_pkt"].values() if v is not None), 2),
                fmt(r["cpu_tree_sched_us_per_pkt"], 2),
            ]
            for r in prod_rows
        ]
        out += _table(["target", "case", *roles, "tree", "tree (schedstat ns)"], table)

    # ---- health probes
    probed = [r for r in rows if r["flood"].get("probes")]
    if probed:
        out += [
            "",
            f"Health probes (HTTP GET / to {APP_IP}:{HEALTH_PORT}, a new connection each, "
            f"{facts['probe_rate']:g}/s) during each flood and latency run:",
        ]
        table = []
        for r in probed:
            for run in ("flood", "latency"):
                p = r[run]["probes"]
                table.append(
                    [
                        r["target"],
                        f"{r['payload']} B {r['case']} {run}",
                        str(p["sent"]),
                        str(p["ok_200"]),
                        str(p["other_status"]),
                        str(p["failed"]),
                        fmt(p["p50_ms"], 2),
                        fmt(p["max_ms"], 1),
                    ]
                )
        out += _table(
            ["target", "run", "probes", "200", "other status", "failed", "p50 ms", "max ms"],
            table,
        )

    if health:
        out += health_load_report(health, facts["cpus"])

    # ---- kernel counters
    out += [
        "",
        "Kernel counters during each flood (deltas): UDP datagrams delivered to the target and "
        "its receive-buffer overflows (app ns), gen's receiver overflows (gen ns), veth drops, "
        "gen partial sendmmsg and send errors; the target CPU's busy share:",
    ]
    diag = []
    for r in rows:
        a, g, f = r["kernel_app_ns"], r["kernel_gen_ns"], r["flood"]
        busy = 100 - r["target_cpu"]["idle"]
        diag.append(
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                fmt(a.get("udp_in_datagrams")),
                str(a.get("udp_rcvbuf_errors")),
                str(g.get("udp_rcvbuf_errors")),
                str(sum(d.get(k, 0) for d in (a, g) for k in ("dev_rx_drop", "dev_tx_drop"))),
                str(f["partial_sends"]),
                str(sum(f["send_errors"].values())),
                f"{busy:.0f}",
                fmt(r["latency"]["wake_late_p99_ns"] / 1e3, 0),
            ]
        )
    out += _table(
        [
            "target",
            "case",
            "app delivered",
            "app rcvbuf ovf",
            "gen rcvbuf ovf",
            "veth drops",
            "partial sends",
            "send errors",
            "target CPU busy %",
            "latency-run sender wake late p99 us",
        ],
        diag,
    )
    out.append("")
    for name, pids in facts.get("processes", {}).items():
        out.append(f"{name} processes: {'; '.join(pids)}")
    for name, info in extra.items():
        out.append(f"{name}: {info}")
    bad = [r for r in rows if r["errors"] or r["silent_templates"]]
    if bad:
        out += ["", "VALIDATION ERRORS by kind, and templates never answered at 10k pps by class:"]
        for r in bad:
            silent = {
                c: k["silent_templates"]
                for c, k in r["latency"]["classes"].items()
                if k["silent_templates"]
            }
            name = f"{r['target']} {r['payload']} B {r['case']}"
            out.append(f"  {name}: {r['errors_by_kind']}; silent {silent}")
    samples = [s for r in rows for s in r["flood"]["error_samples"] + r["latency"]["error_samples"]]
    if samples:
        out += ["", "First invalid replies (hex, up to 256 bytes of the Geneve payload):"]
        out += [f"  {s}" for s in samples[:6]]
    return "\n".join(out)


def mix_headline(
    facts: dict[str, Any],
    rows: list[dict[str, Any]],
    base: dict[tuple[int, str], dict[str, Any]],
    product: dict[tuple[int, str], dict[str, Any]],
    ring: dict[tuple[int, str], dict[str, Any]],
) -> list[str]:
    """What the mix holds, the headline table and the generator's ceiling."""
    mix = facts["mix"]
    out = [
        f"The mix, per {mix['size']} packets (`gen --case mix`; each flow cycles through "
        f"{mix['size']} templates sent interleaved, each its own inner flow and flow cookie):",
        *(f"  {line}" for line in mix["lines"]),
        f"  = {mix['answered']} replies expected per {mix['size']} packets. Every reply is checked "
        "against its template: pass = byte-identical Geneve and inner packet; rewrite = the "
        "rewritten packet, every length and checksum; drop = no reply (one is an error).",
        "",
    ]
    # ---- headline
    out.append(
        "HEADLINE, the mix: returned = replies/s in the flood; errors = invalid or unexpected "
        "replies (flood + latency run); silent = templates never answered at 10k pps though a "
        "reply was due (a wrong drop); loss@10k = expected replies missing or invalid at 10k pps; "
        "CPU = user+kernel time per packet the target's socket received"
    )
    cols = [
        "payload",
        "target",
        "returned pps",
        "vs C",
        "errors",
        "silent",
        *TAIL_COLS,
    ]
    table = []
    payloads = sorted({r["payload"] for r in rows if r["case"] == MIX})
    for payload in payloads:
        b = base.get((payload, MIX))
        for r in (b, product.get((payload, MIX)), ring.get((payload, MIX))):
            if r is None:
                continue
            table.append(
                [
                    f"{payload} B",
                    r["target"],
                    fmt(r["returned_pps"]),
                    _ratio(r, b, "returned_pps"),
                    str(r["errors"]),
                    str(r["silent_templates"]),
                    *tail_cells(r, b),
                ]
            )
    out += _table(cols, table)
    ceiling = facts.get("ceiling", {})
    out.append("Generator ceiling in this run (flooding the mix):")
    for payload in payloads:
        b, p = base.get((payload, MIX)), product.get((payload, MIX))
        parts = []
        if payload in ceiling:
            parts.append(
                f"gen alone (into a sink) offers {ceiling[payload]['offered_pps']:,.0f} pps"
            )
        offered = [
            f"{r['offered_pps']:,.0f} to {r['target']} (returned {r['returned_pps']:,.0f}"
            + (", kept up: the generator's rate, not the target's limit" if kept_up(r) else "")
            + ")"
            for r in (b, p)
            if r
        ]
        if offered:
            parts.append("with replies to check it offered " + " and ".join(offered))
        if b and p and b["returned_pps"]:
            share = p["returned_pps"] / b["returned_pps"]
            if not kept_up(p):
                verdict = (
                    "not generator-bound: its socket overflowed, so it was offered more than it "
                    "could take"
                )
            elif share < 0.8:
                verdict = "not generator-bound: the harness carried more with the C reflector"
            else:
                verdict = "near the harness's ceiling: the generator may bound it"
            parts.append(f"applianced returned {100 * share:.1f}% of C: {verdict}")
        out.append(f"  {payload:>5} B: " + "; ".join(parts))
    if any(kept_up(r) for r in rows if r["case"] == MIX):
        out.append(
            "A target that kept up (its socket never overflowed) returned all the generator "
            "offered: its pps ratio then understates the gap; CPU us/pkt compares the work."
        )
    if facts["product_mode"] == "tree":
        out.append(
            "CPU counts: the C reflector's one process; applianced's whole tree (supervisor, "
            "worker, health service: split below). /proc/PID/stat ticks of "
            f"{1000 // CLK_TCK} ms; the user/kernel split is the kernel's estimate."
        )
    else:
        out.append(
            "CPU counts: the C reflector's one process; applianced's worker process alone (the "
            f"supervisor's below). /proc/PID/stat ticks of {1000 // CLK_TCK} ms; the user/kernel "
            "split is the kernel's estimate."
        )
    return out


def health_load_report(h: dict[str, Any], cpus: tuple[int, int]) -> list[str]:
    clients, seconds = h["clients"], h["seconds"]
    alone, without, loaded = h["probes_alone"], h["flood_without_probes"], h["flood_with_probes"]
    out = [
        "",
        f"HEALTH LOAD (--health-load): {clients} concurrent clients in the appliance's namespace, "
        f"each sending GET http://{LOOPBACK}:{HEALTH_PORT}/ on a new TCP connection, the next as "
        f"soon as the last is answered, for {seconds:g} s (gen --mode probe-load, C threads, "
        f"pinned to CPU {cpus[0]} with the generator); the health service (gunicorn) runs on CPU "
        f"{cpus[1]} with the worker and the supervisor.",
        "Probes: latency = connect to the end of the response; client CPU = the probing "
        f"process's user+kernel time, in % of CPU {cpus[0]} (its kernel time includes the "
        "loopback delivery of its packets into the server's socket):",
    ]
    table = []
    for name, phase in (
        ("alone (no data-path traffic)", alone),
        (f"during the {HEALTH_LOAD_PAYLOAD} B mix flood", loaded),
    ):
        p = phase["probes"]
        client_pct = 100.0 * (p["client_user_s"] + p["client_sys_s"]) / p["wall_s"]
        table.append(
            [
                name,
                f"{p['probes']:,}",
                fmt(p["probes_per_s"]),
                f"{p['ok_200']:,}",
                str(p["other_status"]),
                str(p["failed"]),
                fmt(p["p50_ms"], 2),
                fmt(p["p99_ms"], 2),
                fmt(p["max_ms"], 1),
                fmt(client_pct, 0),
                fmt(phase["cpu_pct_by_role"].get("health"), 0),
            ]
        )
    out += _table(
        [
            "probes",
            "sent",
            "probes/s",
            "200",
            "non-200",
            "failed",
            "p50 ms",
            "p99 ms",
            "max ms",
            "client CPU %",
            f"health svc % of CPU {cpus[1]}",
        ],
        table,
    )
    out.append(
        f"The data path: the {HEALTH_LOAD_PAYLOAD} B mix flood, {seconds:g} s, without any "
        f"probe (not even the 10/s of the runs above), then with the {clients} clients probing "
        "(started together with the flood, for as long). Worker CPU us/pkt from schedstat ns; "
        "% columns: shares of one CPU from just before the flood to just after gen exited:"
    )
    table = []
    for r in (without, loaded):
        roles = r["cpu_pct_by_role"]
        table.append(
            [
                r["phase"],
                fmt(r["offered_pps"]),
                fmt(r["returned_pps"]),
                str(r["errors"]),
                fmt(r["loss_pct"], 1),
                f"{r['kernel_app_ns'].get('udp_rcvbuf_errors', 0):,}",
                fmt(r["worker_cpu_us_per_pkt"], 2),
                fmt(roles.get("worker"), 0),
                fmt(roles.get("health"), 0),
                fmt(roles.get("supervisor"), 0),
                fmt(100 - r["gen_cpu"]["idle"], 0),
                fmt(100 - r["target_cpu"]["idle"], 0),
            ]
        )
    ratios = h["ratios_with_over_without"]

    def x(key: str) -> str:
        return "-" if ratios[key] is None else f"{ratios[key]:.3f}x"

    table.append(
        [
            "with / without",
            x("offered_pps"),
            x("returned_pps"),
            "",
            "",
            "",
            x("worker_cpu_us_per_pkt"),
        ]
        + [""] * 5
    )
    out += _table(
        [
            "phase",
            "gen offered pps",
            "returned pps",
            "errors",
            "loss %",
            "app rcvbuf ovf",
            "worker us/pkt",
            "worker %",
            "health svc %",
            "supervisor %",
            f"CPU {cpus[0]} busy %",
            f"CPU {cpus[1]} busy %",
        ],
        table,
    )
    notes = []
    if loaded["probe_overlap_pct"] is not None:
        notes.append(
            f"the probes covered {loaded['probe_overlap_pct']:.1f}% of the loaded flood's send "
            "window"
        )
    if without["kept_up"] or loaded["kept_up"]:
        notes.append(
            "applianced's socket did not overflow in "
            + " and ".join(r["phase"] for r in (without, loaded) if r["kept_up"])
            + ": there its returned rate is bounded by what gen offered, not by applianced"
        )
    else:
        notes.append(
            "applianced's socket overflowed in both phases: gen offered more than it handled, so "
            "both returned rates are applianced's, not the generator's"
        )
    change = h["ratios_with_over_without"]["offered_pps"]
    if change is not None:
        notes.append(
            f"gen offered {abs(change - 1) * 100:.1f}% {'less' if change < 1 else 'more'} with "
            f"the probes (CPU {cpus[0]} also runs the clients and the loopback delivery of their "
            "packets; gen's receiver validates fewer replies when fewer come back)"
        )
    out.append("Notes: " + "; ".join(notes) + ".")
    return out
