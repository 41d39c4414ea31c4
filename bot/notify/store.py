"""Endpoints and their delivery log: what the API lists, creates and deletes, and the
configured endpoints (``notify.endpoints``) kept in step with the database."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.control.queries import decode_cursor, encode_cursor
from bot.control.views import Page, Timestamp
from bot.db.engine import SessionFactory
from bot.db.models import Notification, NotificationAttempt, WebhookEndpoint
from bot.errors import ConflictError, NotFoundError
from bot.notify.settings import NotificationType, NotifySettings

log = structlog.get_logger("bot.notify")


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class WebhookOut(_View):
    id: int
    name: str
    url: str
    events: list[NotificationType] = Field(description="Types it gets; empty: every type.")
    repos: list[str] = Field(description="Repositories it gets (`OWNER/*` too); empty: all.")
    source: str = Field(description="`settings` (`BOSUN_NOTIFY__ENDPOINTS`) or `api`.")
    created_at: Timestamp
    pending: int = Field(description="Notifications waiting to be sent or retried.")
    failed: int = Field(description="Notifications given up after `notify.max_attempts`.")


class NewWebhook(WebhookOut):
    secret: str = Field(description="The signing secret; shown in this answer only.")


class AttemptOut(_View):
    attempt: int
    started_at: Timestamp
    duration_ms: int
    status_code: int | None = Field(description="The endpoint's answer; null when none came.")
    error: str | None


class DeliveryOut(_View):
    id: str = Field(description="The `X-Bosun-Delivery` header and the body's `id`.")
    type: NotificationType
    run_id: str
    repository: str
    state: str
    previous_state: str
    status: str = Field(description="`pending`, `delivered` or `failed`.")
    attempts: list[AttemptOut]
    created_at: Timestamp
    next_attempt_at: Timestamp | None = Field(description="When it is tried again (pending).")
    delivered_at: Timestamp | None


async def _counts(session: AsyncSession) -> dict[tuple[int, str], int]:
    rows = await session.execute(
        select(Notification.endpoint_id, Notification.status, func.count())
        .where(Notification.status.in_(("pending", "failed")))
        .group_by(Notification.endpoint_id, Notification.status)
    )
    return {(endpoint, status): count for endpoint, status, count in rows.all()}


def _out(row: WebhookEndpoint, counts: dict[tuple[int, str], int]) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        name=row.name,
        url=row.url,
        events=list(row.events or []),
        repos=list(row.repos or []),
        source=row.source,
        created_at=row.created_at,
        pending=counts.get((row.id, "pending"), 0),
        failed=counts.get((row.id, "failed"), 0),
    )


class WebhookStore:
    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions

    async def endpoints(self) -> list[WebhookOut]:
        async with self.sessions() as session:
            rows = await session.execute(select(WebhookEndpoint).order_by(WebhookEndpoint.id))
            counts = await _counts(session)
            return [_out(row, counts) for row in rows.scalars()]

    async def get(self, endpoint_id: int) -> WebhookOut:
        async with self.sessions() as session:
            row = await self._require(session, endpoint_id)
            return _out(row, await _counts(session))

    async def create(
        self,
        *,
        name: str,
        url: str,
        secret: str | None,
        events: list[NotificationType],
        repos: list[str],
    ) -> NewWebhook:
        secret = secret or secrets.token_urlsafe(32)
        try:
            async with self.sessions.begin() as session:
                row = WebhookEndpoint(
                    name=name, url=url, secret=secret, events=events, repos=repos, source="api"
                )
                session.add(row)
                await session.flush()
                out = _out(row, {})
        except IntegrityError as exc:
            raise ConflictError(f"a webhook named {name!r} exists") from exc
        log.info("webhook_endpoint_created", endpoint=name, url=url)
        return NewWebhook(**out.model_dump(), secret=secret)

    async def delete(self, endpoint_id: int) -> WebhookOut:
        async with self.sessions.begin() as session:
            row = await self._require(session, endpoint_id)
            if row.source == "settings":
                raise ConflictError(
                    f"webhook {row.name!r} is configured in BOSUN_NOTIFY__ENDPOINTS; remove it "
                    "there (it is dropped when a process starts without it)"
                )
            out = _out(row, await _counts(session))
            await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == row.id))
        log.info("webhook_endpoint_deleted", endpoint=out.name)
        return out

    async def deliveries(
        self, endpoint_id: int, *, cursor: str | None = None, limit: int = 50
    ) -> Page[DeliveryOut]:
        """The endpoint's notifications with every attempt, newest first."""
        size = max(1, min(limit, 200))
        query = select(Notification).where(Notification.endpoint_id == endpoint_id)
        if cursor:
            (last,) = decode_cursor(cursor)
            query = query.where(Notification.id < int(last))
        async with self.sessions() as session:
            await self._require(session, endpoint_id)
            rows = list(
                (
                    await session.execute(query.order_by(Notification.id.desc()).limit(size + 1))
                ).scalars()
            )
            page = rows[:size]
            attempts: dict[int, list[AttemptOut]] = {row.id: [] for row in page}
            if page:
                found = await session.execute(
                    select(NotificationAttempt)
                    .where(NotificationAttempt.notification_id.in_(list(attempts)))
                    .order_by(NotificationAttempt.notification_id, NotificationAttempt.attempt)
                )
                for a in found.scalars():
                    attempts[a.notification_id].append(
                        AttemptOut(
                            attempt=a.attempt,
                            started_at=a.started_at,
                            duration_ms=a.duration_ms,
                            status_code=a.status_code,
                            error=a.error,
                        )
                    )
        items = [
            DeliveryOut(
                id=row.delivery_id,
                type=row.type,
                run_id=row.run_id,
                repository=row.repository,
                state=row.state,
                previous_state=row.previous_state,
                status=row.status,
                attempts=attempts[row.id],
                created_at=row.created_at,
                next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
                delivered_at=row.delivered_at,
            )
            for row in page
        ]
        more = encode_cursor([page[-1].id]) if len(rows) > size else None
        return Page[DeliveryOut](items=items, next_cursor=more)

    async def _require(self, session: AsyncSession, endpoint_id: int) -> WebhookEndpoint:
        row = await session.get(WebhookEndpoint, endpoint_id)
        if row is None:
            raise NotFoundError(f"no webhook {endpoint_id}")
        return row


async def sync_configured(sessions: SessionFactory, settings: NotifySettings) -> None:
    """Make the ``settings``-sourced endpoints in the database exactly ``settings.endpoints``
    (matched by name; an API endpoint of the same name is taken over). Two processes starting
    together may race: the one that loses tries again."""
    for attempt in range(3):
        try:
            await _sync(sessions, settings)
            return
        except IntegrityError:
            if attempt == 2:
                raise


async def _sync(sessions: SessionFactory, settings: NotifySettings) -> None:
    wanted = {e.name: e for e in settings.endpoints}
    async with sessions.begin() as session:
        rows = {r.name: r for r in (await session.execute(select(WebhookEndpoint))).scalars()}
        for name, row in rows.items():
            if row.source == "settings" and name not in wanted:
                await session.delete(row)
        for name, config in wanted.items():
            row = rows.get(name) or WebhookEndpoint(name=name, created_at=datetime.now(UTC))
            row.url, row.secret = config.url, config.secret.get_secret_value()
            row.events, row.repos, row.source = list(config.events), list(config.repos), "settings"
            session.add(row)


async def sync_quietly(sessions: SessionFactory, settings: NotifySettings) -> None:
    """``sync_configured`` at a process's start: a database not migrated yet or unreachable is
    logged (``/readyz`` and ``bosun doctor`` say more), never fatal."""
    try:
        await sync_configured(sessions, settings)
    except Exception as exc:  # noqa: BLE001
        log.warning("notify_endpoints_not_synced", error=str(exc)[:300])
