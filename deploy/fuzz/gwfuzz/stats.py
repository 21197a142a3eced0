"""The appliance's counters and the kernel's, read without importing the product.

The stats table is read a few times per window by the settle loop, straight from the file (its
layout is appliance/stats.py's docstring: 16 header words, then per worker slot 8 words of
identity and the counters, all little-endian uint64; the counters' order is appliance/counters.py
Counter). `appliancectl --json stats` gives the named totals (malformed by reason, dropped by
rule) at the end, and the two are compared: a layout that moved shows up as a loud mismatch, not
as wrong figures. The kernel's UDP counters of the appliance's namespace come from
/proc/PID/net/snmp of a process that lives there.
"""

from __future__ import annotations

import json
import mmap
import subprocess
from pathlib import Path
from typing import Any

MAGIC = int.from_bytes(b"GWLBSTAT", "little")
HEADER_WORDS, SLOT_META_WORDS = 16, 8
# Versions 2 and 3 added counters after the ones read here, which did not move.
TABLE_VERSIONS = (2, 3)
H_VERSION, H_SLOTS, H_SLOT_WORDS, H_READY = 1, 2, 3, 8
S_PID, S_RESTARTS = 0, 3
COUNTERS = (
    "received",
    "sent",
    "passed",
    "rewritten",
    "dropped",
    "malformed",
    "oversize",
    "unrewritable",
    "disallowed_source",
    "send_errors",
    "batches",
)
REFUSALS = ("dropped", "malformed", "oversize", "unrewritable", "disallowed_source", "send_errors")
UDP_FIELDS = ("InDatagrams", "InErrors", "RcvbufErrors", "InCsumErrors", "NoPorts")

# How the product names its reasons (appliance/errors.py Reason, lower case) for the first rule
# a datagram breaks, as the strict decoder names it: for the cross-check of the counters only.
PRODUCT_REASONS = {
    "geneve.truncated": "truncated",
    "geneve.version": "geneve_version",
    "geneve.oam": "geneve_oam",
    "geneve.options_overrun": "geneve_options_length",
    "geneve.option_overrun": "geneve_options_length",
    "geneve.protocol": "geneve_protocol",
    "geneve.aws_option_length": "geneve_aws_option_length",
    "geneve.critical_option": "geneve_critical_option",
    "geneve.aws_option_missing": "geneve_missing_aws_option",
    "ip.version": "ip_version",
    "ipv4.truncated": "truncated",
    "ipv4.ihl": "ip_header_length",
    "ipv4.ihl_over_total": "ip_header_length",
    "ipv4.total_length": "ip_length_mismatch",
    "ipv6.truncated": "truncated",
    "ipv6.payload_length": "ip_length_mismatch",
    "ipv6.hop_by_hop_not_first": "ipv6_extension_chain",
    "ipv6.extension_truncated": "truncated",
    "ipv6.over_16_extension_headers": "ipv6_extension_chain",
    "udp.truncated": "truncated",
    "udp.length": "transport_length",
    "tcp.truncated": "truncated",
    "tcp.data_offset": "transport_length",
    "icmp.truncated": "truncated",
}
TOO_BIG = "datagram_too_big"  # more than the 9001-byte receive slot


class StatsTable:
    """The appliance's stats table, mapped read-only."""

    def __init__(self, runtime: Path) -> None:
        with open(runtime / "stats.bin", "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        self.words = memoryview(self._map).cast("Q")
        header = self.words[:HEADER_WORDS]
        if header[0] != MAGIC or header[H_VERSION] not in TABLE_VERSIONS:
            raise ValueError(f"{runtime}/stats.bin: not a version {TABLE_VERSIONS} stats table")
        self.slots, self.slot_words = int(header[H_SLOTS]), int(header[H_SLOT_WORDS])

    def close(self) -> None:
        self.words.release()
        self._map.close()

    @property
    def ready(self) -> bool:
        return bool(self.words[H_READY])

    def _slot(self, k: int) -> memoryview:
        start = HEADER_WORDS + k * self.slot_words
        return self.words[start : start + self.slot_words]

    def totals(self) -> dict[str, int]:
        """Every counter added up over the worker slots."""
        out = dict.fromkeys(COUNTERS, 0)
        for k in range(self.slots):
            slot = self._slot(k)
            for i, name in enumerate(COUNTERS):
                out[name] += int(slot[SLOT_META_WORDS + i])
        return out

    def restarts(self) -> int:
        return sum(int(self._slot(k)[S_RESTARTS]) for k in range(self.slots))

    def worker_pids(self) -> list[int]:
        return [int(self._slot(k)[S_PID]) for k in range(self.slots)]


def udp_snmp(pid: int) -> dict[str, int]:
    """The UDP counters of the network namespace process `pid` lives in."""
    lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
    names, values = (line.split()[1:] for line in lines if line.startswith("Udp:"))
    table = dict(zip(names, map(int, values), strict=True))
    return {name: table.get(name, 0) for name in UDP_FIELDS}


def appliancectl_stats(appliancectl: str, runtime: Path) -> dict[str, Any]:
    """`appliancectl --socket RUNTIME/control.sock --json stats`, its "total"."""
    argv = [appliancectl, "--socket", str(runtime / "control.sock"), "--json", "stats"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"appliancectl stats failed ({done.returncode}): {done.stderr.strip()}")
    total: dict[str, Any] = json.loads(done.stdout)["total"]
    return total
