"""Steers on their way to a running agent: the review step records each ``/bosun steer`` as a
``steer`` event of the run (the durable, ordered queue) and sets a per-run Redis key; the run's
watch (``jobs.run.pipeline``) sees the key within a fraction of a second, reads the new ``steer``
events from the database and hands them to the run's gateway, which puts them into the agent's
next model request and reports it (``steer_delivered``). Redis only wakes the watch: what is
delivered is read from the database, so whoever can write to Redis cannot steer an agent."""

from __future__ import annotations

from sqlalchemy import select

from bot.db.engine import SessionFactory
from bot.db.models import RunEvent
from bot.domain.steering import SteerMessage
from bot.settings import Settings

STEER_TTL_SECONDS = 86_400


def steer_wake_key(settings: Settings, run_id: str) -> str:
    return settings.redis.key("steer", run_id)


async def queued_steers(
    sessions: SessionFactory, run_id: str, after_id: int
) -> tuple[list[SteerMessage], int]:
    """The run's live steers recorded after event ``after_id`` (folded ones are already in the
    prompt), oldest first, and the last event id read."""
    async with sessions() as session:
        rows = (
            await session.execute(
                select(RunEvent)
                .where(RunEvent.run_id == run_id, RunEvent.kind == "steer", RunEvent.id > after_id)
                .order_by(RunEvent.id)
            )
        ).scalars()
        out: list[SteerMessage] = []
        last = after_id
        for row in rows:
            last = max(last, row.id)
            data = row.data or {}
            if data.get("folded"):
                continue
            out.append(
                SteerMessage(str(data.get("actor", "")), str(data.get("message", "")), row.id)
            )
    return out, last


__all__ = ["STEER_TTL_SECONDS", "queued_steers", "steer_wake_key"]
