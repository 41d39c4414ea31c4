"""``POST /webhooks/github``: verify, record, enqueue, answer 202 — nothing else (SPEC §3.1).

The hot path of intake is plain ASGI in front of the Litestar app (``WebhookRoute``): no
routing, middleware, ``Request`` or ``Response`` objects; under ``bosun web`` not even ASGI
(``bot.web.intake_protocol``). A delivery's log line is at ``debug`` (the deliveries table is
its record). Measured in bench/intake_ab.py; see docs/benchmarks.md.

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
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import structlog
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)
from sqlalchemy.exc import SQLAlchemyError

from bot import tracing
from bot.jobids import PROCESS_DELIVERY
from bot.metrics.local import webhook_rejected
from bot.services import Services
from bot.web.intake import DeliveryIntake, IncomingDelivery

log = structlog.get_logger("bot.web.webhooks")

__all__ = [
    "PROCESS_DELIVERY",
    "WEBHOOK_PATH",
    "WebhookRoute",
    "signature_valid",
]

WEBHOOK_PATH = "/webhooks/github"
_JSON = [(b"content-type", b"application/json")]
_ENCODE = msgspec.json.Encoder().encode


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-Hub-Signature-256: sha256=<hex>`` over the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


Answer = tuple[int, dict[str, Any]]


class _Disconnected(Exception):
    """The client went away before its request was whole: nothing is stored or answered."""


def _error(status: int, message: str, reason: str) -> Answer:
    webhook_rejected(reason)
    return status, {"error": message}


class _Installation(msgspec.Struct):
    id: int | None = None


class _Repository(msgspec.Struct):
    full_name: str | None = None


class _Summary(msgspec.Struct):
    """The fields the intake records; msgspec checks the whole body is JSON while it skips
    everything else without building it."""

    action: str | None = None
    installation: _Installation | None = None
    repository: _Repository | None = None


_DECODE_SUMMARY = msgspec.json.Decoder(_Summary).decode


def _summary_of(body: bytes) -> tuple[str | None, int | None, str | None]:
    """(action, installation id, repository full name); raises ``msgspec.DecodeError`` when
    the body is not JSON."""
    try:
        summary = _DECODE_SUMMARY(body)
    except msgspec.ValidationError:  # JSON of another shape: read what is there, as it is
        return _summary(msgspec.json.decode(body))
    return (
        summary.action,
        summary.installation.id if summary.installation else None,
        summary.repository.full_name if summary.repository else None,
    )


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
        inst_id if isinstance(inst_id, int) and not isinstance(inst_id, bool) else None,
        full_name if isinstance(full_name, str) else None,
    )


class WebhookRoute:
    """``app`` with ``/webhooks/github`` answered in front of it (``state`` is the Litestar
    app's: its ``services`` and ``intake`` exist once the lifespan has started). Under
    ``bosun web`` uvicorn's protocol answers the webhook before any ASGI object is made
    (``bot.web.intake_protocol``); both paths call ``answer``."""

    def __init__(self, app: ASGIApp, state: State, max_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] != WEBHOOK_PATH:
            await self.app(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = []
        if scope.get("method") != "POST":
            status, body = 405, _ENCODE({"error": "only POST is accepted here"})
            extra = [(b"allow", b"POST")]
        else:
            try:
                payload = await _read_body(scope, receive, self.max_bytes)
            except _Disconnected:
                return
            status, body = await self.answer(scope["headers"], payload)
        headers = [*_JSON, (b"content-length", str(len(body)).encode()), *extra]
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)

    async def answer(
        self, headers: Iterable[tuple[bytes, bytes]], body: bytes | None
    ) -> tuple[int, bytes]:
        """The status and JSON body for a POST with these headers (names lower-case) and
        body (None: larger than allowed, not read whole)."""
        structlog.contextvars.clear_contextvars()
        try:
            status, answer = await _receive(self.state, headers, body, self.max_bytes)
        except Exception as exc:  # answered 500 like any route, and logged
            log.exception("webhook_failed", error=str(exc))
            status, answer = 500, {"error": "internal error"}
        finally:
            structlog.contextvars.clear_contextvars()
        return status, _ENCODE(answer)


async def _read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes | None:
    """The whole body, or None when it is larger than ``max_bytes``."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _receive(
    state: State, raw_headers: Iterable[tuple[bytes, bytes]], body: bytes | None, max_bytes: int
) -> Answer:
    started = time.perf_counter()
    services: Services = state.services
    secret = services.webhook_secret()
    if secret is None:
        return _error(
            503, "webhook secret not configured: set BOSUN_GITHUB__WEBHOOK_SECRET", "no_secret"
        )
    if body is None:
        return _error(413, f"the body is larger than {max_bytes} bytes", "too_large")
    headers: dict[bytes, bytes] = {}
    for name, value in raw_headers:
        if name.startswith(b"x-"):
            headers[name] = value
    signature = headers.get(b"x-hub-signature-256")
    if not signature_valid(secret, body, signature.decode("latin-1") if signature else None):
        log.warning("delivery_signature_rejected")
        return _error(401, "missing or invalid X-Hub-Signature-256", "signature")
    event = headers.get(b"x-github-event", b"").decode("latin-1")
    delivery_id = headers.get(b"x-github-delivery", b"").decode("latin-1")
    if not event or not delivery_id or len(delivery_id) > 64:
        return _error(400, "X-GitHub-Event and X-GitHub-Delivery headers are required", "headers")
    try:
        action, installation_id, repository = _summary_of(body)
    except msgspec.DecodeError as exc:
        return _error(400, f"body is not valid JSON: {exc}", "json")
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
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    if recorded.duplicate and not recorded.process:
        log.debug("delivery_duplicate_ignored", gh_event=event, duration_ms=duration_ms)
        return 202, {"delivery": delivery_id, "status": "duplicate"}
    # The deliveries table is the record of every delivery; at `info` a log line each would
    # cost a third of intake's CPU (bench/intake_ab.py), so it is written at `debug`.
    log.debug(
        "delivery_recorded",
        gh_event=event,
        action=action,
        queued=recorded.queued,
        duplicate=recorded.duplicate,
        duration_ms=duration_ms,
    )
    return 202, {
        "delivery": delivery_id,
        "status": "duplicate" if recorded.duplicate else "accepted",
    }
