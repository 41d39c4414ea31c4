"""Live events (SPEC §9): ``GET /api/v1/runs/{id}/events/stream`` (Server-Sent Events: ``id:``
is the event's ``seq``, so a reconnect with ``Last-Event-ID`` resumes exactly), the same frames
over a WebSocket (``/api/v1/runs/{id}/events/ws``), and one fleet stream of every run's state,
phase and cost (``GET /api/v1/events/stream``).

Every frame is read from the database (``RunStore``): any web process serves any run, whichever
worker runs it. ``bot.control.live.LiveHub`` only wakes a stream early. Nothing is buffered per
connection beyond one page of rows: a slow client only slows its own stream, and one that stops
reading for ``SEND_TIMEOUT`` seconds is dropped with a reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from bot.control.live import FLEET, POLL_SECONDS, LiveHub, RunFeed
from bot.control.queries import RunStore
from bot.control.views import EventOut, RunSummary
from bot.domain.states import TERMINAL, RunState
from bot.web.api.auth import AnyRequest, caller_of, require_repo
from bot.web.api.problems import problem_responses
from bot.web.api.resources import MAX_ID, services_of, store

HEARTBEAT_SECONDS = 15.0
SEND_TIMEOUT = 30.0
PAGE = 500
TERMINAL_STATES = frozenset(state.value for state in TERMINAL)


def hub_of(request: Any) -> LiveHub:
    hub: LiveHub = request.app.state.live
    return hub


def _resume_point(request: AnyRequest, after_seq: int | None) -> int:
    header = request.headers.get("last-event-id", "").strip()
    if header.isascii() and header.isdigit() and int(header) <= MAX_ID:
        return int(header)
    return after_seq or 0


async def run_frames(
    runs: RunStore, hub: LiveHub, run_id: str, after_seq: int
) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """``(id, event, data)`` for every event of ``run_id`` after ``after_seq``, then live, until
    the run's terminal event has been sent; ``("", "end", {...})`` last. Heartbeats are
    ``("", "", {})``."""

    async def read(run: str, after: int, limit: int) -> list[EventOut]:
        return await runs.events(run, after_seq=after, limit=limit)

    async with hub.feed(run_id, read) as feed:
        async for frame in _run_frames(runs, hub, feed, run_id, after_seq):
            yield frame


async def _run_frames(
    runs: RunStore, hub: LiveHub, feed: RunFeed, run_id: str, after_seq: int
) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    last = after_seq
    quiet_since = time.monotonic()
    since: float | None = None  # fresh as of now, or as of the wake-up that woke us
    while True:
        events = await feed.after(last, PAGE, since=since)
        since = None
        for event in events:
            yield str(event.seq), event.kind, _event_data(event)
            last = event.seq
        if events:
            quiet_since = time.monotonic()
            if len(events) == PAGE:
                continue  # more rows are waiting: send them before waiting for news
            if _ended(events):
                summary = await runs.run_summary(run_id)
                yield "", "end", {"run_id": run_id, "state": summary.state, "last_seq": last}
                return
        else:
            summary = await runs.run_summary(run_id)
            if summary.terminal:  # resumed after its move into the end: nothing more comes
                yield "", "end", {"run_id": run_id, "state": summary.state, "last_seq": last}
                return
        if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            quiet_since = time.monotonic()
            yield "", "", {}
        if await hub.wait(run_id, POLL_SECONDS):
            since = hub.woken_at(run_id)


def _ended(events: list[EventOut]) -> bool:
    """Whether ``events`` hold the run's move into a terminal state."""
    return any(e.kind == "status" and e.data.get("to") in TERMINAL_STATES for e in events)


def _event_data(event: EventOut) -> dict[str, Any]:
    return {"seq": event.seq, "kind": event.kind, "data": event.data,
            "created_at": event.created_at.isoformat()}  # fmt: skip


async def fleet_frames(
    runs: RunStore, hub: LiveHub, repository: str | None, allowed: tuple[str, ...]
) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """A ``run`` frame (a ``RunSummary``) for every run that is active or waiting for review
    when the stream opens, then one each time a run's state, cost or event count changes."""
    seen: dict[str, tuple[str, float, int]] = {}
    quiet_since = time.monotonic()
    watched = [s.value for s in RunState if s.value not in TERMINAL_STATES]
    while True:
        page = await runs.list_runs(
            states=watched, repository=repository, allowed_repos=allowed, limit=200
        )
        current = {r.id: r for r in page.items}
        gone = [run_id for run_id in seen if run_id not in current]
        for run_id in gone:  # ended since the last look: say how
            summary = await runs.run_summary(run_id)
            current[run_id] = summary
        changed = False
        for run in current.values():
            mark = (run.state, run.cost_usd, run.last_seq)
            if seen.get(run.id) != mark:
                seen[run.id] = mark
                changed = True
                yield run.id, "run", run.model_dump(mode="json")
        for run_id in gone:
            seen.pop(run_id, None)
        if changed:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            quiet_since = time.monotonic()
            yield "", "", {}
        await hub.wait(FLEET, POLL_SECONDS)


def sse(frames: AsyncIterator[tuple[str, str, dict[str, Any]]]) -> ServerSentEvent:
    async def body() -> AsyncIterator[ServerSentEventMessage]:
        yield ServerSentEventMessage(retry=2000, comment="bosun live events")
        async for frame_id, kind, data in frames:
            if not kind:
                yield ServerSentEventMessage(comment="keep-alive")
                continue
            yield ServerSentEventMessage(
                data=json.dumps(data, separators=(",", ":")), event=kind, id=frame_id or None
            )

    return ServerSentEvent(body(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class StreamController(Controller):
    path = "/api/v1"
    tags = ["live"]

    @get(
        "/runs/{run_id:str}/events/stream",
        summary="A run's events as Server-Sent Events: history, then live, until the end",
        description="`id:` is the event's `seq`: reconnect with `Last-Event-ID` (or "
        "`?after_seq=`) to resume exactly. Each event's `event:` is its kind; a final `end` "
        "event follows the move into a terminal state. Comment lines keep the connection "
        "open every 15 s.",
        media_type="text/event-stream",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def run_stream(
        self,
        request: AnyRequest,
        run_id: FromPath[str],
        after_seq: Annotated[int, QueryParameter(ge=0, le=MAX_ID)] = 0,
    ) -> ServerSentEvent:
        runs = store(request)
        require_repo(caller_of(request), await runs.repository_of(run_id))
        start = _resume_point(request, after_seq)
        return sse(run_frames(runs, hub_of(request), run_id, start))

    @get(
        "/events/stream",
        summary="Every run's state, phase and cost as they change (Server-Sent Events)",
        description="A `run` event carries the run's summary each time its state, cost or "
        "event count changes, for runs not yet ended (and once more when one ends).",
        media_type="text/event-stream",
        responses=problem_responses(400, 401),
    )
    async def fleet_stream(
        self,
        request: AnyRequest,
        repo: Annotated[str | None, QueryParameter(description="OWNER/NAME")] = None,
    ) -> ServerSentEvent:
        caller = caller_of(request)
        return sse(fleet_frames(store(request), hub_of(request), repo, caller.repos))


@websocket("/api/v1/runs/{run_id:str}/events/ws")
async def run_socket(socket: WebSocket[Any, Any, Any], run_id: FromPath[str]) -> None:
    """The run stream's frames as JSON messages (``{"id", "event", "data"}``); send
    ``{"after_seq": N}`` first to resume."""
    runs = RunStore(services_of(socket).sessions)  # type: ignore[arg-type]
    require_repo(caller_of(socket), await runs.repository_of(run_id))
    await socket.accept()
    after = 0
    try:
        async with asyncio.timeout(2):
            first = await socket.receive_json()
        if isinstance(first, dict) and isinstance(first.get("after_seq"), int):
            after = max(0, first["after_seq"])
    except (TimeoutError, ValueError):
        pass
    try:
        async for frame_id, kind, data in run_frames(runs, hub_of(socket), run_id, after):
            message = {"id": frame_id or None, "event": kind or "keep-alive", "data": data}
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await socket.send_json(message)
            except TimeoutError:
                await socket.close(code=1008, reason="the client did not read its events")
                return
        await socket.close(code=1000, reason="the run ended")
    except WebSocketDisconnect:
        return


__all__ = ["RunSummary", "StreamController", "run_socket"]
