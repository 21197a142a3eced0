"""Worker process states, as supervisord names them, and the edges between them.

STOPPED ──start──▶ STARTING ──first heartbeat──▶ RUNNING
   ▲                 │  │                          │ │
   │          died   │  └────stop────┐       died  │ └──stop──┐
   │    before ready ▼               ▼             ▼          ▼
   ├──stop── BACKOFF ◀──┐         STOPPING       EXITED    STOPPING ──reaped──▶ STOPPED
   │          │  │      │            │             │
   │  delay   │  │ retries spent     └─reaped─▶ STOPPED
   │  passed  ▼  ▼                               (EXITED restarts at once: STARTING)
   │    STARTING  FATAL ──start──▶ STARTING
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
    State.BACKOFF: frozenset({State.STARTING, State.FATAL, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED}),
    State.FATAL: frozenset({State.STARTING, State.STOPPED}),
}


class StateError(RuntimeError):
    """A transition that the state machine does not have: a bug, never an operator error."""
