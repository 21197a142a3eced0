"""appliancectl's text output: the status and stats tables, each column as wide as its widest
cell, and the one-line answers of the other commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

# --- rendering -------------------------------------------------------------------------------


def strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "ok", "follow")}


def pretty(value: dict[str, Any]) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def compact(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def render(command: str, reply: dict[str, Any]) -> str:
    if command == "status":
        return render_status(reply)
    if command == "stats":
        return render_stats(reply)
    if command == "reload":
        outcome = reply["reload"]
        return ("reloaded: " if outcome["ok"] else "") + str(outcome["detail"])
    if command in ("drain", "undrain"):
        if reply.get("draining"):
            return "draining: yes (health answers 503 until undrain)"
        return "draining: no (health reports the facts again)"
    if command == "flows":
        return render_flows(reply)
    if command == "version":
        return f"applianced {reply.get('version')}, protocol {reply.get('protocol')}"
    if "detail" in reply:
        return str(reply["detail"])
    return " ".join(f"{k}: {v}" for k, v in strip(reply).items())


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    """Columns as wide as their widest cell; `align` has one '<' or '>' per column."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True)).rstrip()
        for row in cells
    ]


def render_status(reply: dict[str, Any]) -> str:
    sup = reply["supervisor"]
    lines = [
        f"supervisor pid {sup['pid']}, up {sup['uptime_s']} s, config {sup['config']} "
        f"(generation {sup['generation']}), ready: {'yes' if sup['ready'] else 'no'}, "
        f"draining: {'yes' if sup['draining'] else 'no'}",
        f"last reload: {sup['last_reload']['detail']}",
        *(f"interface: {fact}" for fact in sup.get("interfaces", [])),
    ]
    header = (
        *("SLOT", "PID", "CPU", "STATE", "UPTIME", "RESTARTS", "IN", "OUT", "DROPS"),
        "RCVBUF_DROPS",  # the kernel dropped them: the worker's socket buffer was full
    )
    rows = [
        (
            w["slot"],
            w["pid"] or "-",
            w["cpu"],
            w["state"],
            "-" if w["uptime_s"] is None else f"{w['uptime_s']}s",
            w["restarts"],
            w["packets_in"],
            w["packets_out"],
            w["drops"],
            w.get("rx_buffer_drops", "-"),  # "-": a daemon from before it was counted
        )
        for w in reply["workers"]
    ]
    lines += table(header, rows, ">>><>>>>>>")
    health = reply.get("health")
    if health:
        lines.append(
            f"health service: {health['state']}, pid {health['pid'] or '-'}, "
            f"{health['bind']}, restarts {health['restarts']}"
        )
    return "\n".join(lines)


def render_stats(reply: dict[str, Any]) -> str:
    columns = [*(f"worker {k}" for k in range(len(reply["workers"]))), "total"]
    per_column = [*reply["workers"], reply["total"]]
    total = reply["total"]
    rows: list[list[object]] = [
        [name, *(column.get(name, 0) for column in per_column)]
        for name, value in total.items()
        if not isinstance(value, dict)
    ]
    for group, keys in total.items():
        if isinstance(keys, dict):
            prefix = group.split("_by_")[0]
            rows += [
                [f"{prefix}[{key}]", *(column.get(group, {}).get(key, 0) for column in per_column)]
                for key in keys
            ]
    return "\n".join(table(["counter", *columns], rows, "<" + ">" * len(columns)))


PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
NO_FLOWS = (
    "no flows (the workers track flows when the policy decides them: a rule that passes, drops "
    "or rejects without a payload condition, policy.default drop or reject, or "
    "policy.track_flows = true)"
)


def render_flows(reply: dict[str, Any]) -> str:
    """One line per flow, the side that opened it first; then what was left out, if anything."""
    header = (
        "SLOT",
        "ENDPOINT",
        "PROTO",
        "FROM",
        "TO",
        "AGE",
        "IDLE",
        "PKTS",
        "BYTES",
        "VERDICT",
        "NAME",
    )
    rows = []
    for f in reply["flows"]:
        rows.append(
            (
                f["slot"],
                f["endpoint"],
                PROTOCOLS.get(f["protocol"], f["protocol"]),
                _end(f["src"], f["src_port"]),
                _end(f["dst"], f["dst_port"]),
                f"{f['age_s']:.0f}s",
                f"{f['idle_s']:.0f}s",
                f"{f['packets_out']}/{f['packets_in']}",
                f"{f['bytes_out']}/{f['bytes_in']}",
                f["verdict"] + (f" ({f['rule']})" if f.get("rule") else ""),
                f.get("name") or "",
            )
        )
    lines = table(header, rows, "><<<<>>>><<") if rows else [NO_FLOWS]
    for note in reply.get("notes", []):
        lines.append(str(note))
    return "\n".join(lines)


def _end(address: str, port: int | None) -> str:
    if port is None or port < 0:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
