"""Steady UDP traffic from b to a through the bed, made and counted from this process.

Sockets are created inside the namespaces (appliance_proc.socket_in); a sender thread paces
datagrams over several flows and a receiver thread records what arrives. Both are bounded in count
and in time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from appliance_proc import socket_in
from testbed import Testbed


class UdpStream:
    def __init__(
        self,
        tb: Testbed,
        flows: int,
        dport: int,
        payload: Callable[[int], bytes],
        rate_pps: int,
        limit: int,
        first_sport: int = 20000,
    ) -> None:
        self.payload, self.rate_pps, self.limit = payload, rate_pps, limit
        self.receiver = socket_in(tb.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind((tb.a_ip4, dport))
        self.receiver.settimeout(0.2)
        self.senders = []
        for f in range(flows):
            sock = socket_in(tb.ns_b, socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((tb.b_ip4, first_sport + f))
            self.senders.append(sock)
        self.target = (tb.a_ip4, dport)
        self.sent = 0
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]

    def start(self) -> UdpStream:
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        start = time.monotonic()
        deadline = start + self.limit / self.rate_pps + 30  # bounded even if pacing slips
        while self.sent < self.limit and not self._stop.is_set() and time.monotonic() < deadline:
            sock = self.senders[self.sent % len(self.senders)]
            sock.sendto(self.payload(self.sent), self.target)
            self.sent += 1
            delay = start + self.sent / self.rate_pps - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # pacing, not synchronisation

    def _receive(self) -> None:
        """Until stopped, or until everything sent has arrived once the sender is done."""
        deadline = time.monotonic() + self.limit / self.rate_pps + 60
        sender = self._threads[0]
        while time.monotonic() < deadline and not self._stop.is_set():
            if not sender.is_alive() and len(self.received) >= self.sent:
                return
            try:
                self.received.append(self.receiver.recv(65535))
            except TimeoutError:
                continue

    def finish(self, settle_s: float = 1.0) -> None:
        """Wait for the sender, give stragglers up to settle_s to arrive, stop everything."""
        self._threads[0].join()
        self._threads[1].join(settle_s)  # returns as soon as the last datagram arrived
        self._stop.set()
        self._threads[1].join(5)
        for sock in (self.receiver, *self.senders):
            sock.close()
