"""The allow-list of GWLB source networks: Geneve from anywhere else is dropped and counted."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

MAX_CACHED = 4096  # distinct senders remembered; GWLB fleets have a handful of node IPs


class SourceFilter:
    """Answers "may this IPv4 address (an int) send us Geneve?" with a per-address cache."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network]) -> None:
        self.networks = tuple(networks)
        self._verdicts: dict[int, bool] = {}

    def __call__(self, address: int) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            if len(self._verdicts) >= MAX_CACHED:
                self._verdicts.clear()  # a spray of spoofed sources must not grow memory
            ip = ipaddress.IPv4Address(address)
            verdict = self._verdicts[address] = any(ip in net for net in self.networks)
        return verdict
