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
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.control.views import EventOut
from bot.settings import RedisSettings

log = structlog.get_logger("bot.control.live")

POLL_SECONDS = 1.0
FLEET = "*"
WINDOW = 2000
"""Latest events of a run each web process keeps for the streams that follow it."""

ReadEvents = Callable[[str, int, int], Awaitable[list[EventOut]]]
"""``(run_id, after_seq, limit)`` → the run's events after ``after_seq``, from the log."""


class RunFeed:
    """The latest events of one run, read from the log once for every stream of this
    process that follows it: when a run's wake-up reaches fifty streams, the first one to ask
    reads the new rows and the others take them from here. A stream further behind than the
    window (a reconnect to old history) reads the log itself."""

    def __init__(self, run_id: str, read: ReadEvents) -> None:
        self.run_id = run_id
        self._read = read
        self._window: deque[EventOut] = deque(maxlen=WINDOW)
        self.last_seq = 0
        """Highest ``seq`` read so far (the window ends there)."""
        self._read_started = -1.0
        self._lock = asyncio.Lock()
        self.users = 0

    async def after(self, seq: int, limit: int, *, since: float | None = None) -> list[EventOut]:
        """Up to ``limit`` events after ``seq``, with every row committed before ``since``
        (``time.monotonic()``; default: now): a read that started after it is shared, a
        stream woken by a flush passes the moment of the wake-up."""
        fresh_from = time.monotonic() if since is None else since
        if seq >= self.last_seq:
            async with self._lock:
                if self._read_started < fresh_from or seq > self.last_seq:
                    start = max(seq, self.last_seq)
                    self._read_started = time.monotonic()
                    rows = await self._read(self.run_id, start, limit)
                    if start != self.last_seq:  # never a gap inside the window
                        self._window.clear()
                        self.last_seq = start
                    self._window.extend(rows)
                    if rows:
                        self.last_seq = rows[-1].seq
        if self._window and self._window[0].seq <= seq + 1:
            return [e for e in self._window if e.seq > seq][:limit]
        if seq >= self.last_seq:
            return []
        return await self._read(self.run_id, seq, limit)  # behind the window: from the log


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
        self._feeds: dict[str, RunFeed] = {}
        self._woken: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def feed(self, run_id: str, read: ReadEvents) -> AsyncIterator[RunFeed]:
        """The process's ``RunFeed`` of ``run_id`` while a stream follows it."""
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = RunFeed(run_id, read)
        feed.users += 1
        try:
            yield feed
        finally:
            feed.users -= 1
            if feed.users == 0 and self._feeds.get(run_id) is feed:
                del self._feeds[run_id]
                self._woken.pop(run_id, None)

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

    def woken_at(self, run_id: str) -> float | None:
        """When the latest news of ``run_id`` reached this process (while streams follow it)."""
        return self._woken.get(run_id)

    def _wake(self, run_id: str) -> None:
        if run_id in self._feeds:
            self._woken[run_id] = time.monotonic()
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
