"""HTTP details of the gateway: which headers cross it, request bodies it must adjust, and the
JSON errors it answers with (shaped so both the Anthropic and the OpenAI SDKs show the message)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "openai-organization",
        "openai-project",
    }
)
"""Request headers the container may send but never pass the gateway."""

UNMETERED_HEADERS = frozenset(
    {"x-goog-fieldmask", "x-http-method-override", "x-http-method", "x-method-override"}
)
"""Request headers that would change what upstream does or answers out of the meter's sight (a
field mask leaving out ``usageMetadata``, another method than the allow-listed one)."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)

RESPONSE_DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "set-cookie",
        "alt-svc",
        "trailer",
        "upgrade",
    }
)
"""Response headers not relayed: the body is re-framed (chunked) and already decoded."""


def request_headers(
    raw: Iterable[tuple[bytes, bytes]], auth: tuple[str, str] | None, api: str = ""
) -> list[tuple[str, str]]:
    """The container's headers minus credentials and hop-by-hop ones, plus the real key. To
    Gemini, bodies go as JSON and answers are asked for as JSON or SSE, whatever the agent set
    (Google APIs also speak protobuf, which the meter cannot read)."""
    dropped = CREDENTIAL_HEADERS | HOP_BY_HOP | UNMETERED_HEADERS | {"accept-encoding"}
    if api == "gemini":
        dropped |= {"accept", "content-type"}
    headers = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in raw
        if name.decode("latin-1").lower() not in dropped
    ]
    if api == "gemini":
        headers += [("content-type", "application/json"), ("accept", "*/*")]
    headers.append(("accept-encoding", "identity"))
    if auth is not None:
        headers.append(auth)
    return headers


def response_headers(raw: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in raw if name.lower() not in RESPONSE_DROPPED]


def auth_header(style: str, key: str) -> tuple[str, str] | None:
    if style == "x-api-key":
        return ("x-api-key", key)
    if style == "bearer":
        return ("authorization", f"Bearer {key}")
    if style == "x-goog-api-key":
        return ("x-goog-api-key", key)
    return None


CREDENTIAL_PARAMS = frozenset({"key", "access_token"})
"""Query parameters that carry a credential to Google APIs (``?key=AIza…``): never forwarded,
so the key the gateway injects is the only one upstream sees."""


def forwarded_query(query: str, api: str) -> str:
    """The query string sent upstream. Gemini's is rebuilt: only ``alt=sse`` (streamed answers
    as server-sent events) passes, since Google's other system parameters could carry a key
    (``key``, ``access_token``) or hide the usage from the meter (``fields`` drops
    ``usageMetadata``, ``alt=proto`` answers in protobuf, ``callback`` wraps the JSON). Other
    APIs' queries pass as sent, without credential parameters (by decoded name, any case)."""
    pairs = [
        (unquote_plus(name).strip().lower(), unquote_plus(value))
        for name, _, value in (piece.partition("=") for piece in query.split("&") if piece)
    ]
    if api == "gemini":
        return "alt=sse" if ("alt", "sse") in pairs else ""
    kept = [
        piece
        for piece, (name, _) in zip((p for p in query.split("&") if p), pairs, strict=True)
        if name not in CREDENTIAL_PARAMS
    ]
    return "&".join(kept)


def error_body(kind: str, message: str) -> bytes:
    """``{"type": "error", "error": {"type", "code", "message"}}``: Anthropic's error shape, with
    OpenAI's ``code`` alongside, so either SDK surfaces the message to the agent."""
    return json.dumps(
        {"type": "error", "error": {"type": kind, "code": kind, "message": message}}
    ).encode()


REASONS = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}


def raw_error(status: int, kind: str, body: bytes) -> bytes:
    """A whole error response that closes the connection, for when no request was parsed."""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"x-bosun-gateway: {kind}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def declared_length(raw: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The body size a request declares: its ``Content-Length``, 0 without one, ``None`` for a
    chunked body (h11 has checked the framing headers are well formed and consistent)."""
    length = 0
    for name, value in raw:
        if name.lower() == b"transfer-encoding":
            return None
        if name.lower() == b"content-length":
            length = int(value)
    return length


class BodyRefused(ValueError):
    """The request body asks for something the gateway cannot meter."""


class BodyTooComplex(BodyRefused):
    """The request body holds more JSON values than the gateway will parse."""


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_values(body: bytes) -> int:
    """An upper bound on the values parsing ``body`` as JSON makes (their separators outside
    strings). Each costs up to ~100 bytes once parsed, however few bytes it takes in the body:
    ``[[],[],…]`` grows some 30 times its size."""
    bare = _STRING.sub(b"", body)
    return sum(bare.count(mark) for mark in (b",", b":", b"[", b"{"))


def adjust_body(endpoint: str, body: bytes, max_values: int) -> tuple[bytes, str | None]:
    """The body to forward and the model it names.

    Streamed Chat Completions get ``stream_options.include_usage = true`` (otherwise the stream
    carries no usage and the request could not be metered); background Responses are refused
    (their usage arrives later, on a request the gateway does not allow). A body with more than
    ``max_values`` JSON values is refused unparsed."""
    if json_values(body) > max_values:
        raise BodyTooComplex(
            f"the request body holds more than {max_values} JSON values, more than the gateway "
            "parses"
        )
    try:
        payload: Any = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON (or nested too deep): the API will say
        return body, None
    if not isinstance(payload, dict):
        return body, None
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    if endpoint == "POST /v1/chat/completions" and payload.get("stream") is True:
        options = payload.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if options.get("include_usage") is not True:
            options["include_usage"] = True
            payload["stream_options"] = options
            return json.dumps(payload).encode(), model
    if endpoint == "POST /v1/responses" and payload.get("background") is True:
        raise BodyRefused(
            "background responses cannot be metered by the gateway; run in the foreground"
        )
    return body, model
