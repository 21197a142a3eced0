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
from appliance.batchio import (
    HEADROOM,
    IOV_WORD,
    MSG_TRUNC,
    MSG_WORDS,
    NAME_WORD,
    SLOT_BYTES,
    ReceiveBatch,
    SendBatch,
)
from appliance.counters import Counter
from appliance.datapath import Outcome, decide_in_place, decide_parsed
from appliance.errors import Reason
from appliance.fastpath import FastPath
from appliance.geneve import GENEVE_PORT
from appliance.policy import Policy
from appliance.reply import DONT_FRAGMENT, HEADER, TTL_PROTOCOL, VERSION_IHL_TOS
from appliance.sources import SourceFilter

_RULE_LAST = cnt.RULE_BASE + cnt.MAX_RULES - 1
# Plain ints: an IntEnum member lookup per packet costs more than the increment it indexes.
_RECEIVED, _SENT, _PASSED, _REWRITTEN, _DROPPED, _BATCHES, _DISALLOWED = (
    int(Counter.RECEIVED),
    int(Counter.SENT),
    int(Counter.PASSED),
    int(Counter.REWRITTEN),
    int(Counter.DROPPED),
    int(Counter.BATCHES),
    int(Counter.DISALLOWED_SOURCE),
)
_RULE_BASE, _MAX_RULES = cnt.RULE_BASE, cnt.MAX_RULES
_PASS, _REWRITE, _DROP = Outcome.PASS, Outcome.REWRITE, Outcome.DROP
_MSG_WORDS, _NAME_WORD, _IOV_WORD = MSG_WORDS, NAME_WORD, IOV_WORD


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
        batch_size: int = 128,
        heartbeat: Callable[[], None] = _no_heartbeat,
    ) -> None:
        self.policy = policy  # replaced whole on reload (the setter recompiles the fast path)
        self.counters = counters
        self.sources = sources
        self.heartbeat = heartbeat
        self._data_fd = data_socket.fileno()
        self._raw_fd = raw_socket.fileno()
        self._sockets = (data_socket, raw_socket)  # keep them open as long as we are
        self._rx = ReceiveBatch(batch_size)
        self._tx = SendBatch(self._rx)
        # Per slot: index, where its reply length goes, the slot's start and the datagram's.
        self._slots = [
            (i, SendBatch.length_index(i), i * SLOT_BYTES, i * SLOT_BYTES + HEADROOM)
            for i in range(batch_size)
        ]
        self.stopping = False

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # Between two batches (the worker is single-threaded), so no packet sees half of it.
        self._fast = FastPath(policy)
        self._policy = policy

    def run(self) -> None:
        """Loop until `stopping` is set (by a signal handler); the batch in hand is finished."""
        while not self.stopping:
            self.run_once()

    def run_once(self) -> int:
        """Receive one batch (waiting at most the socket timeout) and answer it; return its size."""
        n = self._rx.receive(self._data_fd)
        self.heartbeat()
        if n:
            self.process(n)
            self.flush()
        return n

    def process(self, n: int) -> None:
        """Decide the n datagrams of the receive batch and queue the replies.

        The hot loop: everything is a local, each slot's offsets are precomputed, the kernel's
        results for the whole batch are read with one struct call per field, and most packets
        are settled by the fast path's one or two struct reads.
        """
        rx, c = self._rx, self.counters
        arena = rx.arena
        classify, policy, sources = self._fast.classify, self._policy, self.sources
        tx = self._tx
        write_header, lengths = HEADER.pack_into, tx.lengths  # reply.py: the header's layout
        words, name_pointers, iov_pointers = tx.words, tx.name_pointers, tx.iov_pointers
        pass_, rewrite, drop = _PASS, _REWRITE, _DROP
        queued = 0
        truncated, headroom = MSG_TRUNC, HEADROOM
        passed = rewritten = 0
        sender_fields = rx.senders(n)
        if sources is not None and all(map(sources, set(sender_fields[1::2]))):
            sources = None  # every sender in the batch is allowed (the usual case): no check each
        results, senders = iter(rx.results(n)), iter(sender_fields)
        for (i, length_at, slot, start), flags, length, port, peer, local in zip(
            self._slots[:n], results, results, senders, senders, rx.destinations(n), strict=True
        ):
            if flags & truncated:
                self._refuse(Outcome.MALFORMED, Reason.DATAGRAM_TOO_BIG)
                continue
            if sources is not None and not sources(peer):
                c[_DISALLOWED] += 1
                continue
            parsed = classify(arena, start, length)
            if parsed is True:
                passed += 1
            else:
                if parsed is None:
                    outcome, detail, end = decide_in_place(arena, start, start + length, policy)
                else:
                    outcome, detail, end = decide_parsed(arena, parsed, policy)
                if outcome is pass_:
                    passed += 1
                elif outcome is rewrite:
                    length = end - start  # rewritten in its slot, which has room to grow
                    rewritten += 1
                elif outcome is drop:
                    c[_DROPPED] += 1
                    c[_RULE_BASE + detail if detail < _MAX_RULES else _RULE_LAST] += 1
                    continue
                else:
                    self._refuse(outcome, detail)
                    continue
            write_header(
                arena,
                slot,
                VERSION_IHL_TOS,
                headroom + length,
                0,
                DONT_FRAGMENT,
                TTL_PROTOCOL,
                0,  # the kernel fills in the header checksum (reply.py)
                local,
                peer,
                port,
                GENEVE_PORT,
                length + 8,
                0,
            )
            lengths[length_at] = headroom + length
            if queued != i:  # keep the messages contiguous after a dropped datagram (SendBatch)
                at = queued * _MSG_WORDS
                words[at + _NAME_WORD] = name_pointers[i]
                words[at + _IOV_WORD] = iov_pointers[i]
            queued += 1
        tx.count = queued
        if queued != n:
            tx.moved = queued
        c[_RECEIVED] += n
        c[_BATCHES] += 1
        c[_PASSED] += passed
        c[_REWRITTEN] += rewritten

    def flush(self) -> None:
        """Send the queued replies in one sendmmsg (more only when the kernel refuses one)."""
        if not self._tx.count:
            return
        c = self.counters
        sent, failures = self._tx.flush(self._raw_fd)
        c[_SENT] += sent
        for code in failures:
            c[Counter.SEND_ERRORS] += 1
            c[cnt.send_errno_index(code)] += 1

    def _refuse(self, outcome: Outcome, detail: int) -> None:
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
