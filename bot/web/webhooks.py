"""``POST /webhooks/github``: verify, record, enqueue, answer 202 — nothing else (SPEC §3.1).

The signature is checked on the raw bytes before anything is parsed. The delivery is stored
under its ``X-GitHub-Delivery`` id (a redelivery carries the same id and is acknowledged, not
processed twice), then ``process_delivery`` is enqueued with ``_job_id`` = the delivery id —
both through the process's ``DeliveryIntake`` (bot/web/intake.py), which writes every delivery
waiting at that moment in one transaction and one Redis round trip. If Redis is down the
delivery is still stored and answered; the reconciler enqueues it later. If the database
cannot store it the answer is 503, so GitHub shows the delivery as failed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
import structlog
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from sqlalchemy.exc import SQLAlchemyError

from bot import tracing
from bot.jobids import PROCESS_DELIVERY
from bot.metrics.local import webhook_rejected
from bot.services import Services
from bot.web.intake import DeliveryIntake, IncomingDelivery

log = structlog.get_logger("bot.web.webhooks")

__all__ = ["PROCESS_DELIVERY", "receive_webhook", "signature_valid"]


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-Hub-Signature-256: sha256=<hex>`` over the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


def _error(status: int, message: str, reason: str) -> Response[dict[str, str]]:
    webhook_rejected(reason)
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


@post("/webhooks/github", status_code=202, include_in_schema=False)
async def receive_webhook(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    services: Services = state.services
    secret = services.webhook_secret()
    if secret is None:
        return _error(
            503, "webhook secret not configured: set BOSUN_GITHUB__WEBHOOK_SECRET", "no_secret"
        )
    try:
        body = await request.body()
    except HTTPException as exc:  # over max_webhook_bytes: 413
        webhook_rejected("too_large" if exc.status_code == 413 else "headers")
        raise
    if not signature_valid(secret, body, request.headers.get("x-hub-signature-256")):
        log.warning("delivery_signature_rejected")
        return _error(401, "missing or invalid X-Hub-Signature-256", "signature")
    event = request.headers.get("x-github-event")
    delivery_id = request.headers.get("x-github-delivery")
    if not event or not delivery_id or len(delivery_id) > 64:
        return _error(400, "X-GitHub-Event and X-GitHub-Delivery headers are required", "headers")
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return _error(400, f"body is not valid JSON: {exc}", "json")
    action, installation_id, repository = _summary(payload)
    structlog.contextvars.bind_contextvars(
        delivery_id=delivery_id, installation_id=installation_id, repo=repository
    )
    intake: DeliveryIntake = state.intake
    # A delivery starts a trace (tracing on): its processing and the run it starts continue it.
    with tracing.span(
        "receive_delivery",
        {
            "bosun.delivery.id": delivery_id,
            "github.event": event,
            "github.action": action,
            "github.installation.id": installation_id,
            "bosun.repository": repository,
        },
        kind="server",
        parent=None,
    ) as current:
        incoming = IncomingDelivery(
            id=delivery_id,
            event=event,
            action=action,
            installation_id=installation_id,
            repository=repository,
            payload=body.decode(),
            trace_parent=tracing.traceparent_of(current),
        )
        try:
            recorded = await intake.submit(incoming)
        except SQLAlchemyError as exc:
            log.error("delivery_store_failed", gh_event=event, error=str(exc))
            tracing.failed(current, "store_failed")
            return _error(
                503,
                "the delivery could not be stored; GitHub can redeliver it later",
                "store_failed",
            )
        tracing.set_attributes(
            current,
            {
                "bosun.delivery.duplicate": recorded.duplicate,
                "bosun.delivery.queued": recorded.queued,
            },
        )
    if recorded.duplicate and not recorded.process:
        log.info("delivery_duplicate_ignored", gh_event=event)
        return Response({"delivery": delivery_id, "status": "duplicate"}, status_code=202)
    log.info(
        "delivery_recorded",
        gh_event=event,
        action=action,
        queued=recorded.queued,
        duplicate=recorded.duplicate,
    )
    return Response(
        {"delivery": delivery_id, "status": "duplicate" if recorded.duplicate else "accepted"},
        status_code=202,
    )
