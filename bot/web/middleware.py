"""Request logging: clear the structlog context per request, bind a request id, log the
outcome once (``request_completed``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("bot.web")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def request_logging(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        request_id = uuid.uuid4().hex[:16]
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            if path not in QUIET_PATHS or status["code"] >= 500:
                log.info(
                    "request_completed",
                    method=scope.get("method"),
                    path=path,
                    status=status["code"],
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()

    return middleware
