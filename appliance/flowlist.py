"""The operator's view of a flow table (`appliancectl flows`): plain records, simple filters.

Cold path, written for the reader. It works on a snapshot of the table's flows (about 50 ms per
million flows) and is lazy, so a caller on the worker's loop can take a slice of records between
two batches (itertools.islice; a record costs about 3 us); a flow that leaves the table meanwhile
is skipped. Filters compare raw key bytes before anything
is formatted, so a filtered listing of a big table costs little more than the walk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import NamedTuple

from appliance.flowkey import ENDPOINT_LEN, addresses_of, describe
from appliance.flows import FlowTable

_NS = 1e9


class FlowRecord(NamedTuple):
    """One flow as an operator sees it; source and destination in the forward direction (the
    packet that opened the flow); ports are None without ports, the identifier for an echo."""

    endpoint: str  # 16 hex digits, as AWS writes it
    protocol: int
    src: str
    src_port: int | None
    dst: str
    dst_port: int | None
    age_s: float
    idle_s: float
    fwd_packets: int
    fwd_bytes: int
    rev_packets: int
    rev_bytes: int
    verdict: int
    rule: int
    generation: int
    replied: bool
    closing: bool
    name: str | None  # the name it showed (TLS server name, HTTP Host, DNS question), if any


def list_flows(
    table: FlowTable,
    now_ns: int,
    *,
    address: str | None = None,
    port: int | None = None,
    endpoint: str | bytes | None = None,
    verdict: int | None = None,
) -> Iterator[FlowRecord]:
    """The table's live flows as records, those matching every filter given: `address` either
    end (IPv4 or IPv6 text), `port` either end, `endpoint` (16 hex digits or 8 bytes), `verdict`
    (the caller's code). Raises ValueError for an address or endpoint that is not one."""
    packed = ipaddress.ip_address(address).packed if address is not None else None
    wanted_endpoint = _endpoint_bytes(endpoint) if endpoint is not None else None
    for flow in table.flows():
        if not flow.alive:
            continue
        key = flow.key
        if wanted_endpoint is not None and key[:ENDPOINT_LEN] != wanted_endpoint:
            continue
        if verdict is not None and flow.verdict != verdict:
            continue
        if packed is not None and packed not in addresses_of(key):
            continue
        hexid, proto, src, sport, dst, dport = describe(key)
        if port is not None and port != sport and port != dport:
            continue
        yield FlowRecord(
            hexid,
            proto,
            src,
            sport,
            dst,
            dport,
            (now_ns - flow.created_ns) / _NS,
            (now_ns - flow.last_ns) / _NS,
            flow.fwd_packets,
            flow.fwd_bytes,
            flow.rev_packets,
            flow.rev_bytes,
            flow.verdict,
            flow.rule,
            flow.generation,
            flow.replied,
            flow.closing,
            flow.watch.name() if flow.watch is not None else None,
        )


def _endpoint_bytes(endpoint: str | bytes) -> bytes:
    value = bytes.fromhex(endpoint) if isinstance(endpoint, str) else bytes(endpoint)
    if len(value) != 8:
        raise ValueError(f"an endpoint id is 8 bytes (16 hex digits), not {endpoint!r}")
    return value
