"""Run-event writing. Agent output can be a flood and a worker runs several agents at once, so
the events every run of the process has buffered are written together: one transaction per
round, for all of them (group commit).

A round starts ``COALESCE_SECONDS`` after the first event is buffered (at once when a run has
``FLUSH_LINES`` waiting, or someone waits for a flush); events buffered while a round is being
written go into the next one, which starts as soon as it is done. So a quiet worker writes a
line about 20 ms after the agent printed it, and a busy one writes bigger rounds, not more of
them: on SQLite, runs no longer queue for the database's write lock one small transaction
each. After each round every run that had events in it is published (``on_flushed``), which
wakes the streams that follow it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bot.db.engine import SessionFactory
from bot.db.runlog import append_events
from jobs.resilience import db_retry

log = structlog.get_logger("jobs.run.event_log")

COALESCE_SECONDS = 0.02
FLUSH_LINES = 200

Batch = tuple[list[tuple[str, dict[str, Any]]], int]


class EventWriter:
    def __init__(
        self,
        sessions: SessionFactory,
        run_id: str,
        on_flushed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.run_id = run_id
        self.on_flushed = on_flushed
        """Called after each round that wrote events of this run is committed
        (``bot.control.live.publish_run``): wakes the streams that follow the run."""
        self._buffer: list[tuple[str, dict[str, Any]]] = []
        self.last_activity = time.monotonic()
        """When the run last produced an event of its own (stall detection)."""
        self._queued = 0  # events ever buffered
        self._written = 0  # of them, written (or lost with a failed round)
        self._failed: tuple[int, BaseException] | None = None
        self._progress = asyncio.Event()

    async def emit(self, kind: str, data: dict[str, Any], *, quiet: bool = False) -> None:
        """Append one event now (and whatever is buffered before it, to keep order).
        ``quiet`` events (Bosun's own notes about the run) are not activity of the run."""
        if not quiet:
            self.last_activity = time.monotonic()
        self._buffer.append((kind, data))
        self._queued += 1
        await self.flush()

    def buffer(self, kind: str, data: dict[str, Any]) -> None:
        """Queue an event for the next round."""
        self.last_activity = time.monotonic()
        self._buffer.append((kind, data))
        self._queued += 1
        _committer(self.sessions).schedule(self, urgent=len(self._buffer) >= FLUSH_LINES)

    async def flush(self) -> None:
        """Until every event buffered so far is written; raises what the database raised if
        the round that held them failed."""
        target = self._queued
        while self._written < target:
            _committer(self.sessions).schedule(self, urgent=True)
            progress = self._progress
            await progress.wait()
        if self._failed is not None and self._failed[0] >= target:
            error, self._failed = self._failed[1], None
            raise error

    async def close(self) -> None:
        await self.flush()

    def _take(self) -> Batch:
        batch, self._buffer = self._buffer, []
        return batch, self._queued

    def _done(self, upto: int, error: BaseException | None) -> None:
        self._written = max(self._written, upto)
        if error is not None:
            self._failed = (upto, error)
        self._progress.set()
        self._progress = asyncio.Event()


class _Committer:
    """Writes the buffered events of every ``EventWriter`` on one session factory and event
    loop. Its task lives while events wait and ends when none do."""

    def __init__(self, sessions: SessionFactory, loop: asyncio.AbstractEventLoop) -> None:
        self.sessions = sessions
        self.loop = loop
        self._dirty: dict[EventWriter, None] = {}  # insertion-ordered set
        self._now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def schedule(self, writer: EventWriter, *, urgent: bool) -> None:
        self._dirty[writer] = None
        if urgent:
            self._now.set()
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="bosun-run-events")

    async def _run(self) -> None:
        while self._dirty:
            if not self._now.is_set():
                try:
                    async with asyncio.timeout(COALESCE_SECONDS):
                        await self._now.wait()
                except TimeoutError:
                    pass
            self._now.clear()
            writers, self._dirty = list(self._dirty), {}
            await self._round([(writer, writer._take()) for writer in writers])

    async def _round(self, batches: list[tuple[EventWriter, Batch]]) -> None:
        written = [(writer, batch) for writer, batch in batches if batch[0]]
        errors: dict[EventWriter, BaseException] = {}
        try:
            await self._write(written)
        except Exception:  # noqa: BLE001 -- one run's failure must not lose the others' events
            for writer, batch in written:  # each run on its own, to find whose it was
                try:
                    await self._write([(writer, batch)])
                except Exception as exc:  # noqa: BLE001 -- handed to the run's flush
                    errors[writer] = exc
                    log.warning(
                        "run_events_not_written",
                        run_id=writer.run_id,
                        events=len(batch[0]),
                        error=str(exc)[:300],
                    )
        await asyncio.gather(
            *(w.on_flushed() for w, _ in written if w.on_flushed is not None and w not in errors),
            return_exceptions=True,
        )
        for writer, (_, upto) in batches:
            writer._done(upto, errors.get(writer))

    async def _write(self, written: list[tuple[EventWriter, Batch]]) -> None:
        if not written:
            return

        async def write() -> None:
            async with self.sessions.begin() as session:
                for writer, (events, _) in written:
                    await append_events(session, writer.run_id, events)

        # The database away (a restart): the round waits and is written once it is back
        # (events buffered meanwhile go into the next round).
        await db_retry(write, what="run_events")


_committers: weakref.WeakKeyDictionary[SessionFactory, _Committer] = weakref.WeakKeyDictionary()


def _committer(sessions: SessionFactory) -> _Committer:
    loop = asyncio.get_running_loop()
    committer = _committers.get(sessions)
    if committer is None or committer.loop is not loop:
        committer = _committers[sessions] = _Committer(sessions, loop)
    return committer
