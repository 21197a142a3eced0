"""The appliance's exceptions, in one place.

    ValueError
     ├── appliance.errors.DecodeError   a datagram that is not a well-formed GWLB packet;
     │                                  the worker counts it by `reason` and drops it
     └── config.errors.ConfigError      a config file that cannot be used (file, where, reason)
    OSError
     └── appliance.errors.BootError     a worker cannot open what it needs (raw socket, bind)

The reasons are a closed enum so that every one of them has a fixed counter in the stats table.
"""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    """Why a datagram was refused. Values index the `malformed` counters; append only."""

    TRUNCATED = 0
    GENEVE_VERSION = 1
    GENEVE_OPTIONS_LENGTH = 2
    GENEVE_OAM = 3
    GENEVE_CRITICAL_OPTION = 4
    GENEVE_AWS_OPTION_LENGTH = 5
    GENEVE_MISSING_AWS_OPTION = 6
    GENEVE_PROTOCOL = 7
    IP_VERSION = 8
    IP_HEADER_LENGTH = 9
    IP_LENGTH_MISMATCH = 10
    IPV6_EXTENSION_CHAIN = 11
    TRANSPORT_LENGTH = 12
    DATAGRAM_TOO_BIG = 13


class DecodeError(ValueError):
    """A malformed datagram: which layer, at which byte offset, and why."""

    def __init__(self, layer: str, offset: int, reason: Reason, detail: str = "") -> None:
        self.layer = layer
        self.offset = offset
        self.reason = reason
        self.detail = detail
        text = f"{layer} at offset {offset}: {reason.name.lower()}"
        super().__init__(f"{text} ({detail})" if detail else text)


class BootError(OSError):
    """A worker cannot start: the supervisor must stop with this reason, not crash-loop."""
