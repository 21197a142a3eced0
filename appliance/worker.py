"""The worker loop: receive a batch, decide each datagram, reply to GWLB in one batch.

The loop is deliberately flat: everything per packet is local-variable lookups, slicing and a call
to the pure `handle_datagram`. A datagram that is malformed is counted and skipped; it never stops
its neighbours in the batch. The receive waits at most the socket's timeout (1 s) so that the
heartbeat is stamped even when no traffic comes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from appliance import counters as cnt
from appliance.batchio import HEADROOM, MSG_TRUNC, SLOT_BYTES, ReceiveBatch, SendBatch
from appliance.counters import Counter
from appliance.datapath import Outcome, handle_datagram
from appliance.errors import Reason
from appliance.policy import Policy
from appliance.reply import ReplyHeaders
from appliance.sources import SourceFilter

_RULE_LAST = cnt.RULE_BASE + cnt.MAX_RULES - 1


def _no_heartbeat() -> None:
    pass


class Worker:
    """One data-path loop over its own UDP socket and raw socket."""

    def __init__(
        self,
        data_socket: socket.socket,
        raw_socket: socket.socket,
        policy: Policy,
        counters: memoryview,
        sources: SourceFilter | None = None,
        batch_size: int = 64,
        heartbeat: Callable[[], None] = _no_heartbeat,
    ) -> None:
        self.policy = policy  # replaced whole on reload: one attribute store, atomic
        self.counters = counters
        self.sources = sources
        self.heartbeat = heartbeat
        self._data_fd = data_socket.fileno()
        self._raw_fd = raw_socket.fileno()
        self._sockets = (data_socket, raw_socket)  # keep them open as long as we are
        self._rx = ReceiveBatch(batch_size)
        self._tx = SendBatch(batch_size)
        self._headers = ReplyHeaders()
        self.stopping = False

    def run(self) -> None:
        """Loop until `stopping` is set (by a signal handler); the batch in hand is finished."""
        while not self.stopping:
            self.run_once()

    def run_once(self) -> int:
        """Receive one batch (waiting at most the socket timeout) and answer it; return its size."""
        rx, c = self._rx, self.counters
        n = rx.receive(self._data_fd)
        self.heartbeat()
        if not n:
            return 0
        c[Counter.RECEIVED] += n
        c[Counter.BATCHES] += 1
        arena, policy, sources, tx, write_header = (
            rx.arena,
            self.policy,
            self.sources,
            self._tx,
            self._headers.write,
        )
        arena_address = rx.arena_address
        for i in range(n):
            flags, length = rx.result(i)
            slot = i * SLOT_BYTES
            start = slot + HEADROOM
            if flags & MSG_TRUNC:
                c[Counter.MALFORMED] += 1
                c[cnt.MALFORMED_BASE + Reason.DATAGRAM_TOO_BIG] += 1
                continue
            peer = rx.peer(i)
            address = peer[2:]
            if sources is not None and not sources(address):
                c[Counter.DISALLOWED_SOURCE] += 1
                continue
            outcome, detail, rewritten = handle_datagram(arena, start, start + length, policy)
            if outcome is Outcome.PASS:
                c[Counter.PASSED] += 1
            elif outcome is Outcome.REWRITE:
                assert rewritten is not None
                length = len(rewritten)
                arena[start : start + length] = rewritten  # same size slice: no resize
                c[Counter.REWRITTEN] += 1
            else:
                self._count_refusal(outcome, detail)
                continue
            write_header(arena, slot, rx.local(i), address, (peer[0] << 8) | peer[1], length)
            tx.add(arena_address + slot, HEADROOM + length, address)
        if tx.count:
            sent, failures = tx.flush(self._raw_fd)
            c[Counter.SENT] += sent
            for code in failures:
                c[Counter.SEND_ERRORS] += 1
                c[cnt.send_errno_index(code)] += 1
        return n

    def _count_refusal(self, outcome: Outcome, detail: int) -> None:
        c = self.counters
        if outcome is Outcome.MALFORMED:
            c[Counter.MALFORMED] += 1
            c[cnt.MALFORMED_BASE + detail] += 1
        elif outcome is Outcome.DROP:
            c[Counter.DROPPED] += 1
            c[min(cnt.RULE_BASE + detail, _RULE_LAST)] += 1
        elif outcome is Outcome.OVERSIZE:
            c[Counter.OVERSIZE] += 1
        else:
            c[Counter.UNREWRITABLE] += 1
