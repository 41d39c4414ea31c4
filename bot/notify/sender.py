"""Sending notifications from the outbox: claim what is due, POST it signed, record the try.

Any number of senders (workers, the sweep and the woken job) may run at once: a sender claims a
notification with a compare-and-set on its ``attempts`` that also pushes ``next_attempt_at``
past the attempt's timeout, so each attempt is made by one sender, and a sender that dies
mid-attempt only delays the next one. A 2xx answer delivers; anything else (another status, a
timeout, a refused connection) is retried after ``retry_base_seconds`` doubling per attempt up
to ``retry_max_seconds``, until ``max_attempts``.

The body is thin (``payload``): the type, the run's id, repository and states and the URL of
the run in the API, never a reason, a log line or file content; receivers fetch details from
the API. It is signed like GitHub's webhooks: ``X-Bosun-Signature-256: sha256=<hex>``, the
HMAC-SHA256 of the raw body under the endpoint's secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import insert, select, update

from bot.db.engine import SessionFactory
from bot.db.models import Notification, NotificationAttempt, WebhookEndpoint
from bot.notify.settings import NotifySettings

log = structlog.get_logger("bot.notify")

SIGNATURE_HEADER = "X-Bosun-Signature-256"


def sign(secret: str, body: bytes) -> str:
    """The ``X-Bosun-Signature-256`` value of ``body`` under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(row: Notification, public_url: str) -> bytes:
    """The JSON body of ``row``: what happened and where to read the rest, nothing else."""
    run_url = f"{public_url.rstrip('/')}/api/v1/runs/{row.run_id}"
    document: dict[str, Any] = {
        "id": row.delivery_id,
        "type": row.type,
        "occurred_at": _utc(row.created_at).isoformat().replace("+00:00", "Z"),
        "run": {
            "id": row.run_id,
            "repository": row.repository,
            "state": row.state,
            "previous_state": row.previous_state,
            "seq": row.seq,
            "url": run_url,
        },
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def headers(row: Notification, body: bytes, secret: str, now: datetime) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "Bosun-Notify",
        "X-Bosun-Event": row.type,
        "X-Bosun-Delivery": row.delivery_id,
        "X-Bosun-Timestamp": str(int(now.timestamp())),
        SIGNATURE_HEADER: sign(secret, body),
    }


def backoff(settings: NotifySettings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt."""
    seconds = settings.retry_base_seconds * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.retry_max_seconds))


@dataclass(frozen=True)
class Claimed:
    row: Notification
    """As read when it was claimed (detached)."""
    body: bytes
    url: str
    secret: str
    attempt: int


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Sends the notifications due, ``settings.concurrency`` at a time: each round claims that
    many and waits for all of them (at most ``timeout_seconds``), well inside the claim's
    lease."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: NotifySettings,
        public_url: str,
        client: httpx.AsyncClient,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.public_url = public_url
        self.client = client

    async def send_due(self, *, deadline: float | None = None) -> int:
        """Send every notification due now (and those falling due meanwhile), until none is
        left or ``deadline`` (monotonic) passes; returns how many attempts were made."""
        made = 0
        while deadline is None or time.monotonic() < deadline:
            claimed = await self._claim()
            if not claimed:
                break
            await asyncio.gather(*(self._attempt(c) for c in claimed))
            made += len(claimed)
        return made

    async def _claim(self) -> list[Claimed]:
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.settings.timeout_seconds * 2 + 5)
        claimed: list[Claimed] = []
        async with self.sessions.begin() as session:
            due = (
                await session.execute(
                    select(Notification, WebhookEndpoint.url, WebhookEndpoint.secret)
                    .join(WebhookEndpoint, WebhookEndpoint.id == Notification.endpoint_id)
                    .where(Notification.status == "pending", Notification.next_attempt_at <= now)
                    .order_by(Notification.next_attempt_at, Notification.id)
                    .limit(self.settings.concurrency)
                )
            ).all()
            session.expunge_all()  # the rows are read once; updates go by compare-and-set
            for row, url, secret in due:
                body = row.body or payload(row, self.public_url).decode()
                taken = (
                    await session.execute(
                        update(Notification)
                        .where(
                            Notification.id == row.id,
                            Notification.status == "pending",
                            Notification.attempts == row.attempts,
                        )
                        .values(attempts=row.attempts + 1, next_attempt_at=lease, body=body)
                        .returning(Notification.id),
                        execution_options={"synchronize_session": False},
                    )
                ).scalar_one_or_none()
                if taken is not None:
                    claimed.append(Claimed(row, body.encode(), url, secret, row.attempts + 1))
        return claimed

    async def _attempt(self, claimed: Claimed) -> None:
        started = datetime.now(UTC)
        outcome = await self._post(claimed, started)
        await self._record(claimed, started, outcome)

    async def _post(self, claimed: Claimed, now: datetime) -> Outcome:
        body = claimed.body
        t0 = time.monotonic()
        try:
            response = await self.client.post(
                claimed.url,
                content=body,
                headers=headers(claimed.row, body, claimed.secret, now),
                timeout=self.settings.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            return Outcome(None, reason[:500], _ms(t0))
        error = None if response.is_success else f"HTTP {response.status_code}"
        return Outcome(response.status_code, error, _ms(t0))

    async def _record(self, claimed: Claimed, started: datetime, outcome: Outcome) -> None:
        row, attempt = claimed.row, claimed.attempt
        now = datetime.now(UTC)
        values: dict[str, Any] = {"last_status": outcome.status_code, "last_error": outcome.error}
        if outcome.delivered:
            values.update(status="delivered", delivered_at=now)
        elif attempt >= self.settings.max_attempts:
            values.update(status="failed")
        else:
            values.update(next_attempt_at=now + backoff(self.settings, attempt))
        async with self.sessions.begin() as session:
            await session.execute(
                insert(NotificationAttempt).values(
                    notification_id=row.id,
                    attempt=attempt,
                    started_at=started,
                    duration_ms=outcome.duration_ms,
                    status_code=outcome.status_code,
                    error=outcome.error,
                )
            )
            await session.execute(
                update(Notification)
                .where(Notification.id == row.id, Notification.attempts == attempt)
                .values(**values),
                execution_options={"synchronize_session": False},
            )
        log.info(
            "notification_delivered" if outcome.delivered else "notification_attempt_failed",
            delivery=row.delivery_id,
            notification_type=row.type,
            run_id=row.run_id,
            attempt=attempt,
            status=outcome.status_code,
            error=outcome.error,
            final=values.get("status"),
        )


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
