"""One serialised decision per run (SPEC §8): every command, push and button on a run is
decided against the run as it is *now*, and its effects applied, one at a time.

Two mechanisms, one inside the other:

* **A per-run lock** (Redis, shared by every worker on every host): a step reads the run,
  decides (``bot.domain.review``, pure), commits and applies the effects — GitHub calls included,
  the merge among them — while holding it, so a ``/reject`` that arrives while a merge call is in
  flight waits for the merge's outcome and answers it honestly. The lease is renewed while the
  step runs. A step that cannot get the lock within ``LOCK_WAIT_SECONDS`` raises ``RunBusy``
  and its delivery is retried later (``jobs.deliveries.process``).
* **An optimistic version check**: a decision commits with ``claim(session, run_id, version)``
  first, which bumps ``runs.version`` only if it is still the version the decision was made
  on (state transitions bump it too, ``bot.db.runlog.transition``). A decision that lost a race —
  the lease lapsed, or something outside the review loop moved the run — raises ``StaleRun``
  before anything is written, and ``serialised`` decides again on the new state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from redis.asyncio.lock import Lock
from redis.exceptions import LockError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Delivery, Run
from bot.domain.review import RunSnapshot
from bot.errors import ConflictError
from jobs.context import JobContext
from jobs.review.records import read_run

log = structlog.get_logger("jobs.review.step")

T = TypeVar("T")

LOCK_LEASE_SECONDS = 30.0
"""How long a holder keeps the lock without renewing it (renewed every third of it)."""
LOCK_WAIT_SECONDS = 20.0
"""How long a step waits for the lock before its delivery is retried later instead."""
LOCK_POLL_SECONDS = 0.005
REDECIDE_LIMIT = 5
"""Decisions made again in one step when the run keeps moving under them."""


class RunBusy(ConflictError):
    """Another step held the run's lock for longer than a step waits."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is busy: another decision on it is still being applied")
        self.run_id = run_id


class StaleRun(ConflictError):
    """The run changed between the read a decision was made on and its commit."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} changed while a decision on it was being made")
        self.run_id = run_id


@contextlib.asynccontextmanager
async def run_lock(
    bosun: JobContext, run_id: str, *, wait: float = LOCK_WAIT_SECONDS
) -> AsyncIterator[None]:
    """Hold ``run_id``'s review lock (waiting up to ``wait`` seconds, else ``RunBusy``)."""
    lock = bosun.services.redis.lock(
        bosun.settings.redis.key("review", run_id),
        timeout=LOCK_LEASE_SECONDS,
        sleep=LOCK_POLL_SECONDS,
        blocking_timeout=wait,
        thread_local=False,
    )
    if not await lock.acquire():
        raise RunBusy(run_id)
    renewal = asyncio.create_task(_renew(lock, run_id))
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        try:
            await lock.release()
        except LockError:  # the lease lapsed: the version check kept the decisions honest
            log.warning("run_lock_lapsed", run_id=run_id)


async def _renew(lock: Lock, run_id: str) -> None:
    while True:
        await asyncio.sleep(LOCK_LEASE_SECONDS / 3)
        try:
            await lock.reacquire()
        except LockError:
            log.warning("run_lock_renewal_failed", run_id=run_id)
            return


async def claim(session: AsyncSession, run_id: str, version: int) -> int:
    """The first write of a transaction that commits a decision made on ``version``: bump the
    run's version if it is still ``version``, else raise ``StaleRun`` (nothing written)."""
    new = (
        await session.execute(
            update(Run)
            .where(Run.id == run_id, Run.version == version)
            .values(version=Run.version + 1)
            .returning(Run.version)
        )
    ).scalar_one_or_none()
    if new is None:
        raise StaleRun(run_id)
    return int(new)


async def serialised(
    bosun: JobContext, run_id: str, step: Callable[[Run, RunSnapshot], Awaitable[T]]
) -> T:
    """Run ``step`` on the run as it is now, under the run's lock; decide again (a fresh read)
    when its commit finds the run moved."""
    structlog.contextvars.bind_contextvars(run_id=run_id)
    async with run_lock(bosun, run_id):
        for attempt in range(REDECIDE_LIMIT):
            found = await read_run(bosun, run_id)
            if found is None:
                raise StaleRun(run_id)
            try:
                return await step(*found)
            except StaleRun:
                log.info("review_decision_redecided", attempt=attempt + 1)
        raise StaleRun(run_id)


async def received_at(bosun: JobContext, delivery_id: str) -> datetime | None:
    """When Bosun received delivery ``delivery_id`` (UTC)."""
    async with bosun.services.sessions() as session:
        delivery = await session.get(Delivery, delivery_id)
    if delivery is None or delivery.received_at is None:
        return None
    return _utc(delivery.received_at)


async def written_at(bosun: JobContext, delivery_id: str, created_at: datetime | None) -> datetime:
    """When a comment was written, as early as Bosun can tell: its delivery's arrival, or
    GitHub's ``created_at`` (whole seconds, so plus one) when that is earlier — a delivery
    GitHub sent late (a redelivery) still counts from when the comment was written."""
    candidates = [t for t in (await received_at(bosun, delivery_id),) if t is not None]
    if created_at is not None:
        candidates.append(_utc(created_at) + timedelta(seconds=1))
    return min(candidates) if candidates else datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
