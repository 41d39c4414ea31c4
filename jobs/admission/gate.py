"""Admission: before a queued run moves to ``preparing`` it takes its scope lock
(``jobs/admission/locks.py``) and a capacity slot (``jobs/admission/capacity.py``); while it may
not start it stays ``queued`` and says where it stands on GitHub, and its job is deferred
(``arq.Retry``), so a waiting run never occupies a worker's job slot. Both holds are renewed while
the run lives and given up when it ends, which wakes the runs next in line.

Order: the lock first, then the slot; a run that got its lock but no slot gives the lock back,
so a waiting run holds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from arq.constants import retry_key_prefix
from sqlalchemy import update

from bot.db.models import Repository, Run, Task
from bot.domain.prompt import sanitize
from bot.domain.repoconfig import RepoConfig
from bot.domain.status import RunView
from bot.domain.tasks import task_text
from bot.forge.port import Forge
from bot.jobids import run_job_id
from jobs.admission.capacity import Capacity
from jobs.admission.locks import acquire_scope, release_scope, renew_scope, run_scope
from jobs.context import JobContext
from jobs.run.reporter import StatusReporter

log = structlog.get_logger("jobs.admission.gate")


@dataclass(frozen=True)
class Waiting:
    """The run may not start yet: why (shown on GitHub) and when to ask again."""

    text: str
    defer: float
    position: int | None = None


@dataclass(frozen=True)
class Refused:
    """The run may not start at all (``limits.scope_conflict: refuse``)."""

    reason: str


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Admission:
    def __init__(
        self,
        bosun: JobContext,
        *,
        run: Run,
        task: Task,
        repository: Repository,
        config: RepoConfig,
    ) -> None:
        settings = bosun.settings
        worker = settings.worker
        self.bosun = bosun
        self.run = run
        self.repository = repository
        self.config = config
        self.lease = worker.lease_seconds
        self.poll = worker.queue_poll_seconds
        text = task_text(task.body or "", task.acceptance or (), task.focus or ())
        self.scope = run_scope(sanitize(text), config.focus_paths)
        self.capacity = Capacity(
            bosun.services.redis,
            namespace=settings.redis.namespace,
            queue_name=settings.redis.queue_name,
            global_cap=worker.max_concurrent_runs,
            lease_seconds=worker.lease_seconds,
            waiter_ttl_seconds=max(60.0, 6 * worker.queue_poll_seconds),
        )
        self.admitted = False
        self._renewer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def _shown_key(self) -> str:
        return f"{self.bosun.settings.redis.namespace}:capacity:shown:{self.run.id}"

    @property
    def _lock_waiters_key(self) -> str:
        """Runs of this repository waiting for a scope lock: woken when any run ends."""
        namespace = self.bosun.settings.redis.namespace
        return f"{namespace}:capacity:repo-{self.repository.id}:lock-waiters"

    @property
    def _repo_cap(self) -> int:
        return self.config.limits.concurrent_runs

    async def enter(self) -> Waiting | Refused | None:
        """Take the scope lock and a slot; ``None`` when the run may start."""
        sessions = self.bosun.services.sessions
        if self.scope:
            conflict = await acquire_scope(
                sessions,
                repository_id=self.repository.id,
                run_id=self.run.id,
                paths=self.scope,
                holder=self.bosun.worker_id,
                lease_seconds=self.lease,
            )
            if conflict is not None:
                # Out of the capacity line too: a run that cannot write holds no place there.
                await self._withdraw()
                if self.config.limits.scope_conflict == "refuse":
                    return Refused(
                        f"refused: {conflict.describe()} and this repository refuses "
                        "overlapping runs (`limits.scope_conflict: refuse`)"
                    )
                await self.bosun.services.redis.zadd(self._lock_waiters_key, {self.run.id: 0})
                return Waiting(f"waiting: {conflict.describe()}", self.poll)
        slot = await self.capacity.acquire(
            self.run.id,
            repository_id=self.repository.id,
            enqueued_at=_utc(self.run.created_at).timestamp(),
            repo_cap=self._repo_cap,
        )
        if not slot.granted:
            if self.scope:
                await release_scope(sessions, self.run.id)
            return Waiting(slot.describe(self.repository.full_name), self.poll, slot.position)
        await self.bosun.services.redis.zrem(self._lock_waiters_key, self.run.id)
        self.admitted = True
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"lease:{self.run.id}")
        log.info("run_admitted", scope=self.scope or None)
        return None

    async def show(
        self,
        waiting: Waiting,
        view: RunView,
        reporter: StatusReporter,
        *,
        port: Forge,
    ) -> None:
        """Put the run's place in line on its status comment and check run, only when it
        changed since the last time (a waiting run asks again every few seconds)."""
        view.waiting, view.queue_position = waiting.text, waiting.position
        redis = self.bosun.services.redis
        if await redis.getset(self._shown_key, waiting.text) == waiting.text.encode():
            return
        await redis.expire(self._shown_key, 86400)
        if self.run.base_sha is None:
            await self._note_base(port)
        view.base_sha = self.run.base_sha
        self.adopt_check_run(reporter)
        reporter.start()
        await reporter.close()

    def adopt_check_run(self, reporter: StatusReporter) -> None:
        """The check run made while the run waited sits on ``base_sha``: keep using it."""
        if reporter.check_run_id is not None and self.run.base_sha is not None:
            reporter.check_sha = self.run.base_sha

    async def _note_base(self, port: Forge) -> None:
        """The default branch's head, so the check run can say "queued" before the run
        fetches anything (the run records the base it really used when it prepares)."""
        try:
            sha = await port.branch_head(self.repository.default_branch)
        except Exception as exc:  # noqa: BLE001 -- the comment still shows the place in line
            log.warning("base_lookup_failed", error=str(exc)[:300])
            return
        if sha is None:
            return
        async with self.bosun.services.sessions.begin() as session:
            await session.execute(update(Run).where(Run.id == self.run.id).values(base_sha=sha))
        self.run.base_sha = sha

    async def not_a_try(self) -> None:
        """A wait is not a failed attempt: give back the try arq counted for this pickup, so
        ``max_tries`` still only counts crashes."""
        key = retry_key_prefix + run_job_id(self.run.id)
        with contextlib.suppress(Exception):
            if await self.bosun.services.redis.exists(key):
                await self.bosun.services.redis.decr(key)

    async def _renew_loop(self) -> None:
        sessions = self.bosun.services.sessions
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease / 3):
                    await self._stop.wait()
                return
            try:
                if not await self.capacity.renew(self.run.id, repository_id=self.repository.id):
                    log.warning("capacity_lease_lapsed")
                if self.scope and not await renew_scope(sessions, self.run.id, self.lease):
                    log.warning("scope_lease_lapsed")
                    await acquire_scope(
                        sessions,
                        repository_id=self.repository.id,
                        run_id=self.run.id,
                        paths=self.scope,
                        holder=self.bosun.worker_id,
                        lease_seconds=self.lease,
                    )
            except Exception as exc:  # noqa: BLE001 -- try again next time; the lease is long
                log.warning("lease_renewal_failed", error=str(exc)[:300])

    async def _withdraw(self) -> None:
        await self.capacity.release(
            self.run.id, repository_id=self.repository.id, repo_cap=self._repo_cap, wake=False
        )

    async def leave(self) -> None:
        """The run ended (any state): stop renewing, free the lock and the slot, wake the
        runs next in line. Safe to call when nothing is held."""
        self._stop.set()
        if self._renewer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(Exception):
            await release_scope(self.bosun.services.sessions, self.run.id)
        with contextlib.suppress(Exception):
            await self.bosun.services.redis.delete(self._shown_key)
        with contextlib.suppress(Exception):
            woken = await self.capacity.release(
                self.run.id, repository_id=self.repository.id, repo_cap=self._repo_cap
            )
            redis = self.bosun.services.redis
            await redis.zrem(self._lock_waiters_key, self.run.id)
            lock_waiters = [m.decode() for m in await redis.zrange(self._lock_waiters_key, 0, -1)]
            await self.capacity.wake(lock_waiters)
            if woken or lock_waiters:
                log.info("runs_woken", runs=woken + lock_waiters)
