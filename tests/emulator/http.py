"""A small ASGI toolkit: requests, JSON responses, GitHub-shaped errors and a regex router."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

DOCS = "https://docs.github.com/rest"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    auth: Any = None  # set by the auth layer: an auth.Credential or None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, "Problems parsing JSON") from exc


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, or bytes for raw bodies
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


class HttpError(Exception):
    """An error answered the way GitHub answers: ``{"message", "documentation_url"}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        docs: str = DOCS,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}
        self.docs = docs

    def response(self) -> Response:
        body: dict[str, Any] = {"message": self.message, "documentation_url": self.docs}
        if self.errors is not None:
            body["errors"] = self.errors
        body["status"] = str(self.status)
        return Response(self.status, body, dict(self.headers))


def not_found() -> HttpError:
    return HttpError(404, "Not Found")


def validation_failed(resource: str, field_name: str, code: str, message: str) -> HttpError:
    error = {"resource": resource, "field": field_name, "code": code, "message": message}
    return HttpError(422, "Validation Failed", errors=[error])


Handler = Callable[[Request], "Response | Awaitable[Response]"]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    kind: str  # "jwt", "token", "public", "scenario", "git"
    permission: tuple[str, str] | None = None  # (installation permission, "read"/"write")


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        template: str,
        handler: Handler,
        kind: str = "token",
        permission: tuple[str, str] | None = None,
    ) -> None:
        """``template`` uses ``{name}`` for one segment and ``{name:path}`` for the rest."""
        regex = re.sub(
            r"\{(\w+)(:path)?\}",
            lambda m: f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)",
            template,
        )
        self.routes.append(Route(method, re.compile(f"^{regex}$"), handler, kind, permission))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        allowed = False
        for route in self.routes:
            found = route.pattern.match(path)
            if not found:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, {k: unquote(v) for k, v in found.groupdict().items()}
            allowed = True
        if allowed:
            raise HttpError(404, "Not Found")
        return None


async def read_request(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]]) -> Request:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)
    return Request(scope["method"], scope["path"], query, headers, b"".join(chunks))


async def send_response(send: Callable[[Any], Awaitable[None]], response: Response) -> None:
    body = response.encoded()
    headers = {k.lower(): v for k, v in response.headers.items()}
    if not isinstance(response.body, bytes):
        headers.setdefault("content-type", "application/json; charset=utf-8")
    headers["content-length"] = str(len(body))
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})
