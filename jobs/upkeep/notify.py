"""The ``send_notifications`` job: sends the outbox's due notifications (``bot.notify``).

It is enqueued under one id after each commit that wrote notifications (so at most one waits
in the queue; its result is not kept, so the id is free again once it ends) and run by a cron
every ``notify.sweep_seconds`` for retries and anything a wake-up missed. One sender at a time
in the whole installation (a Redis lease, lapsing if its worker dies): the others return at
once, so however many endpoints fail, sending holds one worker job slot, for at most about a
minute per job, and never touches a run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import structlog
from arq.connections import ArqRedis
from arq.cron import cron
from arq.worker import func

from bot.jobids import SEND_NOTIFICATIONS
from bot.notify.outbox import install_waker
from bot.notify.sender import Sender
from bot.notify.store import sync_quietly
from bot.settings import Settings
from jobs.context import JobContext, job_context

log = structlog.get_logger("jobs.upkeep.notify")

SEND_BUDGET_SECONDS = 60.0
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


async def send_notifications(ctx: dict[str, Any]) -> int:
    bosun = job_context(ctx)
    settings = bosun.settings
    redis = bosun.services.redis
    key, holder = settings.redis.key("notify", "sender"), uuid.uuid4().hex
    # Sending stops starting rounds after the budget; a round lasts at most one timeout.
    lease = SEND_BUDGET_SECONDS + settings.notify.timeout_seconds * 2 + 5
    if not await redis.set(key, holder, nx=True, px=int(lease * 1000)):
        return 0  # another worker is sending; it looks again before it stops
    try:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            sender = Sender(bosun.services.sessions, settings.notify, settings.public_url, client)
            return await sender.send_due(deadline=time.monotonic() + SEND_BUDGET_SECONDS)
    finally:
        await redis.eval(_RELEASE, 1, key, holder)  # type: ignore[misc]


class Waker:
    """Enqueues the send job after a commit that wrote notifications (never raises: the sweep
    sends what a failed wake-up left)."""

    def __init__(self, redis: ArqRedis, job_id: str) -> None:
        self.redis = redis
        self.job_id = job_id
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self) -> None:
        task = asyncio.get_running_loop().create_task(self._enqueue())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue(self) -> None:
        try:
            await self.redis.enqueue_job(SEND_NOTIFICATIONS, _job_id=self.job_id)
        except Exception as exc:  # noqa: BLE001 -- the sweep is the fallback
            log.warning("notify_wake_failed", error=str(exc))


def notify_functions() -> list[Any]:
    return [func(send_notifications, name=SEND_NOTIFICATIONS, keep_result=0, max_tries=1)]


def notify_crons(settings: Settings) -> list[Any]:
    return [
        cron(
            send_notifications,
            name=f"{settings.redis.namespace}:notify",
            second=set(range(0, 60, settings.notify.sweep_seconds)),
            unique=True,
            keep_result=60,  # a tick's id stays taken while other workers could enqueue it
            max_tries=1,
        )
    ]


async def notify_startup(bosun: JobContext) -> None:
    """Keep configured endpoints in step, and wake the sender after notifying commits."""
    await sync_quietly(bosun.services.sessions, bosun.settings.notify)
    job_id = f"notify:{bosun.settings.redis.namespace}"  # arq's job ids span namespaces
    install_waker(bosun.services.sessions, Waker(bosun.services.redis, job_id))
