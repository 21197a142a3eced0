"""What the demo policy (config/default.toml) does to a datagram the strict decoder parsed.

Modelled on the config file's rules and comments, not on the product's policy engine:

    drop-me                   UDP with port 3000 on either side whose payload holds "drop me": drop
    weakly-to-strongly-typed  UDP with port 3000 on either side: "weakly typed" -> "strongly typed"
    icmp-echo-every-fifth     ICMP echo request or reply whose sequence number is a multiple of 5
    icmpv6-echo-every-fifth   ICMPv6 echo request or reply (128, 129), the same

The first matching drop wins, even over a replace; a replace applies when nothing drops and its
text is in the payload. A later fragment carries no transport header, so no rule can match it. A
replace that matches a first fragment (no reassembly) or an IPv6 packet with segments left in a
routing header (its UDP checksum covers a destination we do not see) is dropped instead, as the
policy documents ("unrewritable"); one that would grow the inner packet past 8500 bytes is
dropped as "oversize". The command line checks `RULES` against config/default.toml before a run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gwfuzz.strict import LATER, MAX_INNER, UDP, WHOLE, Inner

RULES = (
    ("drop-me", "drop"),
    ("weakly-to-strongly-typed", "replace"),
    ("icmp-echo-every-fifth", "drop_seq_multiple"),
    ("icmpv6-echo-every-fifth", "drop_seq_multiple"),
)
PORT = 3000
DROP_TEXT = b"drop me"
FIND, REPLACE = b"weakly typed", b"strongly typed"
EVERY = 5


class Outcome(enum.Enum):
    PASS = "pass"
    REWRITE = "rewrite"
    DROP = "drop"  # by a rule: Verdict.rule says which
    UNREWRITABLE = "unrewritable"
    OVERSIZE = "oversize"

    @property
    def answered(self) -> bool:
        return self in (Outcome.PASS, Outcome.REWRITE)


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    rule: str = ""


PASS = Verdict(Outcome.PASS)


def judge(d: bytes, inner: Inner) -> Verdict:
    """The policy's verdict on the datagram `d` whose inner packet is `inner`."""
    if inner.fragment == LATER:
        return PASS
    if inner.protocol == UDP and PORT in (inner.sport, inner.dport):
        payload = d[inner.payload : inner.end]
        if DROP_TEXT in payload:
            return Verdict(Outcome.DROP, "drop-me")
        if FIND not in payload:
            return PASS
        rule = "weakly-to-strongly-typed"
        if inner.fragment != WHOLE or inner.routed:
            return Verdict(Outcome.UNREWRITABLE, rule)
        growth = payload.count(FIND) * (len(REPLACE) - len(FIND))
        if inner.end - inner.start + growth > MAX_INNER:
            return Verdict(Outcome.OVERSIZE, rule)
        return Verdict(Outcome.REWRITE, rule)
    if inner.icmp_seq >= 0 and inner.icmp_seq % EVERY == 0:
        return Verdict(Outcome.DROP, f"icmp{'v6' if inner.version == 6 else ''}-echo-every-fifth")
    return PASS


def rewrite(d: bytes, inner: Inner) -> bytes:
    """The datagram after the replace: payload replaced, the IP and UDP lengths fixed, every
    checksum field as it came (the oracle judges those apart: a wrong one stays wrong)."""
    payload = d[inner.payload : inner.end].replace(FIND, REPLACE)
    head = bytearray(d[: inner.payload])
    ip_len = inner.payload - inner.start + len(payload)
    if inner.version == 4:
        head[inner.start + 2 : inner.start + 4] = ip_len.to_bytes(2, "big")
    else:
        head[inner.start + 4 : inner.start + 6] = (ip_len - 40).to_bytes(2, "big")
    udp_len = inner.payload - inner.l4 + len(payload)
    head[inner.l4 + 4 : inner.l4 + 6] = udp_len.to_bytes(2, "big")
    return bytes(head) + payload
