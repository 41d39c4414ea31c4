"""The reconciler: the database is the source of truth, Redis only the transport (SPEC §3.1).

At worker start and every ``worker.reconcile_seconds`` it re-enqueues recorded deliveries and
API actions that were never processed, re-enqueues queued runs whose job is gone, ends runs
whose worker died (no heartbeat for ``worker.heartbeat_stale_seconds``) and removes sandbox
containers whose run is over. Enqueueing uses the same ``_job_id`` as the first time, so a job
that still exists is never doubled; a job id arq refuses because a stale job or result key
of it outlived the job (a finished job's result while the database says it never finished, a
job key whose queue entry Redis lost) is cleared and enqueued again, not left refused.

A worker also runs it right after it reconnects to Redis (``jobs.resilience``), with no grace,
so what the web process stored during the outage is picked up at once. Runs are declared
orphaned only once this process has seen the database and Redis up for a whole
``heartbeat_stale_seconds``: a run's worker cannot beat while the database is away.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from sqlalchemy import select

from bot.db.models import ControlCommand, Delivery, Run
from bot.domain.states import ACTIVE, DeliveryStatus, RunState
from bot.jobids import (
    API_COMMAND,
    EXECUTE_RUN,
    PROCESS_DELIVERY,
    command_job_id,
    delivery_job_id,
    interrupted_job_id,
    run_job_id,
)
from jobs.context import JobContext, job_context
from jobs.resilience import db_retry, stale_after_outage

log = structlog.get_logger("jobs.upkeep.reconcile")

DELIVERY_GRACE = timedelta(seconds=30)
COMMAND_LIFETIME = timedelta(hours=1)
"""An API action older than this that was never decided is left alone: its caller was told
it is pending, and acting on it much later would surprise more than help."""


_CLEAR_STALE = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  return 0
end
return redis.call('DEL', KEYS[1], KEYS[2])
"""
"""Delete a job id's job and result keys unless the job is queued or running (atomic, so a
job that a worker picks up meanwhile is never touched)."""


async def _job_alive(bosun: JobContext, job_id: str) -> bool:
    redis = bosun.services.redis
    status = await Job(job_id, redis, _deserializer=redis.job_deserializer).status()
    return status in (JobStatus.deferred, JobStatus.queued, JobStatus.in_progress)


async def requeue(bosun: JobContext, function: str, job_id: str, *args: Any) -> bool:
    """Enqueue ``function(*args)`` as ``job_id`` unless that job is queued or running; when
    arq refuses the id because a stale job or result key of it is left, clear those and
    enqueue again. ``True`` when a job was enqueued."""
    if await _job_alive(bosun, job_id):
        return False
    redis = bosun.services.redis
    if await redis.enqueue_job(function, *args, _job_id=job_id) is not None:
        return True
    keys = (
        job_key_prefix + job_id,
        result_key_prefix + job_id,
        in_progress_key_prefix + job_id,
        bosun.settings.redis.queue_name,
    )
    cleared = await redis.eval(_CLEAR_STALE, len(keys), *keys, job_id)  # type: ignore[misc]
    if not cleared:
        return False  # picked up meanwhile
    log.warning("stale_job_cleared", job=job_id, function=function)
    return await redis.enqueue_job(function, *args, _job_id=job_id) is not None


def _last_sign_of_life(run: Run) -> datetime:
    beat = run.heartbeat_at or run.started_at or run.created_at
    return beat if beat.tzinfo is not None else beat.replace(tzinfo=UTC)


async def reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    return await reconcile_now(job_context(ctx))


async def after_reconnect(ctx: dict[str, Any]) -> dict[str, int]:
    """The pass a worker makes once Redis is back: no grace for recent deliveries."""
    return await reconcile_now(job_context(ctx), delivery_grace=timedelta(0))


async def reconcile_now(
    bosun: JobContext, *, delivery_grace: timedelta = DELIVERY_GRACE
) -> dict[str, int]:
    now = datetime.now(UTC)
    stale_after = timedelta(seconds=bosun.settings.worker.heartbeat_stale_seconds)
    counts = {
        "deliveries": 0,
        "commands": 0,
        "queued_runs": 0,
        "orphaned_runs": 0,
        "containers": 0,
    }
    delivery_ids, command_ids, active = await db_retry(
        lambda: _pending(bosun, now, delivery_grace), what="reconcile"
    )
    for delivery_id in delivery_ids:
        if await requeue(bosun, PROCESS_DELIVERY, delivery_job_id(delivery_id), delivery_id):
            counts["deliveries"] += 1
    for command_id in command_ids:  # an action whose job Redis lost
        if await requeue(bosun, API_COMMAND, command_job_id(command_id), command_id):
            counts["commands"] += 1
    orphaned: set[str] = set()
    trust_heartbeats = stale_after_outage(stale_after)
    for run in active:
        if run.state is RunState.QUEUED:
            # Its job was lost with Redis: enqueue it again (a no-op while it exists).
            if await requeue(bosun, EXECUTE_RUN, run_job_id(run.id), run.id):
                counts["queued_runs"] += 1
            continue
        if not trust_heartbeats or now - _last_sign_of_life(run) < stale_after:
            continue
        # Its worker died: whatever Redis says about its job, nobody executes it. A fresh job
        # ends it ``failed`` (interrupted) with its artifacts and an explanation on GitHub.
        orphaned.add(run.id)
        job = await bosun.services.redis.enqueue_job(
            EXECUTE_RUN, run.id, _job_id=interrupted_job_id(run.id)
        )
        if job is not None:
            counts["orphaned_runs"] += 1
            log.warning("run_orphaned", run_id=run.id, worker=run.worker)
    counts["containers"] = await _reap(bosun, {r.id for r in active} - orphaned, orphaned)
    if any(counts.values()):
        log.info("reconciled", **counts)
    return counts


async def _pending(
    bosun: JobContext, now: datetime, delivery_grace: timedelta
) -> tuple[list[str], list[str], list[Run]]:
    """Deliveries and API actions never processed, and the active runs."""
    async with bosun.services.sessions() as session:
        stale = await session.execute(
            select(Delivery.id).where(
                Delivery.status.in_([DeliveryStatus.RECEIVED, DeliveryStatus.PROCESSING]),
                Delivery.received_at < now - delivery_grace,
            )
        )
        delivery_ids = [row[0] for row in stale]
        commands = await session.execute(
            select(ControlCommand.id).where(
                ControlCommand.processed_at.is_(None),
                ControlCommand.requested_at < now - delivery_grace,
                ControlCommand.requested_at > now - COMMAND_LIFETIME,
            )
        )
        command_ids = [row[0] for row in commands]
        active = list(
            (await session.execute(select(Run).where(Run.state.in_(list(ACTIVE))))).scalars()
        )
    return delivery_ids, command_ids, active


async def _reap(bosun: JobContext, live: set[str], orphaned: set[str]) -> int:
    """Remove sandboxes of this installation's runs that are over (or orphaned). Containers of
    runs this database does not know belong to another Bosun on the same engine: left alone;
    so are those of runs that became active since ``live`` was read."""
    backend = bosun.backend
    try:
        owners: set[str] = set()

        def keep_and_note(run_id: str) -> bool:
            owners.add(run_id)
            return True

        await backend.reap(keep_and_note)  # lists the sandboxes' runs, removes nothing
        ours = owners - live
        if not ours:
            return 0
        async with bosun.services.sessions() as session:
            over = select(Run.id).where(Run.id.in_(ours), Run.state.not_in(list(ACTIVE)))
            ended = set((await session.scalars(over)).all()) | (ours & orphaned)
        removed = await backend.reap(lambda run_id: run_id not in ended)
    except Exception as exc:  # noqa: BLE001 -- the engine may be down; try again next time
        log.warning("reap_failed", error=str(exc))
        return 0
    if removed:
        log.info("sandboxes_reaped", count=len(removed))
    return len(removed)
