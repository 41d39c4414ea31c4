"""Losing Redis loses nothing: a recorded delivery whose job vanished is enqueued again by the
reconciler at worker start and processed exactly once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import Delivery
from bot.domain.states import DeliveryStatus
from bot.services import Services
from bot.settings import Settings
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
