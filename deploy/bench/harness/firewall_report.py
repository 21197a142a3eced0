"""The firewall case in the printed report (run.py --firewall): what it holds, its headline next
to the C reflector (a pass-through baseline here), and its replies by class."""

from __future__ import annotations

from typing import Any

from harness.env import BASELINE, FIREWALL, PRODUCT, PRODUCT_RING
from harness.tables import TAIL_COLS, class_cells, fmt, kept_up, ratio, table, tail_cells


def firewall_section(facts: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Everything the report says about the firewall case (nothing when it did not run)."""
    mine = [r for r in rows if r["case"] == FIREWALL]
    if not mine:
        return []
    fw = facts["firewall"]
    return [
        "",
        *describe(fw),
        "",
        *headline(mine),
        *ceiling(facts.get("ceiling_firewall", {}), mine, fw["packets_per_connection"]),
        "",
        *by_class(mine),
        "",
    ]


def describe(fw: dict[str, Any]) -> list[str]:
    clients = fw["clients"]
    per, size = fw["packets_per_connection"], fw["size"]
    kinds = len(fw["kinds"])
    return [
        f"FIREWALL (--firewall): new TCP connections through deploy/bench/firewall_policy.toml "
        f"({fw['rules']} rules with IPv4 and IPv6 CIDRs over 4 GWLB endpoint ids, two of which "
        "deny by default; flow table on), in an applianced of its own. Each flow cycles through "
        f"{size} packets: {kinds} connections open at once, each {per} packets in order (SYN, "
        "SYN-ACK, ACK, data both ways, FIN both ways, last ACK; the server's with the inner "
        "addresses and ports swapped), every cycle on new inner 5-tuples (clients "
        f"{clients['ipv4']} and {clients['ipv6']}, ports {clients['ports']}; none repeats "
        "within a run), by connection kind:",
        *(f"  {line}" for line in fw["lines"]),
        f"  = {fw['answered']} replies expected per {size} packets: every packet of an allowed "
        "connection comes back byte-identical; every packet of a denied one, both ways, gets no "
        "reply (a reply is the error `unexpected`): the verdict of its SYN must stick to the "
        "flow.",
        "THE C REFLECTOR DOES NOT IMPLEMENT THIS POLICY: in this case it is a PASS-THROUGH "
        f"BASELINE. It answers every packet, also the {size - fw['answered']} in {size} "
        "applianced must drop; gen checks all of its replies as pass-through (--pass-all), so "
        "those are not its errors, and its returned pps counts them. So compare conn/s (new "
        "connections per second each target got through: replies per second over the replies "
        "due per connection, denied connections included) and CPU us/pkt (per packet delivered "
        "to the target); `vs C` is on conn/s.",
    ]


def headline(mine: list[dict[str, Any]]) -> list[str]:
    base = {r["payload"]: r for r in mine if r["target"] == BASELINE}
    cols = [
        "payload",
        "target",
        "returned pps",
        "conn/s",
        "vs C",
        "offered conn/s",
        "errors",
        "denied answered",
        "silent",
        *TAIL_COLS,
    ]
    cells = []
    for payload in sorted({r["payload"] for r in mine}):
        b = base.get(payload)
        for name in (BASELINE, PRODUCT, PRODUCT_RING):
            for r in (r for r in mine if r["payload"] == payload and r["target"] == name):
                cells.append(row_cells(r, b))
    return [
        "FIREWALL HEADLINE: conn/s = new connections per second through the target (see above); "
        "offered conn/s = SYNs gen sent per second; errors = invalid or unexpected replies "
        "(flood + latency run); denied answered = replies to denied connections (part of "
        "errors); silent = templates never answered at 10k pps though a reply was due; CPU = "
        "user+kernel time per packet the target received",
        *table(cols, cells),
    ]


def row_cells(r: dict[str, Any], b: dict[str, Any] | None) -> list[str]:
    baseline = r["target"] == BASELINE
    denied = r["errors_by_kind"].get("unexpected", 0)
    return [
        f"{r['payload']} B",
        r["target"] + (" (pass-through)" if baseline else ""),
        fmt(r["returned_pps"]),
        fmt(r["conn_per_s"]),
        ratio(r, b, "conn_per_s"),
        fmt(r["offered_conn_per_s"]),
        str(r["errors"]),
        "n/a" if baseline else str(denied),
        str(r["silent_templates"]),
        *tail_cells(r, b),
    ]


def ceiling(sink: dict[int, dict[str, Any]], mine: list[dict[str, Any]], per: int) -> list[str]:
    """What gen offered alone and to each target, and which targets kept up with it."""
    out = ["Generator ceiling in this run (flooding the firewall case):"]
    for payload in sorted({r["payload"] for r in mine}):
        parts = []
        if payload in sink:
            pps = sink[payload]["offered_pps"]
            parts.append(f"gen alone (into a sink) offers {pps:,.0f} pps ({pps / per:,.0f} conn/s)")
        parts += [
            f"to {r['target']} {r['offered_pps']:,.0f}"
            + (" (kept up: the generator's rate, not the target's limit)" if kept_up(r) else "")
            for r in mine
            if r["payload"] == payload
        ]
        out.append(f"  {payload:>5} B: " + "; ".join(parts))
    return out


def by_class(mine: list[dict[str, Any]]) -> list[str]:
    classes = list(dict.fromkeys(c for r in mine for c in r["flood"]["classes"]))
    cells = class_cells(mine, classes)
    return [
        "The firewall case by class: valid replies / replies expected (denied: packets sent, no "
        "reply due; the C reflector's are due, as pass-through), in the flood and at 10k pps:",
        *table(["target", "run", *classes], cells),
    ]
