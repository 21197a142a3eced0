"""What a flow's verdict is, as the flow table stores it (a small int, compared per packet).

A passing flow is PASS_PLAIN when no packet rule (policy.py: replace, drop_seq_multiple, a
payload condition) can act on any of its packets, so its packets need nothing but the flow
lookup; PASS_INSPECT when one can, so each of its packets is still shown to the packet rules.
"""

from __future__ import annotations

PASS_PLAIN = 0
PASS_INSPECT = 1
DROP = 2
REJECT = 3
NAMES = {PASS_PLAIN: "pass", PASS_INSPECT: "pass", DROP: "drop", REJECT: "reject"}
