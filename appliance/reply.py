"""The outer IPv4 + UDP header of a reply to GWLB (DESIGN.md §1).

Source = the local address the packet arrived on, destination = the GWLB node that sent it, UDP
ports as they came (src = GWLB's port, dst = 6081), UDP checksum 0 (RFC 8926 allows it over IPv4).
Only the lengths and the IPv4 checksum vary per packet; the rest of the checksum is summed once per
(local, peer) pair and cached.
"""

from __future__ import annotations

import struct

from appliance.checksum import fold, ones_sum
from appliance.geneve import GENEVE_PORT

HEADER_LEN = 28  # IPv4 without options + UDP
TTL = 64
_HEADER = struct.Struct("!HHHHBBH4s4sHHHH")
_CONSTANT_WORDS = 0x4500 + 0x4000 + (TTL << 8 | 17)  # version/IHL/TOS, DF, TTL/protocol
MAX_CACHED_PAIRS = 4096


MAX_CACHED_HEADERS = 16384


class ReplyHeaders:
    """Reply headers, cached whole per (peer, port, local, length): GWLB traffic repeats them."""

    def __init__(self) -> None:
        self._sums: dict[bytes, int] = {}
        # Read directly by the worker's loop (a dict lookup is cheaper than a method call).
        self.cached: dict[tuple[int, int, int, int], bytes] = {}
        self._scratch = bytearray(HEADER_LEN)

    def header(self, peer: int, peer_port: int, local: int, udp_payload: int) -> bytes:
        """The 28 header bytes from `local` to `peer` for a UDP payload of `udp_payload` bytes."""
        key = (peer, peer_port, local, udp_payload)
        found = self.cached.get(key)
        if found is None:
            if len(self.cached) >= MAX_CACHED_HEADERS:
                self.cached.clear()  # bounded memory whatever the traffic
            self.write(
                self._scratch,
                0,
                local.to_bytes(4, "big"),
                peer.to_bytes(4, "big"),
                peer_port,
                udp_payload,
            )
            found = self.cached[key] = bytes(self._scratch)
        return found

    def write(
        self, out: bytearray, at: int, local: bytes, peer: bytes, peer_port: int, udp_payload: int
    ) -> None:
        """Write the 28-byte header into out[at:] for a UDP payload of `udp_payload` bytes."""
        key = local + peer
        partial = self._sums.get(key)
        if partial is None:
            if len(self._sums) >= MAX_CACHED_PAIRS:
                self._sums.clear()
            partial = self._sums[key] = _CONSTANT_WORDS + ones_sum(key)
        total = HEADER_LEN + udp_payload
        checksum = ~fold(partial + total) & 0xFFFF
        _HEADER.pack_into(
            out,
            at,
            0x4500,
            total,
            0,
            0x4000,
            TTL,
            17,
            checksum,
            local,
            peer,
            peer_port,
            GENEVE_PORT,
            udp_payload + 8,
            0,
        )
