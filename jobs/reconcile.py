"""The reconciler: the database is the source of truth, Redis only the transport (SPEC §3.1).

At worker start and every minute it re-enqueues recorded deliveries that were never processed,
re-enqueues queued runs whose job is gone, ends runs whose worker died (no heartbeat) and
removes sandbox containers that no live run owns. Enqueueing uses the same ``_job_id`` as the
first time, so a job that still exists is never doubled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq.jobs import Job, JobStatus
from sqlalchemy import select

from bot.db.models import Delivery, DeliveryStatus, Run, RunState
from bot.runs import ACTIVE
from bot.webhooks import PROCESS_JOB
from jobs.context import JobContext, job_context

log = structlog.get_logger("jobs.reconcile")

DELIVERY_GRACE = timedelta(seconds=30)
HEARTBEAT_STALE = timedelta(seconds=90)


def run_job_id(run_id: str) -> str:
    return f"run:{run_id}"


async def _job_alive(bosun: JobContext, job_id: str) -> bool:
    status = await Job(job_id, bosun.services.redis).status()
    return status in (JobStatus.deferred, JobStatus.queued, JobStatus.in_progress)


async def reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    bosun = job_context(ctx)
    now = datetime.now(UTC)
    counts = {"deliveries": 0, "queued_runs": 0, "orphaned_runs": 0, "containers": 0}
    async with bosun.services.sessions() as session:
        stale = await session.execute(
            select(Delivery.id).where(
                Delivery.status.in_([DeliveryStatus.RECEIVED, DeliveryStatus.PROCESSING]),
                Delivery.received_at < now - DELIVERY_GRACE,
            )
        )
        delivery_ids = [row[0] for row in stale]
        active = list(
            (await session.execute(select(Run).where(Run.state.in_(list(ACTIVE))))).scalars()
        )
    for delivery_id in delivery_ids:
        if not await _job_alive(bosun, f"d:{delivery_id}"):
            await bosun.services.redis.enqueue_job(
                PROCESS_JOB, delivery_id, _job_id=f"d:{delivery_id}"
            )
            counts["deliveries"] += 1
    for run in active:
        if await _job_alive(bosun, run_job_id(run.id)):
            continue
        beat = run.heartbeat_at
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if run.state is not RunState.QUEUED and beat is not None and now - beat < HEARTBEAT_STALE:
            continue
        # Queued: its job was lost with Redis. Otherwise its worker died: the job marks the
        # run interrupted (with its artifacts and an explanation on GitHub).
        await bosun.services.redis.enqueue_job("execute_run", run.id, _job_id=run_job_id(run.id))
        counts["queued_runs" if run.state is RunState.QUEUED else "orphaned_runs"] += 1
    live = {run.id for run in active}
    try:
        removed = await bosun.backend.reap(live, max_age=60)
        counts["containers"] = len(removed)
    except Exception as exc:  # noqa: BLE001 -- the engine may be down; try again next time
        log.warning("reap_failed", error=str(exc))
    if any(counts.values()):
        log.info("reconciled", **counts)
    return counts
