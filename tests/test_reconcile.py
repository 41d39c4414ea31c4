"""Losing Redis loses nothing: a recorded delivery whose job vanished is enqueued again by the
reconciler at worker start and processed exactly once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from bot import jobcodec
from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import Delivery
from bot.domain.states import DeliveryStatus
from bot.jobids import PROCESS_DELIVERY, delivery_job_id
from bot.services import Services
from bot.settings import Settings
from jobs.context import JobContext
from jobs.upkeep.reconcile import requeue
from jobs.worker import build_worker
from tests.services import docker_client


async def test_recorded_delivery_without_job_is_processed_after_restart(
    settings: Settings,
) -> None:
    docker_client().close()  # the reconciler also reaps containers
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(settings)
    old = datetime.now(UTC) - timedelta(minutes=5)
    lost_id, fresh_id = f"lost-{uuid.uuid4()}", f"fresh-{uuid.uuid4()}"
    try:
        async with services.sessions.begin() as session:
            session.add(
                Delivery(
                    id=lost_id,
                    event="ping",
                    payload=json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}),
                    received_at=old,
                )
            )
            session.add(
                Delivery(
                    id=fresh_id,
                    event="ping",
                    payload=json.dumps({"zen": "x", "hook_id": 1}),
                )
            )
        # Redis lost the jobs: nothing is queued for either delivery.
        worker = build_worker(settings, burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()
        async with services.sessions() as session:
            lost = await session.get(Delivery, lost_id)
            fresh = await session.get(Delivery, fresh_id)
            assert lost is not None and fresh is not None
            assert lost.status is DeliveryStatus.PROCESSED
            assert lost.attempts == 1
            # Within the grace period a delivery is left to its own job.
            assert fresh.status is DeliveryStatus.RECEIVED
    finally:
        await services.close()


async def test_a_delivery_refused_by_a_stale_job_key_is_noticed_and_processed(
    settings: Settings,
) -> None:
    """arq refuses a job id whose job or result key still exists. A delivery still ``received``
    in the database behind such a key (a result stored while the database write was lost, a job
    key whose queue entry Redis lost) is cleared and enqueued again; a job that is really
    queued is left alone."""
    docker_client().close()  # the reconciler also reaps containers
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(settings)
    redis = services.redis
    old = datetime.now(UTC) - timedelta(minutes=5)
    by_result, by_job, queued = (f"{kind}-{uuid.uuid4()}" for kind in ("result", "job", "queued"))
    payload = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1})
    try:
        async with services.sessions.begin() as session:
            for delivery_id in (by_result, by_job):
                session.add(
                    Delivery(id=delivery_id, event="ping", payload=payload, received_at=old)
                )
        await redis.set(result_key_prefix + delivery_job_id(by_result), b"stale", px=3_600_000)
        job = serialize_job(PROCESS_DELIVERY, (by_job,), {}, None, 0, serializer=jobcodec.serialize)
        await redis.set(job_key_prefix + delivery_job_id(by_job), job, px=3_600_000)
        for delivery_id in (by_result, by_job):  # what the reconciler used to meet: refused
            again = PROCESS_DELIVERY, delivery_id
            assert await redis.enqueue_job(*again, _job_id=delivery_job_id(delivery_id)) is None
        worker = build_worker(settings, burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()
        async with services.sessions() as session:
            rows = [await session.get(Delivery, d) for d in (by_result, by_job)]
        assert [(r.status, r.attempts) for r in rows if r is not None] == [
            (DeliveryStatus.PROCESSED, 1),
            (DeliveryStatus.PROCESSED, 1),
        ]
        # A job really waiting in the queue (deferred) is alive: never cleared nor doubled.
        later = datetime.now(UTC) + timedelta(hours=1)
        job_id = delivery_job_id(queued)
        assert await redis.enqueue_job(PROCESS_DELIVERY, queued, _job_id=job_id, _defer_until=later)
        bosun = JobContext(settings=settings, services=services)
        assert not await requeue(bosun, PROCESS_DELIVERY, job_id, queued)
        score = await redis.zscore(settings.redis.queue_name, job_id)
        assert score is not None and score > datetime.now(UTC).timestamp() * 1000
        await redis.zrem(settings.redis.queue_name, job_id)
    finally:
        await services.close()
