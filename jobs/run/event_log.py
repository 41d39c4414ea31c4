"""Buffered run-event writing: agent output can be a flood, so lines are appended in small
batches (one transaction per flush) while status events go through at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.db.engine import SessionFactory
from bot.db.runlog import append_event

FLUSH_SECONDS = 0.1
FLUSH_LINES = 200


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
        """Called after each batch is committed (``bot.web.live.publish_run``): wakes the
        streams that follow the run."""
        self._buffer: list[tuple[str, dict[str, Any]]] = []
        self.last_activity = time.monotonic()
        """When the run last produced an event of its own (stall detection)."""
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def emit(self, kind: str, data: dict[str, Any], *, quiet: bool = False) -> None:
        """Append one event now (and whatever is buffered before it, to keep order).
        ``quiet`` events (Bosun's own notes about the run) are not activity of the run."""
        if not quiet:
            self.last_activity = time.monotonic()
        async with self._lock:
            self._buffer.append((kind, data))
            await self._flush_locked()

    def buffer(self, kind: str, data: dict[str, Any]) -> None:
        """Queue an event for the next batch."""
        self.last_activity = time.monotonic()
        self._buffer.append((kind, data))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._later())

    async def _later(self) -> None:
        if len(self._buffer) < FLUSH_LINES:
            await asyncio.sleep(FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        async with self.sessions.begin() as session:
            for kind, data in batch:
                await append_event(session, self.run_id, kind, data)
        if self.on_flushed is not None:
            await self.on_flushed()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            # Let the pending batch finish (≤ FLUSH_SECONDS): cancelling it mid-write could
            # strand a database connection.
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
