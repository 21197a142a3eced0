"""The worker's batch I/O seam: what the data-path loop needs from whatever moves its datagrams.

Why per batch and not per datagram: the loop must stay flat (locals, slicing, one struct read per
packet), and a method call per datagram would cost as much as the rest of a pass-through. So a
backend hands the loop, once per batch, the buffer the datagrams lie in, where each one starts,
every datagram's (flags, length), sender and local address as flat tuples (one struct call each),
and a list the loop writes reply lengths into; `flush` then does whatever per-reply work the
backend needs (outer headers, message arrays) and sends. appliance.batchio (recvmmsg in, a raw
socket out) is one backend; a memory-mapped ring can be another; the unit tests have a fake.

The contract, for the n datagrams of a batch (`receive()` returned n; i < n):
- datagram i is buffer[start:start + length], start = starts(n)[i], length from results(n). The
  ROOM bytes from its start belong to it: the fast path reads its first 93 bytes whatever its
  length, and a rewrite grows it in place. What lies past start + length (an earlier datagram's
  bytes) must decide nothing.
- TRUNCATED set in its flags: it did not fit in its ROOM and arrived cut; it is never answered.
- replies[i] = length queues a reply: datagram i's bytes as they then lie, `length` of them from
  its start, back to its sender from the address it came to (DESIGN.md §1). A datagram whose
  entry stays NO_REPLY gets none. `flush(n)` sends the replies and leaves every entry NO_REPLY.
- extra(i, datagram) queues one more datagram (rare: the reset toward a server when a flow is
  refused by name, appliance/answer.py) to datagram i's sender the same way; `flush` sends it
  after the replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

TRUNCATED = 0x20  # MSG_TRUNC's value, so recvmmsg's msg_flags serve as they come
NO_REPLY = 0  # no datagram worth answering is empty
# A jumbo frame's UDP payload; also room for any rewrite, which stops at GWLB's 8500 inner bytes
# behind a Geneve header of at most 8 + 252 bytes.
ROOM = 9001


class BatchIO(Protocol):
    """Receives datagrams in batches and sends the replies the loop queued (module doc)."""

    size: int  # the most datagrams one receive returns
    buffer: bytearray  # where every datagram lies; the loop rewrites datagrams in place
    replies: list[int]  # reply length per datagram, written by the loop; NO_REPLY: none

    def receive(self) -> int:
        """Wait at most the backend's timeout (1 s or less: the heartbeat depends on it) for
        datagrams; return how many arrived, 0 when none did."""
        ...

    def starts(self, n: int) -> Sequence[int]:
        """Where each of the first n datagrams starts in `buffer`."""
        ...

    def results(self, n: int) -> tuple[int, ...]:
        """(flags, length) of the first n datagrams, flattened: f0, len0, f1, len1, ... The flags
        are TRUNCATED and whatever else the backend reports, all below 2**32."""
        ...

    def senders(self, n: int) -> tuple[int, ...]:
        """(UDP port, IPv4 address) of the first n datagrams' senders, flattened, as integers."""
        ...

    def destinations(self, n: int) -> tuple[int, ...]:
        """The local IPv4 address each of the first n datagrams arrived on, as integers."""
        ...

    def extra(self, i: int, datagram: bytes) -> None:
        """Queue `datagram` (Geneve onwards) to datagram i's sender, as a reply goes."""
        ...

    def flush(self, n: int) -> tuple[int, list[int]]:
        """Send the replies queued for the first n datagrams, then the extras, and clear both
        queues: (datagrams sent, errno of each one the kernel refused)."""
        ...

    @property
    def rx_dropped(self) -> int:
        """Datagrams the kernel dropped before the loop could have them (nearly all for a full
        receive buffer), counted over the socket's life as of the last batch received; 0 from a
        backend that cannot know."""
        ...
