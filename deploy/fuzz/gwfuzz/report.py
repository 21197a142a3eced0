"""The run's figures: classes by status, the counter cross-check, examples in hex, a verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gwfuzz.classify import Tally
from gwfuzz.session import Run


@dataclass
class Outcome:
    """Everything a run is judged on."""

    seed: int
    count: int
    command: str
    tally: Tally
    run: Run
    appliancectl: dict[str, Any]
    restarts: int
    exit_status: int
    tracebacks: int
    counters: list[tuple[str, int, int]] = field(default_factory=list)  # name, expected, counted

    @property
    def failures(self) -> list[str]:
        out = []
        if self.tally.statuses["unexplained"]:
            out.append(f"{self.tally.statuses['unexplained']} unexplained differences")
        if self.restarts or self.tracebacks:
            out.append(f"worker restarts {self.restarts}, tracebacks {self.tracebacks}")
        if self.exit_status != 0:
            out.append(f"applianced exited {self.exit_status}")
        if self.run.stalled:
            out.append(f"{len(self.run.stalled)} windows never settled")
        if self.run.strays:
            out.append(f"{len(self.run.strays)}+ replies that answer nothing in flight")
        if self.run.rcvbuf_errors or self.tally.statuses["lost"]:
            out.append(f"receive buffer overflowed {self.run.rcvbuf_errors} times")
        if self.tally.statuses["known-bug"]:
            out.append(f"{self.tally.statuses['known-bug']} datagrams hit known product bugs")
        if counter_disagreements(self.counters, unforeseen(self.tally)):
            out.append("the appliance's counters disagree with the classes")
        if self.run.send_errors:
            out.append(f"{self.run.send_errors} datagrams could not be sent")
        return out


def unforeseen(tally: Tally) -> int:
    """Drops whose counter the classes cannot name (see counter_disagreements)."""
    return tally.categories["malformed:?"] + tally.categories["?"]


def counter_disagreements(rows: list[tuple[str, int, int]], unforeseen: int) -> list[str]:
    """The rows that disagree. A drop the classes could not foresee ("?": a known bug's, or one
    the product refused although it tolerates what the decoder found) is counted under some
    refusal of the product's own choosing: the refusal rows may exceed what was expected by that
    many in all, and never fall short. Every other row must match."""
    refusals = ("dropped[", "malformed[", "oversize", "unrewritable")
    bad = [n for n, e, c in rows if e != c and not n.startswith((*refusals, "malformed ("))]
    excess = [c - e for n, e, c in rows if n.startswith(refusals)]
    if any(d < 0 for d in excess) or sum(excess) != unforeseen:
        bad.append("refusals by rule and reason")
    return bad


def counter_rows(tally: Tally, run: Run, ctl: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(counter, what the classes and the kernel say, what the appliance counted)."""
    c = tally.categories
    answered = sum(n for k, n in c.items() if k.startswith(("answered", "unsendable")))
    unsendable = sum(n for k, n in c.items() if k.startswith("unsendable"))
    rows = [
        ("received (kernel: UDP InDatagrams)", run.kernel.get("InDatagrams", 0), ctl["received"]),
        ("sent (replies captured)", run.replies, ctl["sent"]),
        ("passed + rewritten (answered)", answered, ctl["passed"] + ctl["rewritten"]),
        ("rewritten", c["answered:rewrite"] + c["unsendable:rewrite"], ctl["rewritten"]),
        ("send errors (replies over the link's MTU)", unsendable, ctl["send_errors"]),
        ("oversize", c["oversize"], ctl["oversize"]),
        ("unrewritable", c["unrewritable"], ctl["unrewritable"]),
        ("stats table == appliancectl: received", run.product["received"], ctl["received"]),
        ("stats table == appliancectl: malformed", run.product["malformed"], ctl["malformed"]),
    ]
    kernel = c["kernel"]
    if not run.ring:  # the rings' refusals (tap filter, UDP checksum) are counted nowhere
        rows.append(("kernel drops (UDP InErrors)", kernel, run.kernel.get("InErrors", 0)))
    rules = {k.split(":", 1)[1] for k in c if k.startswith("dropped:")}
    rules |= set(ctl.get("dropped_by_rule", {}))
    for rule in sorted(rules):
        rows.append((f"dropped[{rule}]", c[f"dropped:{rule}"], ctl["dropped_by_rule"].get(rule, 0)))
    malformed = sum(n for k, n in c.items() if k.startswith("malformed:"))
    rows.append(("malformed (all reasons)", malformed, ctl["malformed"]))
    reasons = {k.split(":", 1)[1] for k in c if k.startswith("malformed:") and k[-1] != "?"}
    reasons |= set(ctl.get("malformed_by_reason", {}))
    for reason in sorted(reasons):
        counted = ctl["malformed_by_reason"].get(reason, 0)
        rows.append((f"malformed[{reason}]", c[f"malformed:{reason}"], counted))
    return rows


def render(o: Outcome) -> str:
    t, r = o.tally, o.run
    rate = o.count / r.seconds if r.seconds else 0.0
    lines = [
        f"wirefuzz: seed {o.seed}, {o.count:,} datagrams in {r.seconds:.1f} s ({rate:,.0f}/s), "
        f"{r.windows} windows; appliance: {o.command}",
        f"sent {r.sent:,} (send errors {r.send_errors}), replies {r.replies:,}, "
        f"rejected replies {sum(n for k, n in t.classes.items() if k.startswith('rejected'))}, "
        f"worker restarts {o.restarts}, applianced exit status {o.exit_status}, "
        f"tracebacks in its stderr {o.tracebacks}",
        f"kernel (appliance namespace): RcvbufErrors {r.rcvbuf_errors}, "
        f"InCsumErrors {r.kernel.get('InCsumErrors', 0)}, InErrors {r.kernel.get('InErrors', 0)}",
        "status: " + ", ".join(f"{k} {t.statuses[k]:,}" for k in sorted(t.statuses)),
    ]
    for status in ("agree", "explained", "known-bug", "unexplained", "lost"):
        classes = [(k, n) for k, n in t.classes.items() if t.status_of[k] == status]
        if classes:
            lines.append(f"\n{status}:")
            lines += [f"  {n:>9,}  {k}" for k, n in sorted(classes, key=lambda kv: -kv[1])]
    lines.append("\ncounters (expected from the classes or the kernel / counted by the appliance):")
    for name, expected, counted in o.counters:
        mark = "" if expected == counted else "   <-- differs"
        lines.append(f"  {name:<48} {expected:>10,} {counted:>10,}{mark}")
    lines += _examples(t)
    for label, items in (
        ("stalled windows", r.stalled),
        ("counter mismatches", r.counter_mismatches),
        ("stray replies", r.strays),
    ):
        if items:
            lines.append(f"\n{label} (first {len(items)}):")
            lines += [f"  {item}" for item in items[:5]]
    failures = o.failures
    lines.append("\nRESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return "\n".join(lines)


def _examples(t: Tally) -> list[str]:
    lines = []
    for cls, shelf in sorted(t.examples.items()):
        lines.append(f"\nexamples of {cls}:")
        for ex in shelf:
            lines.append(f"  --show {ex['id']}  ({ex['recipe']})")
            if ex.get("why"):
                lines.append(f"    why: {ex['why']}")
            if ex.get("problems"):
                lines.append(f"    problems: {', '.join(ex['problems'])}")
            lines.append(f"    datagram: {_cut(ex['datagram_hex'])}")
            if ex.get("reply_hex"):
                lines.append(f"    reply:    {_cut(ex['reply_hex'])}")
    return lines


def _cut(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) // 2} bytes)"
