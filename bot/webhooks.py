"""``POST /webhooks/github``: verify, record, enqueue, answer 202 — nothing else (SPEC §3.1).

The signature is checked on the raw bytes before anything is parsed. The delivery is stored
under its ``X-GitHub-Delivery`` id (a redelivery carries the same id and is acknowledged, not
processed twice), then ``process_delivery`` is enqueued with ``_job_id`` = the delivery id.
If Redis is down the delivery is still stored and answered; the reconciler enqueues it later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import structlog
from litestar import Request, Response, post
from litestar.datastructures import State
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from bot.db.models import Delivery, DeliveryStatus
from bot.services import Services

log = structlog.get_logger("bot.webhooks")

PROCESS_JOB = "process_delivery"


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-Hub-Signature-256: sha256=<hex>`` over the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


def _error(status: int, message: str) -> Response[dict[str, str]]:
    return Response({"error": message}, status_code=status)


def _summary(payload: Any) -> tuple[str | None, int | None, str | None]:
    """(action, installation id, repository full name) without trusting the shape."""
    if not isinstance(payload, dict):
        return None, None, None
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    installation = payload.get("installation")
    inst_id = installation.get("id") if isinstance(installation, dict) else None
    repo = payload.get("repository")
    full_name = repo.get("full_name") if isinstance(repo, dict) else None
    return (
        action,
        inst_id if isinstance(inst_id, int) else None,
        full_name if isinstance(full_name, str) else None,
    )


async def enqueue_delivery(services: Services, delivery_id: str) -> bool:
    """Enqueue processing; ``False`` when Redis is unreachable (the reconciler retries)."""
    try:
        await services.redis.enqueue_job(PROCESS_JOB, delivery_id, _job_id=f"d:{delivery_id}")
    except Exception as exc:  # noqa: BLE001 -- the database already holds the delivery
        log.warning("delivery_enqueue_failed", delivery_id=delivery_id, error=str(exc))
        return False
    return True


@post("/webhooks/github", status_code=202, include_in_schema=False)
async def receive_webhook(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    services: Services = state.services
    secret = services.webhook_secret()
    if secret is None:
        return _error(503, "webhook secret not configured: set BOSUN_GITHUB__WEBHOOK_SECRET")
    body = await request.body()
    if not signature_valid(secret, body, request.headers.get("x-hub-signature-256")):
        log.warning("delivery_signature_rejected")
        return _error(401, "missing or invalid X-Hub-Signature-256")
    event = request.headers.get("x-github-event")
    delivery_id = request.headers.get("x-github-delivery")
    if not event or not delivery_id or len(delivery_id) > 64:
        return _error(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    action, installation_id, repository = _summary(payload)
    structlog.contextvars.bind_contextvars(
        delivery_id=delivery_id, installation_id=installation_id, repo=repository
    )
    delivery = Delivery(
        id=delivery_id,
        event=event,
        action=action,
        installation_id=installation_id,
        repository=repository,
        payload=body.decode(),
    )
    duplicate = False
    try:
        async with services.sessions.begin() as session:
            session.add(delivery)
    except IntegrityError:
        duplicate = True
        async with services.sessions.begin() as session:
            await session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(redeliveries=Delivery.redeliveries + 1)
            )
            status = await session.scalar(
                Delivery.__table__.select()
                .with_only_columns(Delivery.status)
                .where(Delivery.id == delivery_id)
            )
        if status != DeliveryStatus.RECEIVED:
            log.info("delivery_duplicate_ignored", gh_event=event, status=str(status))
            return Response({"delivery": delivery_id, "status": "duplicate"}, status_code=202)
    queued = await enqueue_delivery(services, delivery_id)
    log.info("delivery_recorded", gh_event=event, action=action, queued=queued, duplicate=duplicate)
    return Response(
        {"delivery": delivery_id, "status": "duplicate" if duplicate else "accepted"},
        status_code=202,
    )
