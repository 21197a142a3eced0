"""The worker's counters: a flat array of unsigned 64-bit integers at fixed indices.

Fixed indices let the same layout live in a plain bytearray (tests, one worker) or in a slot of the
memory-mapped stats table, which the health service and the admin CLI read without asking anyone.
"""

from __future__ import annotations

import enum
import errno

from appliance.errors import Reason

MAX_RULES = 64  # drops are counted per rule for the first MAX_RULES rules; the rest share the last


class Counter(enum.IntEnum):
    RECEIVED = 0
    SENT = 1
    PASSED = 2
    REWRITTEN = 3
    DROPPED = 4  # by a rule, all rules together
    MALFORMED = 5  # all reasons together
    OVERSIZE = 6
    UNREWRITABLE = 7  # a replace matched a fragment: dropped
    DISALLOWED_SOURCE = 8
    SEND_ERRORS = 9
    BATCHES = 10
    REJECTED = 11  # decided `reject` (by a rule or the default), all together
    REJECTS_SENT = 12  # RSTs and ICMP errors generated and queued
    REJECTS_SUPPRESSED = 13  # a reject that sent nothing: the ceiling, or nothing may answer it
    DEFAULT_DECIDED = 14  # packets policy.default decided (drop or reject)
    FLOWS_ACTIVE = 15  # a gauge: flows in the worker's table now
    FLOWS_CREATED = 16
    FLOWS_EXPIRED = 17
    FLOWS_EVICTED = 18
    # Set, not added to: the kernel's count of datagrams its data socket dropped, almost all for a
    # full receive buffer (SO_RXQ_OVFL, as of the last datagram the worker read: batchio.py).
    # Cumulative over the socket's life, which a restarted worker inherits; the health verdict
    # watches it rise (health/overflow.py).
    RX_BUFFER_DROPS = 19
    NAME_HELD = 20  # client segments held back while their flow waited for its name
    AUDITED = 21  # denials passed in audit mode (per rule: AUDIT_BASE)
    INSPECT_ERRORS = 22  # inspector calls that raised or returned no result (on_error applied)
    INSPECT_OVERTIME = 23  # inspector calls over their rule's budget_us (on_error applied)
    CAPTURE_KEPT = 24  # packets `appliancectl capture` recorded (capture.py)
    CAPTURE_DROPPED = 25  # packets a capture matched but its client's socket could not take
    FLOWLOG_RECORDS = 28  # flow records the writer's socket took (appliance/flowlog.py)
    FLOWLOG_DROPPED = 29  # flow records dropped: the writer behind, stopped or not running


# What the worker refused to send back, for a one-number "drops" column.
REFUSALS = (
    Counter.DROPPED,
    Counter.MALFORMED,
    Counter.OVERSIZE,
    Counter.UNREWRITABLE,
    Counter.DISALLOWED_SOURCE,
    Counter.SEND_ERRORS,
    Counter.REJECTED,
)

# errno values a raw send can plausibly meet; anything else lands in the last bucket.
SEND_ERRNOS = (
    errno.EPERM,
    errno.ENOBUFS,
    errno.EMSGSIZE,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.EINVAL,
    errno.EACCES,
    0,
)

MALFORMED_BASE = 32
RULE_BASE = MALFORMED_BASE + 32  # drops and rejects per rule
SEND_ERRNO_BASE = RULE_BASE + MAX_RULES
# Per rule: the flows it decided (packets, for a rule that acts on packets), whatever its action;
# and the flows or packets it would have denied in audit mode, which passed.
HIT_BASE = SEND_ERRNO_BASE + len(SEND_ERRNOS)
AUDIT_BASE = HIT_BASE + MAX_RULES
SIZE = AUDIT_BASE + MAX_RULES  # counters per worker
assert len(Reason) <= RULE_BASE - MALFORMED_BASE


def send_errno_index(code: int) -> int:
    """The counter index for a send failure with errno `code`."""
    try:
        return SEND_ERRNO_BASE + SEND_ERRNOS.index(code)
    except ValueError:
        return SIZE - 1


def new_counters() -> memoryview:
    """A zeroed counter array outside the stats table (tests, tools)."""
    return memoryview(bytearray(8 * SIZE)).cast("Q")


def snapshot(counters: memoryview, rule_names: tuple[str, ...] = ()) -> dict[str, object]:
    """The counters as a JSON-ready dict with named reasons, rules and errnos (zeros left out)."""
    out: dict[str, object] = {c.name.lower(): counters[c] for c in Counter}
    out["malformed_by_reason"] = {
        r.name.lower(): counters[MALFORMED_BASE + r] for r in Reason if counters[MALFORMED_BASE + r]
    }
    out["dropped_by_rule"] = {
        (rule_names[i] if i < len(rule_names) else f"rule{i}"): counters[RULE_BASE + i]
        for i in range(MAX_RULES)
        if counters[RULE_BASE + i]
    }
    for name, base in (("hits_by_rule", HIT_BASE), ("audited_by_rule", AUDIT_BASE)):
        out[name] = {
            (rule_names[i] if i < len(rule_names) else f"rule{i}"): counters[base + i]
            for i in range(MAX_RULES)
            if counters[base + i]
        }
    out["send_errors_by_errno"] = {
        (errno.errorcode.get(code, "other") if code else "other"): counters[SEND_ERRNO_BASE + i]
        for i, code in enumerate(SEND_ERRNOS)
        if counters[SEND_ERRNO_BASE + i]
    }
    return out


def total(snapshots: list[dict[str, object]]) -> dict[str, object]:
    """Sum per-worker snapshots (numbers add, nested dicts add key by key)."""
    out: dict[str, object] = {}
    for snap in snapshots:
        for key, value in snap.items():
            if isinstance(value, dict):
                into = out.setdefault(key, {})
                assert isinstance(into, dict)
                for name, count in value.items():
                    into[name] = into.get(name, 0) + count
            else:
                out[key] = int(out.get(key, 0)) + int(value)  # type: ignore[call-overload]
    return out
