"""Table helpers shared by the printed reports."""

from __future__ import annotations

from typing import Any


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def ratio(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if not base or row[key] is None or not base[key]:
        return "-"
    return f"{row[key] / base[key]:.2f}x"


# The columns both headlines (the mix, the firewall case) end with: loss at 10k pps, CPU and
# latency, each against the baseline of the same payload.
TAIL_COLS = [
    "loss@10k %",
    "CPU us/pkt",
    "user",
    "kernel",
    "CPU vs C",
    "p50 us",
    "p50 vs C",
    "p99 us",
    "p99 vs C",
]


def tail_cells(row: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    """TAIL_COLS of one headline row."""
    return [
        f"{row['latency_loss_pct']:.2f}",
        fmt(row["cpu_us_per_pkt"], 2),
        fmt(row["cpu_user_us_per_pkt"], 2),
        fmt(row["cpu_kernel_us_per_pkt"], 2),
        ratio(row, base, "cpu_us_per_pkt"),
        fmt(row["p50_us"], 1),
        ratio(row, base, "p50_us"),
        fmt(row["p99_us"], 1),
        ratio(row, base, "p99_us"),
    ]


def class_cells(rows: list[dict[str, Any]], classes: list[str]) -> list[list[str]]:
    """Per row and run (flood, latency): target, run, and per class valid replies / replies
    expected, or "N sent" for a class that expects none."""
    cells = []
    for r in rows:
        for run in ("flood", "latency"):
            row = [r["target"], f"{r['payload']} B {run}"]
            for c in classes:
                k = r[run]["classes"].get(c)
                if k is None:
                    row.append("-")
                elif k["slots_answered"] == 0:
                    row.append(f"{k['sent']:,} sent")
                else:
                    row.append(f"{k['valid']:,}/{k['expected']:,}")
            cells.append(row)
    return cells


def kept_up(row: dict[str, Any]) -> bool:
    """The target's socket never overflowed in the flood (under 0.1% of what reached it): it
    handled everything gen offered, so its returned rate is the generator's, not its own limit."""
    k: dict[str, int] = row["kernel_app_ns"]
    overflow = k.get("udp_rcvbuf_errors", 0) + k.get("ring_drops", 0)
    delivered = k.get("udp_in_datagrams", 0) + k.get("ring_delivered", 0)
    return overflow <= 0.001 * (overflow + delivered)


def table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]
