"""What a flow's verdict is, as the flow table stores it (a small int, compared per packet).

A passing flow is PASS_PLAIN when no packet rule (policy.py: replace, drop_seq_multiple, a
payload condition) can act on any of its packets, so its packets need nothing but the flow
lookup; PASS_INSPECT when one can, so each of its packets is still shown to the packet rules.
The last three are flows not decided yet, whose packets the worker shows to what will decide
them: PENDING waits for a name (TLS server name, HTTP Host, a DNS question over TCP) in the
client's first bytes (appliance/nameflow.py); PER_QUERY is DNS over UDP, each query judged by
its own name; INSPECTING is a flow an inspector written in Python judges packet by packet until
it decides the flow (appliance/inspection.py).
"""

from __future__ import annotations

PASS_PLAIN = 0
PASS_INSPECT = 1
DROP = 2
REJECT = 3
PENDING = 4
PER_QUERY = 5
INSPECTING = 6
NAMES = {
    PASS_PLAIN: "pass",
    PASS_INSPECT: "pass",
    DROP: "drop",
    REJECT: "reject",
    PENDING: "pending",
    PER_QUERY: "per-query",
    INSPECTING: "inspecting",
}
UNDECIDED = frozenset({PENDING, PER_QUERY, INSPECTING})
