"""Flow records: what each flow was, one JSON object per line, when it is denied and when it ends.

Why here and why it never waits: GWLB keeps no access logs, so the worker that decided a flow is
the only place that knows it. A record is built when its event happens (a few microseconds: two
address conversions and orjson), kept in a list, and the batch's records go out at the batch's
end as one datagram (or a few, 60 KiB each) on a non-blocking unix datagram socket to the writer
(supervisor/flowlogd.py). That socket's receive buffer is the bounded buffer: when the writer
falls behind, stops (SIGSTOP) or is restarting, a send fails at once and the records are dropped
and counted (`flowlog_dropped`); packets are never delayed for them.

Events and fields (stable: fields may be added, none removed or changed):
- "event": "denied" (the moment a flow is dropped or rejected), "audited" (a rule in audit mode
  would have denied it; it passed), "end" (the flow left the table);
- "reason" (end only): "idle" (timed out), "closed" (FIN both ways or RST, then lingered),
  "evicted" (the table was full), "shutdown" (the worker stopped);
- "time": when the event happened, "start": when the flow's first packet came (RFC 3339, UTC,
  microseconds), "duration_s";
- "worker", "endpoint" (16 hex digits), "protocol" (IP protocol number), "src", "src_port",
  "dst", "dst_port" (the direction of the flow's first packet; ports null without ports, both the
  identifier for an ICMP echo);
- "packets_out", "bytes_out" (from src), "packets_in", "bytes_in" (to src): inner packets and
  their bytes (the inner IP packet, Geneve and the outer headers not counted);
- "verdict" ("pass", "drop", "reject"; "pending", "per-query" or "inspecting" for a flow not
  decided when it ended), "rule" (the deciding rule's name, "default" for policy.default, null
  when none), "audited" (names of the rules in audit mode that would have denied it), "name"
  (the TLS server name, HTTP Host or DNS question it showed, or null).
Sampling: with sample_allowed = N, 1 in N flows that passed is recorded; every denied one is.
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import orjson

from appliance.flowkey import describe
from appliance.flows import Flow
from appliance.flowverdict import DROP, NAMES, PASS_INSPECT, PASS_PLAIN, REJECT

DATAGRAM_BYTES = 60 * 1024  # records per datagram: under the 64 KiB a unix datagram may hold
_DENIED = frozenset({DROP, REJECT})
_PASSED = frozenset({PASS_PLAIN, PASS_INSPECT})
_GONE = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTCONN})
DEFAULT_RULE = -2


class FlowLog:
    """One worker's flow records, sent to the writer at each batch's end (module doc)."""

    def __init__(
        self, socket_path: Path, worker: int, sample_allowed: int, rule_names: tuple[str, ...]
    ) -> None:
        self.socket_path = str(socket_path)
        self.worker = worker
        self.sample_allowed = sample_allowed
        self.rule_names = rule_names
        self.sent = 0  # records the writer's socket took
        self.dropped = 0  # records it could not take (full, or no writer)
        self._pending: list[bytes] = []
        self._passed = 0  # flows that passed, for the sampling
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._connected = False
        # The monotonic clock to the wall clock: taken again at each flush, not per record.
        self._wall = time.time_ns() - time.monotonic_ns()
        self._second, self._second_text = -1, ""  # the last second stamped, and its text

    def close(self) -> None:
        self._sock.close()

    def denied(self, flow: Flow, now_ns: int, audited: tuple[int, ...] = ()) -> None:
        """A flow just decided: a record when it is denied, or passed only by audit mode."""
        if flow.verdict in _DENIED:
            self._add(flow, "denied", None, now_ns, audited)
        elif audited:
            self._add(flow, "audited", None, now_ns, audited)

    def ended(self, flow: Flow, reason: str, now_ns: int) -> None:
        """A flow left the table (or the worker stops): its record, unless sampled out."""
        if flow.verdict in _PASSED:
            self._passed += 1
            if self._passed % self.sample_allowed:
                return
        self._add(flow, "end", reason, now_ns, ())

    def _add(
        self, flow: Flow, event: str, reason: str | None, now_ns: int, audited: tuple[int, ...]
    ) -> None:
        endpoint, protocol, src, src_port, dst, dst_port = describe(flow.key)
        wall = self._wall
        record = {
            "event": event,
            "reason": reason,
            "time": self._stamp(now_ns + wall),
            "start": self._stamp(flow.created_ns + wall),
            "duration_s": round((now_ns - flow.created_ns) / 1e9, 6),
            "worker": self.worker,
            "endpoint": endpoint,
            "protocol": protocol,
            "src": src,
            "src_port": src_port,
            "dst": dst,
            "dst_port": dst_port,
            "packets_out": flow.fwd_packets,
            "bytes_out": flow.fwd_bytes,
            "packets_in": flow.rev_packets,
            "bytes_in": flow.rev_bytes,
            "verdict": NAMES.get(flow.verdict, str(flow.verdict)),
            "rule": self._rule(flow.rule),
            "audited": [self._rule(i) for i in audited],
            "name": flow.watch.name() if flow.watch is not None else None,
        }
        self._pending.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def _stamp(self, ns: int) -> str:
        """RFC 3339, UTC, microseconds. Measured (deploy/bench/flowlog_profile.py): 7.3 us a
        record with ipaddress and datetime's isoformat; 5.2 with IPv4 text by hand
        (flowkey.describe) and the second's text kept for the records after it."""
        seconds, micros = divmod(ns // 1000, 1_000_000)
        if seconds != self._second:
            self._second = seconds
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self._second_text}.{micros:06d}Z"

    def _rule(self, index: int) -> str | None:
        if index == DEFAULT_RULE:
            return "default"
        return self.rule_names[index] if 0 <= index < len(self.rule_names) else None

    def flush(self) -> None:
        """Send what the batch recorded; what the writer cannot take now is dropped, counted."""
        pending = self._pending
        if not pending:
            return
        self._wall = time.time_ns() - time.monotonic_ns()
        self._pending = []
        chunk: list[bytes] = []
        size = 0
        for line in pending:
            if size + len(line) > DATAGRAM_BYTES and chunk:
                self._send(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self._send(chunk)

    def _send(self, lines: list[bytes]) -> None:
        try:
            if not self._connected:
                self._sock.connect(self.socket_path)
                self._connected = True
            self._sock.send(b"".join(lines))
            self.sent += len(lines)
        except OSError as error:
            self.dropped += len(lines)
            if error.errno in _GONE:
                self._connected = False  # the writer's socket went away: connect again later
                self._sock.close()
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
