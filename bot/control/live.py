"""Live events for the web process (SPEC §4.3, §9): the database holds every event; Redis only
says "run X has new events" so a stream wakes at once instead of at its next poll.

Workers publish a run's id on one channel after each event flush (``publish_run``). Each web
process keeps one subscription (``LiveHub``) and wakes the streams of that run and the fleet.
A stream never trusts the wake-up for content: it reads the rows after the last ``seq`` it sent,
and polls the database anyway every ``POLL_SECONDS``, so a Redis restart or a lost message
delays an event by at most that, and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.settings import RedisSettings

log = structlog.get_logger("bot.control.live")

POLL_SECONDS = 1.0
FLEET = "*"


def channel(settings: RedisSettings) -> str:
    return settings.key("events")


async def publish_run(redis: Redis, settings: RedisSettings, run_id: str) -> None:
    """Tell every web process that ``run_id`` has new events. Best effort and quick: a run
    never waits on, or fails because of, the people watching it."""
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with asyncio.timeout(0.5):
            await redis.publish(channel(settings), run_id)


class LiveHub:
    """One Redis subscription per web process, fanned out to the streams waiting on a run."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.client_name = f"{settings.namespace}-live"
        """The subscription's name in Redis ``CLIENT LIST``."""
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="live-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, run_id: str, timeout: float) -> bool:
        """Until ``run_id`` (or, with ``FLEET``, any run) has news, or ``timeout``; whether
        news came."""
        event = asyncio.Event()
        self._waiters[run_id].add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters[run_id].discard(event)
            if not self._waiters[run_id]:
                del self._waiters[run_id]

    def _wake(self, run_id: str) -> None:
        for key in (run_id, FLEET):
            for event in self._waiters.get(key, ()):
                event.set()

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            client = Redis.from_url(
                self.settings.url,
                password=self.settings.password_value(),
                socket_connect_timeout=2,
                health_check_interval=15,
                client_name=self.client_name,
            )
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel(self.settings))
                    backoff = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.info("live_hub_reconnecting", error=str(exc)[:200], backoff=backoff)
            finally:
                await client.aclose()
            await asyncio.sleep(backoff)  # the streams poll the database meanwhile
            backoff = min(backoff * 2, 10.0)
