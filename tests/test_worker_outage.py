"""A worker rides out a Redis restart (issue 19): killed for a few seconds, with every key lost,
while a job is running and deliveries are being stored. The worker stays up, reports the queue
down meanwhile, records the running job's end once Redis is back, and processes what was stored
during the outage without waiting for the periodic reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from arq.jobs import Job, JobStatus
from arq.worker import func
from sqlalchemy import select

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import Delivery
from bot.domain.states import DeliveryStatus
from bot.readiness import READINESS
from bot.services import Services
from jobs.worker import build_worker
from tests.conftest import make_settings
from tests.private_services import PrivateRedis
from tests.services import docker_client


async def _until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def _slow(ctx: dict[str, Any], seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


async def test_the_worker_rides_out_a_redis_restart(tmp_path: Path) -> None:
    docker_client().close()  # the reconciler also reaps containers
    READINESS.clear()
    redis = PrivateRedis()
    redis.start()
    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}",
        redis.url,
        "outage",
        worker={"poll_delay": 0.05, "health_check_seconds": 2},
    )
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(settings)
    worker = build_worker(settings, handle_signals=False)
    worker.functions["slow"] = func(_slow, name="slow")  # type: ignore[assignment]
    running = asyncio.create_task(worker.async_run())
    try:
        slow = await services.redis.enqueue_job("slow", 3.0, _job_id="slow-1")
        assert slow is not None
        await _until(
            lambda: _status_is(slow, JobStatus.in_progress), 15, "the slow job in progress"
        )
        await asyncio.to_thread(redis.kill)
        stored = [f"during-{uuid.uuid4()}" for _ in range(5)]
        async with services.sessions.begin() as session:  # as the web process goes on storing
            for delivery_id in stored:
                payload = json.dumps({"zen": "Outages happen.", "hook_id": 1})
                session.add(Delivery(id=delivery_id, event="ping", payload=payload))
        await _until(_redis_down, 10, "the worker to report the queue down")
        await asyncio.sleep(3.5)  # the slow job ends during the outage
        assert not running.done(), running
        await asyncio.to_thread(redis.start)  # empty: every key is gone
        started = time.monotonic()

        async def processed() -> bool:
            async with services.sessions() as session:
                rows = await session.scalars(select(Delivery).where(Delivery.id.in_(stored)))
                return all(d.status is DeliveryStatus.PROCESSED for d in rows)

        await _until(processed, 20, "the deliveries stored during the outage")
        picked_up = time.monotonic() - started
        print(
            f"deliveries stored during the outage processed {picked_up:.1f}s after Redis came back"
        )
        assert picked_up < 10  # at reconnect, not at the next minute's reconciler pass
        assert "redis" not in READINESS.failing()
        assert not running.done()
        # The job that ended while Redis was away is recorded now, once (not run again).
        assert await _status_is(slow, JobStatus.complete)
        result = await slow.result_info()
        assert result is not None and result.result == "finished" and result.job_try == 1
        assert worker.reconnects >= 1
        key = settings.worker_health_key()
        assert await _until(lambda: services.redis.get(key), 5, "the health-check key again")
        async with services.sessions() as session:
            attempts = await session.scalars(
                select(Delivery.attempts).where(Delivery.id.in_(stored))
            )
            assert set(attempts) == {1}  # each processed once
    finally:
        worker.burst, worker.max_burst_jobs = True, 0
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(running), 20)
        running.cancel()
        with contextlib.suppress(BaseException):
            await running
        await worker.close()
        await services.close()
        redis.destroy()
        READINESS.clear()


async def _status_is(job: Job, status: JobStatus) -> bool:
    try:
        return await job.status() is status
    except Exception:  # noqa: BLE001 -- Redis away
        return False


async def _redis_down() -> bool:
    return "redis" in READINESS.failing()
