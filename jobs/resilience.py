"""Riding out Redis and database outages.

arq's worker lets the first Redis error out of its poll loop and stops: a Redis restart of a few
seconds used to end ``bosun worker`` for good, and the deliveries stored meanwhile were never
processed. ``ResilientWorker`` instead

- waits for Redis at start, and on any connection error of its poll loop (the poll, the cron
  enqueues, the health key, aborts) stops polling, reports the queue down
  (``bot.readiness``: ``/readyz`` answers 503) and tries again with a capped, jittered backoff;
- keeps every job it is running: their tasks go on (the sandboxes and agents with them), and
  the bookkeeping arq does when a job ends is retried until Redis answers, so a run that ends
  during the outage is recorded once Redis is back, not lost or run twice;
- once reconnected, runs the reconciler at once, so deliveries, API actions and queued runs the
  web process stored meanwhile (or whose jobs a restarted Redis forgot) are enqueued without
  waiting for the next pass.

Database outages (a PostgreSQL restart) are ridden out by ``db_retry``: the run pipeline's state
transitions, saves, artifacts and event writes retry a disconnected call with backoff for up to
``DB_PATIENCE_SECONDS`` instead of failing the run.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import structlog
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from sqlalchemy.exc import DBAPIError

from bot.readiness import READINESS

log = structlog.get_logger("jobs.resilience")

T = TypeVar("T")

REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a Redis client raises when the server is gone, restarting or still loading its data."""

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
DB_PATIENCE_SECONDS = 300.0
"""How long one database call of a run waits for PostgreSQL to come back before failing."""
FINISH_PATIENCE_SECONDS = 3600.0
"""How long a finished job waits for Redis to record its end before the worker gives up (its
job is then run again when its pickup lapses; every job is idempotent)."""


def backoff(attempt: int) -> float:
    """Seconds before try ``attempt`` (from 1): doubling from ``BACKOFF_FIRST`` up to
    ``BACKOFF_MAX``, with jitter so many workers do not reconnect in lockstep."""
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def redis_down(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis went away (redis-py reports a connection lost while it
    WATCHed keys as a ``WatchError`` caused by the ``ConnectionError``)."""
    if isinstance(exc, REDIS_DOWN):
        return True
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, WatchError) and isinstance(cause, REDIS_DOWN)


def db_disconnected(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (restarting, shutting down, the
    connection dropped), as opposed to a query the database refused."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = getattr(exc.orig, "__cause__", None)  # the driver's own error
        for error in (exc.orig, cause):
            state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
            if isinstance(state, str) and state[:2] in ("08", "57"):
                return True  # connection exception; operator intervention (shutting down…)
        return isinstance(cause, ConnectionError | socket.gaierror)
    # Raised as it is when connecting: refused or reset while the server restarts, or its name
    # not resolving while it is away (a container being replaced).
    return isinstance(exc, ConnectionError | socket.gaierror)


async def db_retry(
    op: Callable[[], Awaitable[T]], *, what: str, patience: float = DB_PATIENCE_SECONDS
) -> T:
    """``await op()``, called again with backoff while the database is unreachable (each call
    must be a whole transaction). Other errors, and an outage longer than ``patience``, are
    raised."""
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await op()
        except Exception as exc:
            if not db_disconnected(exc) or time.monotonic() >= deadline:
                raise
            if READINESS.down("database", str(exc)):
                log.warning("database_unreachable", during=what, error=str(exc)[:300])
            await asyncio.sleep(backoff(attempt))
            continue
        if attempt > 1:
            note_db_up(what)
        return result


def note_db_up(what: str) -> None:
    outage = READINESS.up("database")
    if outage is not None:
        log.info(
            "database_reconnected",
            during=what,
            down_seconds=round(time.monotonic() - outage.started, 1),
        )


async def redis_retry(
    op: Callable[[], Awaitable[T]], *, what: str, patience: float = FINISH_PATIENCE_SECONDS
) -> T:
    """``await op()``, called again with backoff while Redis is unreachable (``op`` must be
    idempotent: a transaction arq would run once)."""
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except REDIS_DOWN as exc:
            if time.monotonic() >= deadline:
                raise
            if READINESS.down("redis", str(exc)):
                log.warning("queue_unreachable", during=what, error=str(exc)[:300])
            await asyncio.sleep(backoff(attempt))


ReconnectHook = Callable[[dict[str, Any]], Awaitable[Any]]


class ResilientWorker(Worker):
    """arq's ``Worker`` that survives Redis going away (see the module's docstring).
    ``on_reconnect(ctx)`` runs after each reconnection (the reconciler)."""

    def __init__(self, *args: Any, on_reconnect: ReconnectHook | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_reconnect = on_reconnect
        self.reconnects = 0

    async def main(self) -> None:
        await self._wait_for_redis("start")
        await super().main()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except Exception as exc:
            if not redis_down(exc):
                raise
            await self._ride_out(exc)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except Exception as exc:
            if redis_down(exc):
                # arq counted the job it was taking (a slot and its semaphore) before Redis
                # failed under it: give that slot back, or each outage would leak one.
                self.job_counter -= 1
                self.sem.release()
            raise

    async def _ride_out(self, exc: BaseException) -> None:
        running = sum(not t.done() for t in self.tasks.values())
        log.warning("queue_unreachable", during="poll", error=str(exc)[:300], running_jobs=running)
        READINESS.down("redis", str(exc))
        await self._wait_for_redis("poll")
        self.reconnects += 1
        self._last_health_check = 0  # record the health key at once, not in an hour
        if self.on_reconnect is not None:
            try:
                await self.on_reconnect(self.ctx)
            except Exception as error:  # noqa: BLE001 -- the periodic pass catches up
                log.warning("reconnect_hook_failed", error=str(error)[:300])

    async def _wait_for_redis(self, during: str) -> None:
        attempt = 0
        started = time.monotonic()
        while True:
            attempt += 1
            try:
                await self.pool.ping()
            except REDIS_DOWN as exc:
                if READINESS.down("redis", str(exc)) and during == "start":
                    log.warning("queue_unreachable", during=during, error=str(exc)[:300])
                await asyncio.sleep(backoff(attempt))
                continue
            break
        if READINESS.up("redis") is not None:
            log.info(
                "queue_reconnected",
                down_seconds=round(time.monotonic() - started, 1),
                running_jobs=sum(not t.done() for t in self.tasks.values()),
            )

    # The bookkeeping at a job's end is one Redis transaction; retried, a job that ends during
    # an outage is recorded once Redis is back instead of failing its task (and the worker).
    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        finish = super().finish_job
        await redis_retry(lambda: finish(job_id, *args, **kwargs), what="finish_job")

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        finish = super().finish_failed_job
        await redis_retry(lambda: finish(job_id, result_data), what="finish_failed_job")

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except Exception as exc:
            if not redis_down(exc):
                raise
            # Redis went away as the job was being read: give its pickup back once Redis
            # answers, so another poll takes it instead of waiting for the pickup to lapse.
            log.warning("job_pickup_lost", job=job_id, error=str(exc)[:300])
            key = in_progress_key_prefix + job_id
            try:
                await redis_retry(lambda: self.pool.delete(key), what="release_pickup")
            except REDIS_DOWN:
                log.warning("job_pickup_not_released", job=job_id)

    async def close(self) -> None:
        try:
            await super().close()
        except REDIS_DOWN as exc:  # arq deletes its health key first: Redis may be gone
            log.warning("queue_unreachable", during="shutdown", error=str(exc)[:300])
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
            if self._pool is not None:
                await self._pool.close(close_connection_pool=True)
                self._pool = None


def stale_after_outage(stale: timedelta) -> bool:
    """Whether a heartbeat older than ``stale`` can be trusted to mean a dead worker: not until
    this process has seen Redis and the database reachable for that long since an outage
    (a run's worker cannot beat while the database is away)."""
    return READINESS.quiet_for() >= stale.total_seconds()


__all__ = [
    "DB_PATIENCE_SECONDS",
    "REDIS_DOWN",
    "ResilientWorker",
    "backoff",
    "db_disconnected",
    "db_retry",
    "redis_retry",
    "stale_after_outage",
]
