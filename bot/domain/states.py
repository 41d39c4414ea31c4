"""The states a run and a delivery go through (SPEC §4.1): plain values and the pure state machine,
shared by the decisions, the database models and every surface."""

from __future__ import annotations

import enum


class RunState(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    GATES = "gates"
    REVIEW_READY = "review_ready"
    APPROVED = "approved"
    MERGED = "merged"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"


class DeliveryStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


S = RunState

TERMINAL: frozenset[RunState] = frozenset(
    {S.MERGED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.REJECTED}
)
ACTIVE: frozenset[RunState] = frozenset({S.QUEUED, S.PREPARING, S.RUNNING, S.GATES})
"""States in which a run occupies a worker (or waits for one)."""

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.QUEUED: frozenset({S.PREPARING, S.CANCELLED, S.FAILED}),
    S.PREPARING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.RUNNING: frozenset({S.GATES, S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.GATES: frozenset({S.REVIEW_READY, S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.REVIEW_READY: frozenset({S.APPROVED, S.REJECTED, S.FAILED}),
    S.APPROVED: frozenset({S.MERGED, S.REVIEW_READY, S.FAILED, S.REJECTED}),
}


def can_transition(current: RunState, target: RunState) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def is_terminal(state: RunState) -> bool:
    return state in TERMINAL
