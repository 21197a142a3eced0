"""What a name parser makes of a flow's first bytes: one small value shared by TLS, HTTP and DNS.

Why one shape for all three: the flow table feeds each new flow's first bytes to one parser and
then acts on the outcome the same way whatever the protocol: wait for more bytes, decide on the
name, or treat the flow as not that protocol / as broken. The two failures are kept apart on
purpose: OTHER_PROTOCOL means the first bytes can never begin this protocol (a policy may simply
not apply), MALFORMED means they began it and then broke its rules (a policy may refuse what it
cannot read, since a server might read it differently).
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Status(enum.Enum):
    NEED_MORE = "need_more"  # consistent so far: call again with at least `needed` bytes
    COMPLETE = "complete"  # the message is whole: `name` is its name, or None if it has none
    OTHER_PROTOCOL = "other_protocol"  # the first bytes cannot start this protocol's message
    MALFORMED = "malformed"  # it started as one, then its lengths or syntax went wrong


class NameResult(NamedTuple):
    status: Status
    name: str | None = None  # COMPLETE only: lower-case ASCII, no trailing dot
    needed: int = 0  # NEED_MORE only: a lower bound on the total bytes the message takes
    ech: bool = False  # TLS only: the ClientHello has an encrypted_client_hello extension


OTHER_PROTOCOL = NameResult(Status.OTHER_PROTOCOL)
MALFORMED = NameResult(Status.MALFORMED)


def need_more(needed: int) -> NameResult:
    return NameResult(Status.NEED_MORE, needed=needed)


def complete(name: str | None, ech: bool = False) -> NameResult:
    return NameResult(Status.COMPLETE, name=name, ech=ech)
