"""The run state machine on the database and its append-only event log (SPEC §4.1, §4.3); the
states and the allowed moves themselves are ``bot.domain.states``.

Rules: exactly one terminal state; cancel only before ``review_ready``; approve only in
``review_ready``; every transition is a ``status`` event with actor and reason. Every
transition bumps the run's ``version``, so a review decision made on the run as it was
before cannot be committed after it (``jobs.review.step``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from bot.db.models import Run, RunEvent
from bot.domain.states import ACTIVE, TERMINAL, RunState, can_transition
from bot.errors import ConflictError, NotFoundError
from bot.notify.outbox import enqueue_transition

EVENT_KINDS = frozenset(
    {
        "status",
        "log",
        "progress",
        "command",
        "tool",
        "message",
        "gate_result",
        "artifact",
        "cost",
        "policy",
        "error",
        "steer",
        "steer_delivered",
        "egress",
    }
)


class IllegalTransition(ConflictError):
    """A transition the state machine does not allow."""


def new_run_id() -> str:
    """A short, sortable, unguessable run id: ``r<time-hex><random-hex>``."""
    return f"r{int(datetime.now(UTC).timestamp() * 1000):x}{secrets.token_hex(4)}"


async def append_event(
    session: AsyncSession, run_id: str, kind: str, data: dict[str, Any] | None = None
) -> RunEvent:
    """Append one event with the run's next ``seq`` (atomic on SQLite and PostgreSQL)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    seq = (
        await session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(last_seq=Run.last_seq + 1)
            .returning(Run.last_seq)
        )
    ).scalar_one_or_none()
    if seq is None:
        raise NotFoundError(f"run {run_id} does not exist")
    event = RunEvent(run_id=run_id, seq=seq, kind=kind, data=data or {})
    session.add(event)
    await session.flush()
    return event


async def append_events(
    session: AsyncSession, run_id: str, events: list[tuple[str, dict[str, Any]]]
) -> list[RunEvent]:
    """Append ``events`` (kind, data) in order with the run's next ``seq`` numbers: one
    statement takes the numbers, one insert writes the rows."""
    for kind, _ in events:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
    if not events:
        return []
    last = (
        await session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(last_seq=Run.last_seq + len(events))
            .returning(Run.last_seq)
        )
    ).scalar_one_or_none()
    if last is None:
        raise NotFoundError(f"run {run_id} does not exist")
    first = last - len(events) + 1
    rows = [
        RunEvent(run_id=run_id, seq=first + i, kind=kind, data=data or {})
        for i, (kind, data) in enumerate(events)
    ]
    session.add_all(rows)
    await session.flush()
    return rows


async def transition(
    session: AsyncSession,
    run: Run,
    target: RunState,
    *,
    actor: str,
    reason: str = "",
    **extra: Any,
) -> RunEvent:
    """Move ``run`` to ``target`` or raise ``IllegalTransition``; records a ``status`` event."""
    current = run.state
    if not can_transition(current, target):
        raise IllegalTransition(f"run {run.id}: {current.value} → {target.value} is not allowed")
    now = datetime.now(UTC)
    since = run.state_since or run.created_at  # when the run entered ``current``
    values: dict[str, Any] = {"state": target, "version": Run.version + 1, "state_since": now}
    if target is RunState.PREPARING and run.started_at is None:
        values["started_at"] = now
    if target is RunState.REVIEW_READY and current in ACTIVE:
        values["head_since"] = now  # the head the pipeline published is reviewable from now
    if target in TERMINAL:
        values["finished_at"] = now
        values["reason"] = reason or None
    # Compare-and-set: a concurrent writer that moved the run first wins, we raise.
    version = (
        await session.execute(
            update(Run)
            .where(Run.id == run.id, Run.state == current)
            .values(**values)
            .returning(Run.version)
        )
    ).scalar_one_or_none()
    if version is None:
        await session.refresh(run)
        raise IllegalTransition(
            f"run {run.id} moved to {run.state.value} meanwhile; {target.value} refused"
        )
    for key, value in values.items():
        if key != "version":
            set_committed_value(run, key, value)
    set_committed_value(run, "version", version)
    data = {"from": current.value, "to": target.value, "actor": actor, "reason": reason, **extra}
    if since is not None:  # how long the run was in ``from`` (for /metrics)
        data["in_state_s"] = round(max(0.0, (now - _utc(since)).total_seconds()), 3)
    status = await append_event(session, run.id, "status", data)
    await enqueue_transition(session, run, current, target, status.seq)
    return status


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they are stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def get_run(session: AsyncSession, run_id: str) -> Run:
    run = await session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist")
    return run


async def events_since(
    session: AsyncSession, run_id: str, after_seq: int = 0, limit: int = 500
) -> list[RunEvent]:
    rows = await session.execute(
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.seq > after_seq)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return list(rows.scalars())
