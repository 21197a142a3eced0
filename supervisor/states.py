"""Worker process states, as supervisord names them, and the edges between them (EDGES is the
code's truth; this drawing follows it edge for edge).

STOPPED ──wanted──▶ STARTING ──first heartbeat──▶ RUNNING ──died──▶ EXITED ──restart──▶ STARTING
                     │ │ │                          │                 │
                     │ │ └──stop──▶ STOPPING ◀─stop─┘                 └──stop──▶ STOPPED
                     │ │              └──reaped──▶ STOPPED
                     │ └──died before its first heartbeat──▶ BACKOFF ──delay passed──▶ STARTING
                     │                                         └──stop──▶ STOPPED
                     └──cannot boot (exit 3), or its retries spent──▶ FATAL ──start──▶ STARTING
                                                                        └──stop──▶ STOPPED
"""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    """Values are supervisord's, so operators who know it read ours the same way."""

    STOPPED = 0
    STARTING = 10
    RUNNING = 20
    BACKOFF = 30
    STOPPING = 40
    EXITED = 100
    FATAL = 200


EDGES: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    # STARTING: the first heartbeat proves it runs; a death before that is a quick death.
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.STOPPING, State.FATAL}),
    State.RUNNING: frozenset({State.EXITED, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED}),
    State.FATAL: frozenset({State.STARTING, State.STOPPED}),
}


class StateError(RuntimeError):
    """A transition that the state machine does not have: a bug, never an operator error."""
