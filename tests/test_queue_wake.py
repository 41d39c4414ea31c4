"""Workers are woken when a job is queued (bot/queuewake.py, jobs/wakeup.py), on real Redis.

Each test makes the fallback poll far longer than the test waits, so a job that starts (or a
wait that ends) can only have been woken.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from arq.jobs import Job, JobStatus

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.queuewake import QueueWaker
from bot.services import Services, queue_client
from bot.settings import Settings
from bot.web.intake import enqueue_jobs
from jobs.admission.capacity import wake_runs
from jobs.wakeup import WakingWorker
from jobs.worker import build_worker

POLL = 60.0
"""The fallback poll in these tests: longer than any wait below."""
WOKEN_WITHIN = 10.0


async def _waker(settings: Settings) -> AsyncIterator[QueueWaker]:
    redis = queue_client(settings.redis)
    waker = QueueWaker(redis, settings.redis.queue_name)
    waker.start()
    try:
        await asyncio.wait_for(waker.subscribed.wait(), WOKEN_WITHIN)
        await waker.wait(0.5)  # the wake-up every fresh subscription gives itself
        yield waker
    finally:
        await waker.stop()
        await redis.close(close_connection_pool=True)


@pytest.fixture
async def waker(settings: Settings) -> AsyncIterator[QueueWaker]:
    async for w in _waker(settings):
        yield w


async def _woken(waker: QueueWaker) -> bool:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await waker.wait(POLL)
    return loop.time() - started < WOKEN_WITHIN


async def test_enqueue_and_intake_and_made_due_each_wake_the_worker(
    settings: Settings, waker: QueueWaker
) -> None:
    services = Services.build(settings)
    try:
        queued = asyncio.create_task(_woken(waker))
        await asyncio.sleep(0.1)
        assert await services.redis.enqueue_job("ping", _job_id=f"ping-{uuid.uuid4().hex}")
        assert await queued, "enqueue_job woke no one"

        queued = asyncio.create_task(_woken(waker))
        await asyncio.sleep(0.1)
        assert await enqueue_jobs(services.redis, "ping", {f"d-{uuid.uuid4().hex}": ()}) == 1
        assert await queued, "the intake's batch enqueue woke no one"

        queued = asyncio.create_task(_woken(waker))
        await asyncio.sleep(0.1)
        await wake_runs(services.redis, settings.redis.queue_name, ["some-run"])
        assert await queued, "making deferred runs due woke no one"

        # An enqueue that queued nothing (the id exists) wakes no one.
        job_id = f"ping-{uuid.uuid4().hex}"
        assert await services.redis.enqueue_job("ping", _job_id=job_id)
        await waker.wait(0.5)
        assert await services.redis.enqueue_job("ping", _job_id=job_id) is None
        loop = asyncio.get_running_loop()
        started = loop.time()
        await waker.wait(1.0)
        assert loop.time() - started >= 0.9
    finally:
        await services.close()


async def test_waker_subscribes_again_after_losing_redis(settings: Settings) -> None:
    redis = queue_client(settings.redis)
    waker = QueueWaker(redis, settings.redis.queue_name)
    waker.start()
    services = Services.build(settings)
    try:
        await asyncio.wait_for(waker.subscribed.wait(), WOKEN_WITHIN)
        await waker.wait(0.5)
        await redis.connection_pool.disconnect()  # the subscription's connection too
        await asyncio.sleep(0.2)
        await asyncio.wait_for(waker.subscribed.wait(), WOKEN_WITHIN)
        await waker.wait(0.5)
        queued = asyncio.create_task(_woken(waker))
        await asyncio.sleep(0.1)
        assert await services.redis.enqueue_job("ping", _job_id=f"ping-{uuid.uuid4().hex}")
        assert await queued, "the re-made subscription woke no one"
    finally:
        await waker.stop()
        await services.close()
        await redis.close(close_connection_pool=True)


async def test_idle_worker_starts_a_job_when_woken_not_at_its_poll(settings: Settings) -> None:
    engine = create_engine(settings.database.url)
    await upgrade(engine)  # the worker's start-up reconcile reads the database
    await engine.dispose()
    slow = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"poll_delay": POLL})}
    )
    worker = build_worker(slow, handle_signals=False)
    assert isinstance(worker, WakingWorker)
    assert worker.idle_poll == POLL
    running = asyncio.create_task(worker.main())
    services = Services.build(settings)
    try:
        while worker.waker is None or not worker.waker.subscribed.is_set():
            assert not running.done(), running
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # its start-up polls are over: it waits
        job = await services.redis.enqueue_job("ping", payload="hi")
        assert isinstance(job, Job)
        result = await job.result(timeout=WOKEN_WITHIN, poll_delay=0.05)
        assert result["payload"] == "hi"
        assert await job.status() is JobStatus.complete
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await services.close()
