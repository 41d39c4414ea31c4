"""Notifications enter the outbox in the transaction that changes the run.

``enqueue_transition`` is called by ``bot.db.runlog.transition``: it reads the endpoints (a small
table), decides purely which of them want which notification types, and inserts their rows in
one statement. Nothing here touches the network, so a failing endpoint costs a run nothing.
After the commit the process's waker (``install_waker``; the worker's enqueues the send job)
is called; without one, the sweep sends them within ``notify.sweep_seconds``.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.engine import SessionFactory
from bot.db.models import Notification, Repository, Run, WebhookEndpoint
from bot.domain.states import RunState
from bot.notify.settings import NotificationType

WAKE_KEY = "bosun.notify.wake"

_TERMINAL = frozenset(
    {RunState.MERGED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.REJECTED}
)


def types_of(target: RunState) -> list[NotificationType]:
    """The notification types a move to ``target`` produces."""
    types: list[NotificationType] = ["run.state_changed"]
    if target is RunState.REVIEW_READY:
        types.append("run.review_ready")
    if target in _TERMINAL:
        types.append("run.finished")
    return types


def repo_matches(patterns: Iterable[str], repository: str) -> bool:
    """Whether ``repository`` is one of ``patterns`` (``owner/name`` or ``owner/*``; none: all)."""
    patterns = [p.lower() for p in patterns]
    return not patterns or any(fnmatch.fnmatchcase(repository.lower(), p) for p in patterns)


def wanted(events: Iterable[str], repos: Iterable[str], type_: str, repository: str) -> bool:
    events = list(events)
    return (not events or type_ in events) and repo_matches(repos, repository)


def install_waker(sessions: SessionFactory, wake: Callable[[], None]) -> None:
    """Call ``wake`` after each commit of a session of ``sessions`` that wrote notifications."""
    sessions.configure(info={WAKE_KEY: wake})


async def enqueue_transition(
    session: AsyncSession, run: Run, previous: RunState, target: RunState, seq: int
) -> int:
    """Write the notifications of ``run``'s move from ``previous`` to ``target`` (its ``status``
    event ``seq``) for every endpoint that wants them; returns how many."""
    endpoints = (
        await session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.events, WebhookEndpoint.repos)
        )
    ).all()
    if not endpoints:
        return 0
    repository = await session.get(Repository, run.repository_id)
    full_name = repository.full_name if repository is not None else ""
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "endpoint_id": endpoint_id,
            "delivery_id": str(uuid.uuid4()),
            "type": type_,
            "run_id": run.id,
            "repository": full_name,
            "state": target.value,
            "previous_state": previous.value,
            "seq": seq,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for type_ in types_of(target)
        for endpoint_id, events, repos in endpoints
        if wanted(events or [], repos or [], type_, full_name)
    ]
    if not rows:
        return 0
    await session.execute(insert(Notification), rows)
    wake = session.info.get(WAKE_KEY)
    if callable(wake):
        event.listen(session.sync_session, "after_commit", lambda _s: wake(), once=True)
    return len(rows)
