"""The worker loop: receive a batch, decide each datagram, reply to GWLB in one batch.

The loop talks to its I/O only through appliance.batch.BatchIO, once per batch: it gets the buffer,
where each datagram starts and the kernel's results as flat tuples, and queues a reply by storing
its length into `replies`; the backend writes the outer headers and sends when it flushes.
Per packet the loop is flat: local-variable lookups, the fast path's one or two struct reads
(fastpath.FastPath.classify), and only for a packet some rule may touch the policy
(datapath.decide_parsed) or the full parse (datapath.decide_in_place). A datagram that is
malformed is counted and skipped; it never stops its neighbours in the batch. The receive waits at
most the socket's timeout (1 s) so that the heartbeat is stamped even when no traffic comes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from appliance import counters as cnt
from appliance.batch import TRUNCATED, BatchIO
from appliance.batchio import SocketBatchIO
from appliance.counters import Counter
from appliance.datapath import Outcome, decide_in_place, decide_parsed, reject_in_place
from appliance.errors import Reason
from appliance.fastpath import FastPath
from appliance.policy import Policy
from appliance.reject import RejectBudget
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
_REJECTED, _REJECTS_SENT, _REJECTS_SUPPRESSED, _DEFAULT_DECIDED = (
    int(Counter.REJECTED),
    int(Counter.REJECTS_SENT),
    int(Counter.REJECTS_SUPPRESSED),
    int(Counter.DEFAULT_DECIDED),
)
_PASS, _REWRITE, _DROP, _REJECT = Outcome.PASS, Outcome.REWRITE, Outcome.DROP, Outcome.REJECT
# A flag of our own, above the backend's 32 bits: the sender is not on the allow-list. Marking it
# per batch leaves the loop one flags test for both reasons to skip a datagram.
_FOREIGN = 1 << 32
_SKIP = TRUNCATED | _FOREIGN


def _no_heartbeat() -> None:
    pass


class Worker:
    """One data-path loop over its own batch I/O (by default its UDP socket and a raw socket)."""

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
        """A worker on its slot's UDP socket and a raw socket (how the supervisor boots one)."""
        io = SocketBatchIO(data_socket, raw_socket, batch_size)
        self._setup(io, policy, counters, sources, heartbeat)

    @classmethod
    def over(
        cls,
        io: BatchIO,
        policy: Policy,
        counters: memoryview,
        sources: SourceFilter | None = None,
        heartbeat: Callable[[], None] = _no_heartbeat,
    ) -> Worker:
        """A worker on any batch I/O backend (a fake in tests, a memory-mapped ring)."""
        worker = cls.__new__(cls)
        worker._setup(io, policy, counters, sources, heartbeat)
        return worker

    def _setup(
        self,
        io: BatchIO,
        policy: Policy,
        counters: memoryview,
        sources: SourceFilter | None,
        heartbeat: Callable[[], None],
    ) -> None:
        self.io = io
        self.policy = policy  # replaced whole on reload (the setter recompiles the fast path)
        self.counters = counters
        self.sources = sources
        self.heartbeat = heartbeat
        self.stopping = False
        self._pending = 0  # datagrams processed whose replies are not flushed yet

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # Between two batches (the worker is single-threaded), so no packet sees half of it.
        self._fast = FastPath(policy)
        self._policy = policy
        rate = policy.reject_per_second
        budget = getattr(self, "_budget", None)
        if budget is None or budget.per_second != rate:
            # A tenth of a second's worth at once: a port scan's handful of SYNs in one batch
            # all get their RST; a flood gets at most rate + burst in its first second.
            self._budget = RejectBudget(rate, max(1, rate // 10), time.monotonic_ns())

    def run(self) -> None:
        """Loop until `stopping` is set (by a signal handler); the batch in hand is finished."""
        while not self.stopping:
            self.run_once()

    def run_once(self) -> int:
        """Receive one batch (waiting at most the socket timeout) and answer it; return its size."""
        n = self.io.receive()
        self.heartbeat()
        if n:
            self.process(n)
            self.flush()
        return n

    def process(self, n: int) -> None:
        """Decide the first n datagrams of the batch and queue their replies (flush sends them).

        The hot loop: everything is a local, the batch's starts and results come as flat tuples
        (one call each per batch), most packets are settled by the fast path's one or two struct
        reads, and queueing a reply is one list store.
        """
        io, c = self.io, self.counters
        buffer, replies = io.buffer, io.replies
        classify, policy = self._fast.classify, self._policy
        pass_, rewrite, drop, reject, skip = _PASS, _REWRITE, _DROP, _REJECT, _SKIP
        passed = rewritten = 0
        results = io.results(n)
        if self.sources is not None:
            results = _mark_foreign(results, io.senders(n), self.sources)
        flat = iter(results)
        for i, start, flags, length in zip(range(n), io.starts(n), flat, flat, strict=True):
            if flags & skip:
                self._skip(flags)
                continue
            parsed = classify(buffer, start, length)
            if parsed is True:
                passed += 1
            else:
                if parsed is None:
                    outcome, detail, end = decide_in_place(buffer, start, start + length, policy)
                else:
                    outcome, detail, end = decide_parsed(buffer, parsed, policy)
                if outcome is pass_:
                    passed += 1
                elif outcome is rewrite:
                    length = end - start  # rewritten where it lies: its ROOM has space to grow
                    rewritten += 1
                elif outcome is drop:
                    c[_DROPPED] += 1
                    self._count_rule(detail)
                    continue
                elif outcome is reject:
                    answer = self._reject(buffer, start, start + length, detail)
                    if answer is None:
                        continue
                    length = answer - start  # the answer to the sender, written over the packet
                else:
                    self._refuse(outcome, detail)
                    continue
            replies[i] = length
        self._pending = n
        c[_RECEIVED] += n
        c[_BATCHES] += 1
        c[_PASSED] += passed
        c[_REWRITTEN] += rewritten

    def flush(self) -> None:
        """Send the queued replies (in one sendmmsg on the socket backend)."""
        n, self._pending = self._pending, 0
        if not n:
            return
        c = self.counters
        sent, failures = self.io.flush(n)
        c[_SENT] += sent
        for code in failures:
            c[Counter.SEND_ERRORS] += 1
            c[cnt.send_errno_index(code)] += 1

    def _count_rule(self, rule: int) -> None:
        """A hit of the deciding rule, or of policy.default (rule < 0)."""
        if rule < 0:
            self.counters[_DEFAULT_DECIDED] += 1
        else:
            self.counters[_RULE_BASE + rule if rule < _MAX_RULES else _RULE_LAST] += 1

    def _reject(self, buffer: bytearray, start: int, end: int, rule: int) -> int | None:
        """Count a reject and turn the datagram into the answer to its sender: its new end, or
        None when nothing is sent (nothing may answer it, or the ceiling was reached)."""
        c = self.counters
        c[_REJECTED] += 1
        self._count_rule(rule)
        budget = self._budget
        answer = reject_in_place(buffer, start, end, lambda: budget.allow(time.monotonic_ns()))
        c[_REJECTS_SENT if answer is not None else _REJECTS_SUPPRESSED] += 1
        return answer

    def _skip(self, flags: int) -> None:
        if flags & TRUNCATED:
            self._refuse(Outcome.MALFORMED, Reason.DATAGRAM_TOO_BIG)
        else:
            self.counters[_DISALLOWED] += 1

    def _refuse(self, outcome: Outcome, detail: int) -> None:
        c = self.counters
        if outcome is Outcome.MALFORMED:
            c[Counter.MALFORMED] += 1
            c[cnt.MALFORMED_BASE + detail] += 1
        elif outcome is Outcome.DROP:
            c[Counter.DROPPED] += 1
            self._count_rule(detail)
        elif outcome is Outcome.OVERSIZE:
            c[Counter.OVERSIZE] += 1
        else:
            c[Counter.UNREWRITABLE] += 1


def _mark_foreign(
    results: tuple[int, ...], senders: tuple[int, ...], sources: SourceFilter
) -> tuple[int, ...]:
    """`results` with _FOREIGN set in the flags of each datagram whose sender the allow-list
    refuses. Each distinct sender is asked once per batch; when all are allowed (the usual case)
    the loop gets `results` as they are and never looks at a sender."""
    peers = senders[1::2]
    if all(map(sources, set(peers))):
        return results
    marked = list(results)
    for i, peer in enumerate(peers):
        if not sources(peer):
            marked[2 * i] |= _FOREIGN
    return tuple(marked)
