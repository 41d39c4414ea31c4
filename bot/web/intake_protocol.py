"""uvicorn's HTTP protocol with ``POST /webhooks/github`` answered in the protocol itself.

Intake is the one path that must keep up with GitHub's bursts (SPEC §10). Through ASGI each
delivery costs a scope, a request cycle, ``receive``/``send`` messages and two socket writes;
here the body is gathered as the parser hands it over, the delivery is checked and stored by
the same code as the ASGI route (``WebhookRoute.answer``: secret, size, HMAC, headers, JSON,
the group-commit writer), and the answer goes out in one write. Every other request, and a
webhook that arrives while another request on the same connection is still being answered
(pipelining), takes uvicorn's ordinary ASGI path, so answers keep their order.

Measured in bench/intake_ab.py (docs/benchmarks.md). ``bosun web`` and ``bosun up`` pass this
class to uvicorn as its ``http`` protocol; it subclasses uvicorn's httptools protocol, whose
version pyproject.toml bounds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bot.web.webhooks import WEBHOOK_PATH, WebhookRoute

_PATH = WEBHOOK_PATH.encode()
_JSON = b"content-type: application/json\r\n"
_CLOSE = b"connection: close\r\n"


class _Answering:
    """Stands in for uvicorn's request cycle while a webhook is answered here: a pipelined
    request that arrives meanwhile sees a response in progress and waits its turn."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = True
        self.message_event = asyncio.Event()


def webhook_route_of(app: Any) -> WebhookRoute | None:
    """The ``WebhookRoute`` in front of the Litestar app inside uvicorn's loaded app (through
    its middleware wrappers), or None when the app has none."""
    for _ in range(8):
        if app is None:
            return None
        handler = getattr(app, "asgi_handler", None)
        if isinstance(handler, WebhookRoute):
            return handler
        app = getattr(app, "app", None)
    return None


class IntakeProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._route = webhook_route_of(self.config.loaded_app)
        self._body: list[bytes] | None = None
        self._size = 0
        self._too_large = False

    def on_headers_complete(self) -> None:
        route = self._route
        if (
            route is None
            or self.parser.get_method() != b"POST"
            or self.url != _PATH
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        self._body = []
        self._size = 0
        self._too_large = False
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > route.max_bytes:
                self._too_large = True
        answering = _Answering(self.headers)
        answering.keep_alive = (
            self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        )
        self.cycle = answering  # type: ignore[assignment]
        if self._too_large:
            self._answer(answering, None)
        elif self.expect_100_continue:  # curl asks before sending a body over 1 KB
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            super().on_body(body)
            return
        if self._too_large:
            return
        self._size += len(body)
        if self._route is not None and self._size > self._route.max_bytes:
            self._too_large = True
            self._answer(self.cycle, None)  # type: ignore[arg-type]
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._body is None:
            super().on_message_complete()
            return
        body, self._body = b"".join(self._body), None
        if not self._too_large:
            self._answer(self.cycle, body)  # type: ignore[arg-type]

    def _answer(self, answering: _Answering, body: bytes | None) -> None:
        if body is None:  # refused before the body was read: the connection ends after
            answering.keep_alive = False
        task = self.loop.create_task(self._respond(answering, body))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _respond(self, answering: _Answering, body: bytes | None) -> None:
        assert self._route is not None
        status, content = await self._route.answer(answering.headers, body)
        if answering.disconnected or self.transport.is_closing():
            answering.response_complete = True
            return
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [_JSON, b"content-length: ", str(len(content)).encode(), b"\r\n"]
        if not answering.keep_alive:
            head.append(_CLOSE)
        head += [b"\r\n", content]
        self.transport.write(b"".join(head))
        answering.response_complete = True
        if not answering.keep_alive:
            self.transport.close()
            return
        self.on_response_complete()
