"""What a run's gateway grants a hostile agent, at most: request sizes, bytes held, open
connections and how long it waits on the agent (``GatewayLimits``); the per-run budget of
buffered body bytes (``BodyBuffer``); and the tally that reports every refusal on the run
without letting a flood of refusals flood the run's events or the logs (``RefusalTally``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import structlog

log = structlog.get_logger("bot.agents.gateway")

MiB = 1 << 20


@dataclass(frozen=True)
class GatewayLimits:
    """Sizes, counts and times of one run's gateway (``gateway.*`` settings)."""

    max_body_bytes: int = 8 * MiB
    """Largest request body; a larger ``Content-Length`` is refused (413) before it is read."""
    max_buffered_bytes: int = 32 * MiB
    """Request body bytes one run's gateway holds at once, over all its requests."""
    max_connections: int = 16
    """Open connections to one run's socket; past it the longest-idle one is closed, or when
    every one is busy the new one is refused (503)."""
    client_timeout: float = 30.0
    """Seconds for a request's head to arrive (from its first byte), for its body (from when it
    gets a slot), and for the agent to take each piece of a response."""
    idle_timeout: float = 120.0
    """Seconds a connection may wait for its next request before it is closed."""

    @property
    def max_json_values(self) -> int:
        """JSON values a body may hold (one per 16 bytes of ``max_body_bytes``). Parsing costs
        up to ~100 bytes a value, so no body costs more than ~6 ``max_body_bytes`` to parse."""
        return self.max_body_bytes // 16

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_buffered_bytes", "max_connections"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.client_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("client_timeout and idle_timeout must be positive")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                "max_buffered_bytes must be at least max_body_bytes, or a request at the size "
                "limit could never be read"
            )


class BodyBuffer:
    """The run's budget of buffered request bytes: a request reserves what it may read before
    it reads it, and waits while other requests hold the rest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: list[asyncio.Future[None]] = []

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[Reservation]:
        size = min(size, self.capacity)
        while self.held + size > self.capacity:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.held += size
        reservation = Reservation(self, size)
        try:
            yield reservation
        finally:
            self._give(reservation.size)

    def _give(self, size: int) -> None:
        self.held -= size
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each checks again whether its size fits now
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class Reservation:
    buffer: BodyBuffer
    size: int

    def shrink(self, size: int) -> None:
        """Hand back what the request turned out not to need."""
        if size < self.size:
            self.buffer._give(self.size - size)
            self.size = size


EventKind = Literal["policy", "error"]


@dataclass(frozen=True)
class GatewayRefusal:
    """Refusals of one kind on one run: the latest one, and how many so far."""

    run_id: str
    rule: str
    """The setting or rule that refused, e.g. ``gateway.max_body_bytes``."""
    status: int
    """The HTTP status the agent got (0: the connection was closed without an answer)."""
    message: str
    count: int
    """Refusals under this rule so far in the run (this one included)."""
    event: EventKind = "policy"

    def event_data(self) -> dict[str, object]:
        more = f" ({self.count} so far in this run)" if self.count > 1 else ""
        return {
            "rule": self.rule,
            "decision": "refuse",
            "status": self.status,
            "message": self.message + more,
            "count": self.count,
            "source": "gateway",
        }


OnRefused = Callable[[GatewayRefusal], Awaitable[None] | None]


@dataclass
class _Rule:
    count: int = 0
    reported: int = 0
    last_report: float = float("-inf")
    latest: tuple[int, str, EventKind] = (0, "", "policy")
    pending: asyncio.Task[None] | None = None


@dataclass
class RefusalTally:
    """Reports refusals per rule: the first at once, later ones at most once per ``interval``
    seconds with their count, so 3,000 refused connections make a handful of events."""

    run_id: str
    report: Callable[[GatewayRefusal], Awaitable[None]]
    interval: float = 5.0
    _rules: dict[str, _Rule] = field(default_factory=dict)
    _running: set[asyncio.Task[None]] = field(default_factory=set)  # the loop keeps weak refs

    def add(self, rule: str, status: int, message: str, event: EventKind = "policy") -> None:
        state = self._rules.setdefault(rule, _Rule())
        state.count += 1
        state.latest = (status, message, event)
        if state.pending is not None:
            return
        wait = state.last_report + self.interval - time.monotonic()
        state.pending = asyncio.create_task(self._report_later(rule, state, max(wait, 0.0)))
        self._running.add(state.pending)
        state.pending.add_done_callback(self._running.discard)

    async def _report_later(self, rule: str, state: _Rule, wait: float) -> None:
        if wait:
            await asyncio.sleep(wait)
        state.pending = None
        await self._report(rule, state)

    async def _report(self, rule: str, state: _Rule) -> None:
        if state.count == state.reported:
            return
        state.reported, state.last_report = state.count, time.monotonic()
        status, message, event = state.latest
        refusal = GatewayRefusal(self.run_id, rule, status, message, state.count, event)
        log.info(
            "gateway_request_refused",
            run_id=self.run_id,
            rule=rule,
            status=status,
            reason=message,
            count=state.count,
        )
        await self.report(refusal)

    async def flush(self) -> None:
        """Report now what is waiting for its interval (at the end of the agent's turn, while
        the run still writes events, and when the gateway stops)."""
        for rule, state in self._rules.items():
            if state.pending is not None:
                state.pending.cancel()
                state.pending = None
            await self._report(rule, state)
