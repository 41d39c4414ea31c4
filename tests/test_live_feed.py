"""A run's feed in a web process (bot/control/live.py): the streams that follow one run share
one read of the log per wake-up; each still gets every event after its own position exactly
once and in order, whether it is live, behind the window (old history) or joins late."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from bot.control.live import WINDOW, LiveHub, RunFeed
from bot.control.views import EventOut
from bot.settings import RedisSettings


class Log:
    """A run's event log with a call-recording reader (``read`` as ``RunStore.events``)."""

    def __init__(self) -> None:
        self.events: list[EventOut] = []
        self.reads: list[tuple[int, int]] = []

    def append(self, count: int) -> None:
        start = len(self.events)
        now = datetime.now(UTC)
        for seq in range(start + 1, start + count + 1):
            self.events.append(EventOut(seq=seq, kind="log", data={"n": seq}, created_at=now))

    async def read(self, run_id: str, after: int, limit: int) -> list[EventOut]:
        assert run_id == "r1"
        self.reads.append((after, limit))
        await asyncio.sleep(0.005)  # a database round trip
        return [e for e in self.events if e.seq > after][:limit]


async def test_streams_of_a_run_share_one_read_per_wake_up() -> None:
    log = Log()
    feed = RunFeed("r1", log.read)
    positions = [0] * 50
    received: list[list[int]] = [[] for _ in positions]

    async def catch_up(i: int, woken: float) -> None:
        events = await feed.after(positions[i], 500, since=woken)
        received[i] += [e.seq for e in events]
        if events:
            positions[i] = events[-1].seq

    for _ in range(10):  # ten flushes of the worker, each waking all fifty streams
        log.append(3)
        log.reads.clear()
        woken = time.monotonic()  # the flush's wake-up reaches every stream
        await asyncio.gather(*(catch_up(i, woken) for i in range(50)))
        assert len(log.reads) == 1, log.reads  # one read for fifty streams
    assert all(r == list(range(1, 31)) for r in received)

    # Nothing new: a wake-up finds nothing, with one read.
    log.reads.clear()
    woken = time.monotonic()
    results = await asyncio.gather(*(feed.after(30, 500, since=woken) for _ in range(50)))
    assert results == [[]] * 50 and len(log.reads) == 1
    # A stream that asks without a wake-up (its poll) reads again: a lost wake-up loses nothing.
    log.append(1)
    assert [e.seq for e in await feed.after(30, 500)] == [31]


async def test_a_stream_behind_the_window_reads_the_log_then_joins_the_feed() -> None:
    log = Log()
    log.append(WINDOW + 700)
    feed = RunFeed("r1", log.read)
    live = await feed.after(WINDOW + 600, 500)  # a live stream near the end
    assert [e.seq for e in live] == list(range(WINDOW + 601, WINDOW + 701))
    seen: list[int] = []
    position = 0
    while True:  # a reconnect from the start: pages from the log, then the window
        page = await feed.after(position, 500)
        if not page:
            break
        seen += [e.seq for e in page]
        position = page[-1].seq
    assert seen == list(range(1, WINDOW + 701))  # each once, in order
    log.append(5)
    assert [e.seq for e in await feed.after(position, 500)] == list(
        range(WINDOW + 701, WINDOW + 706)
    )


async def test_the_hub_keeps_a_feed_while_streams_use_it() -> None:
    hub = LiveHub(RedisSettings())
    log = Log()
    async with hub.feed("r1", log.read) as first, hub.feed("r1", log.read) as second:
        assert first is second and first.users == 2
    async with hub.feed("r1", log.read) as third:
        assert third is not first  # dropped once nobody followed it
