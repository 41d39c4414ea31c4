"""Wake idle workers the moment a job is due, instead of polling Redis fast (SPEC §10).

Every Bosun queue client publishes an empty message on the queue's wake channel
(``<queue>:wake``) after it enqueues a job or makes a deferred one due; each worker holds
one subscription and, on a message, polls arq's queue at once. Pub/sub reaches every worker,
and arq's own in-progress key still lets exactly one of them take each job. A wake-up that
is lost (Redis restarting, a subscription being re-made) costs no job: workers still poll
every ``worker.poll_delay`` seconds, which can therefore be long enough for an idle worker
to use next to no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.jobs import Job
from redis.exceptions import RedisError

log = structlog.get_logger("bot.queuewake")

LISTEN_SECONDS = 1.0
"""How long one read of the subscription blocks (below the client's socket timeout)."""
RETRY_SECONDS = (0.1, 5.0)
"""First and longest pause before subscribing again after Redis failed."""


def wake_channel(queue_name: str) -> str:
    return f"{queue_name}:wake"


async def wake(redis: Any, queue_name: str) -> None:
    """Tell the workers of ``queue_name`` to poll now. Never raises: the poll is the fallback."""
    try:
        await redis.publish(wake_channel(queue_name), b"")
    except (RedisError, OSError) as exc:
        log.debug("queue_wake_failed", error=str(exc))


class WakingRedis(ArqRedis):
    """arq's client; ``enqueue_job`` also wakes the queue's workers when it queued a job."""

    async def enqueue_job(
        self, function: str, *args: Any, _queue_name: str | None = None, **kwargs: Any
    ) -> Job | None:
        job = await super().enqueue_job(function, *args, _queue_name=_queue_name, **kwargs)
        if job is not None:
            await wake(self, _queue_name or self.default_queue_name)
        return job


class QueueWaker:
    """A worker's subscription to its queue's wake channel. ``wait(timeout)`` returns when a
    wake-up came (since the last ``wait``) or after ``timeout`` seconds."""

    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self.redis = redis
        self.channel = wake_channel(queue_name)
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        """Set while the subscription is live (tests wait for it)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="bosun-queue-wake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def set(self) -> None:
        """Wake the next (or current) ``wait`` from inside the worker (a job slot freed)."""
        self._event.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    async def _listen(self) -> None:
        pause = RETRY_SECONDS[0]
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                pause = RETRY_SECONDS[0]
                self._event.set()  # anything enqueued while unsubscribed is polled now
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_SECONDS
                    )
                    if message is not None:
                        self._event.set()
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("queue_wake_unsubscribed", error=str(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_SECONDS[1])
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


__all__ = ["QueueWaker", "WakingRedis", "wake", "wake_channel"]
