"""The arq round trip through real Redis: enqueue → worker → result."""

from __future__ import annotations

import uuid

from arq.jobs import JobStatus

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.services import Services
from bot.settings import Settings
from jobs.wakeup import WakingWorker
from jobs.worker import build_worker


async def test_ping_job_round_trip(settings: Settings) -> None:
    engine = create_engine(settings.database.url)
    await upgrade(engine)  # the worker's start-up reconcile reads the database
    await engine.dispose()
    services = Services.build(settings)
    try:
        job_id = f"ping-{uuid.uuid4().hex}"
        job = await services.redis.enqueue_job("ping", payload="hello", _job_id=job_id)
        assert job is not None
        # The same job id is not enqueued twice (idempotent enqueue).
        assert await services.redis.enqueue_job("ping", payload="again", _job_id=job_id) is None

        worker = build_worker(settings, burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()

        assert await job.status() is JobStatus.complete
        result = await job.result(timeout=5)
        assert result["payload"] == "hello"
        assert result["worker"]
        assert worker.jobs_failed == 0
        # ping, and the reconcile and sweep run at start-up (a cron whose minute comes up runs too)
        assert worker.jobs_complete >= 3
    finally:
        await services.close()


async def test_worker_waits_for_wake_ups_between_polls(settings: Settings) -> None:
    # Async so that arq takes the running loop: built outside one, it makes a loop of its own
    # that nothing closes.
    worker = build_worker(settings, burst=True, handle_signals=False)
    assert isinstance(worker, WakingWorker)
    assert worker.idle_poll == settings.worker.poll_delay
    assert worker.poll_delay_s == 0  # arq's own sleep: the wait is on the wake channel
