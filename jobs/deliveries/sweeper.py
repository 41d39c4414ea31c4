"""The redelivery sweeper (SPEC §3.1): deliveries GitHub could not hand to Bosun — the web
process down, a 5xx, a timeout — are asked for again, so downtime of the receiver loses
nothing.

At worker start and every ``worker.sweep_minutes`` it lists the App's recent deliveries
(``GET /app/hook/deliveries``, newest first, back to ``worker.sweep_window_hours``, page after
page by the opaque cursor of GitHub's ``Link: rel="next"`` header), groups the
attempts by delivery guid, and asks GitHub to redeliver (``POST …/attempts``) each guid that has
no successful attempt and that Bosun has not stored — at most ``MAX_PER_SWEEP`` per sweep, and
each guid once per window (a Redis claim), so a receiver that keeps failing is not flooded.
Deciding is pure (``to_redeliver``); the job only lists, checks the database and asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from githubkit.exception import GitHubException
from sqlalchemy import select

from bot.db.models import Delivery
from jobs.context import job_context

log = structlog.get_logger("jobs.deliveries.sweeper")

MAX_PER_SWEEP = 50
PAGE = 100
MAX_PAGES = 100
"""At most this many pages per sweep (10,000 attempts), whatever the cursors say."""


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt as GitHub lists it."""

    id: int
    guid: str
    delivered_at: datetime
    status_code: int


def to_redeliver(attempts: Iterable[Attempt], stored: set[str], limit: int) -> list[Attempt]:
    """The newest attempt of each guid that never succeeded and that Bosun has not stored,
    newest first, at most ``limit``."""
    newest: dict[str, Attempt] = {}
    succeeded: set[str] = set()
    for attempt in attempts:
        if 200 <= attempt.status_code < 300:
            succeeded.add(attempt.guid)
        current = newest.get(attempt.guid)
        if current is None or attempt.delivered_at > current.delivered_at:
            newest[attempt.guid] = attempt
    failed = [a for guid, a in newest.items() if guid not in succeeded and guid not in stored]
    failed.sort(key=lambda a: a.delivered_at, reverse=True)
    return failed[:limit]


def next_cursor(link: str | None) -> str | None:
    """The ``cursor`` of the ``rel="next"`` page in a ``Link`` header, as GitHub wrote it:
    an opaque token, never derived from the items listed."""
    if not link:
        return None
    for part in link.split(","):
        target, _, params = part.partition(";")
        rels = {p.strip() for p in params.split(";")}
        if 'rel="next"' not in rels and "rel=next" not in rels:
            continue
        url = target.strip().removeprefix("<").removesuffix(">")
        found = parse_qs(urlsplit(url).query).get("cursor")
        return found[0] if found else None
    return None


async def _recent_attempts(gh: Any, since: datetime) -> list[Attempt]:
    attempts: list[Attempt] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        kwargs: dict[str, Any] = {"per_page": PAGE}
        if cursor is not None:
            kwargs["cursor"] = cursor
        response = await gh.rest.apps.async_list_webhook_deliveries(**kwargs)
        for item in response.parsed_data:
            delivered = item.delivered_at
            if delivered.tzinfo is None:
                delivered = delivered.replace(tzinfo=UTC)
            attempts.append(Attempt(item.id, item.guid, delivered, item.status_code))
        cursor = next_cursor(response.headers.get("link"))
        if cursor is None or not attempts or attempts[-1].delivered_at < since:
            break
    return [a for a in attempts if a.delivered_at >= since]


async def sweep_deliveries(ctx: dict[str, Any]) -> dict[str, int]:
    bosun = job_context(ctx)
    settings = bosun.settings
    if settings.github.app_id is None:
        return {"skipped": 1}
    window = timedelta(hours=settings.worker.sweep_window_hours)
    since = datetime.now(UTC) - window
    gh = bosun.github_app().app_client
    try:
        attempts = await _recent_attempts(gh, since)
    except GitHubException as exc:
        log.warning("delivery_sweep_failed", error=str(exc))
        return {"listed": 0, "redelivered": 0}
    guids = {a.guid for a in attempts}
    async with bosun.services.sessions() as session:
        rows = await session.execute(select(Delivery.id).where(Delivery.id.in_(guids)))
        stored = set(rows.scalars())
    redelivered = 0
    redis = bosun.services.redis
    for attempt in to_redeliver(attempts, stored, MAX_PER_SWEEP):
        claim = settings.redis.key("redelivery", attempt.guid)
        if not await redis.set(claim, str(attempt.id), nx=True, ex=int(window.total_seconds())):
            continue  # asked for once in this window already
        try:
            await gh.rest.apps.async_redeliver_webhook_delivery(attempt.id)
        except GitHubException as exc:
            await redis.delete(claim)
            log.warning("delivery_redelivery_failed", guid=attempt.guid, error=str(exc))
            continue
        redelivered += 1
        log.info("delivery_redelivery_requested", guid=attempt.guid, attempt=attempt.id)
    return {"listed": len(attempts), "redelivered": redelivered}


__all__ = ["Attempt", "next_cursor", "sweep_deliveries", "to_redeliver"]
