"""Google's Gemini API (the Generative Language API, ``v1beta``), answering from a
``ModelScript``: ``POST /v1beta/models/{model}:generateContent`` (one JSON body),
``:streamGenerateContent`` (``?alt=sse``: server-sent events, one ``GenerateContentResponse``
per event; without it, a JSON array), ``:countTokens``, and ``GET /v1beta/models[/{model}]``.
Tool turns become ``functionCall`` parts (with a ``thoughtSignature``, as Gemini 2.5 and 3
send them). Anything else is a 404 recorded in ``script.requests``.

Like the real API, it wants a key (``x-goog-api-key`` or ``?key=``): none is a 403, and when
the stub is built with ``key=...`` any other value is a 400 ``API_KEY_INVALID`` — so a test
proves the key that reached the API was the real one (the sandbox holds only a placeholder).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

from .asgi import read_json, send_json
from .script import ErrorTurn, ModelScript, TextTurn, Turn
from .server import Receive, Scope, Send

_ids = itertools.count(1)
_METHOD = re.compile(r"^/(v1beta|v1)/models/([A-Za-z0-9._-]+):([A-Za-z]+)$")
SIGNATURE = "c3R1Yi10aG91Z2h0LXNpZ25hdHVyZQ=="
"""The ``thoughtSignature`` on the stub's function calls (real ones are opaque base64)."""

_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}


def error_body(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """Google's error shape (``google.rpc.Status``)."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS.get(status, "INTERNAL"),
    }
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
    return {"error": error}


def _parts(turn: Turn, thought: str = "") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": thought, "thought": True}] if thought else []
    if turn.text:
        parts.append({"text": turn.text})
    if not isinstance(turn, TextTurn):
        call = {"functionCall": {"name": turn.name, "args": turn.arguments}}
        parts.append({**call, "thoughtSignature": SIGNATURE})
    return parts


class GeminiStub:
    """ASGI app: ``GeminiStub(ModelScript([ToolTurn("write_file", {...}), TextTurn("done")]),
    key="AIza-real")``. ``cached_tokens`` and ``thoughts_tokens`` go into every scripted
    answer's ``usageMetadata`` (cached ones are part of ``promptTokenCount``, as upstream);
    ``thought`` opens every scripted answer with a thought-summary part (``"thought": true``),
    as Gemini 2.5 sends when asked to ``includeThoughts``."""

    def __init__(
        self,
        script: ModelScript,
        *,
        key: str | None = None,
        cached_tokens: int = 0,
        thoughts_tokens: int = 0,
        model_version: bool = True,
        thought: str = "",
    ) -> None:
        self.script = script
        self.key = key
        self.model_version = model_version
        self.thought = thought
        """Whether answers name their ``modelVersion`` (the real API's always do)."""
        self.cached_tokens = cached_tokens
        self.thoughts_tokens = thoughts_tokens
        self.seen: list[dict[str, str]] = []
        """Every request: ``method``, ``path``, ``query`` and the ``key`` it carried."""

    # -- answers ---------------------------------------------------------------------------
    def usage(self, turn: Turn, *, final: bool = True) -> dict[str, Any]:
        prompt = turn.input_tokens + self.cached_tokens
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "totalTokenCount": prompt,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cached_tokens}]
        if final:
            usage["candidatesTokenCount"] = turn.output_tokens
            usage["totalTokenCount"] = prompt + turn.output_tokens + self.thoughts_tokens
            if self.thoughts_tokens:
                usage["thoughtsTokenCount"] = self.thoughts_tokens
        return usage

    def response(self, turn: Turn, model: str) -> dict[str, Any]:
        """The whole ``GenerateContentResponse`` for ``turn``."""
        answer = {
            "candidates": [
                {
                    "content": {"parts": _parts(turn, self.thought), "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": self.usage(turn),
            "modelVersion": model,
            "responseId": f"stub-response-{next(_ids):04d}",
        }
        if not self.model_version:
            del answer["modelVersion"]
        return answer

    def chunks(self, turn: Turn, model: str) -> Iterator[dict[str, Any]]:
        """The streamed answer: text in pieces (usage so far on each), then the function call
        whole, the last chunk with ``finishReason`` and the full ``usageMetadata``."""
        whole = self.response(turn, model)
        parts = whole["candidates"][0]["content"]["parts"]
        pieces: list[dict[str, Any]] = []
        for part in parts:
            if "text" in part and not part.get("thought"):
                text = part["text"]
                pieces += [{"text": text[i : i + 16]} for i in range(0, len(text), 16)]
            else:
                pieces.append(part)
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            candidate: dict[str, Any] = {"content": {"parts": [piece], "role": "model"}, "index": 0}
            if last:
                candidate["finishReason"] = "STOP"
            chunk = {
                "candidates": [candidate],
                "usageMetadata": self.usage(turn, final=last),
                "modelVersion": model,
                "responseId": whole["responseId"],
            }
            if not self.model_version:
                del chunk["modelVersion"]
            yield chunk

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode())
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = await read_json(receive) if method == "POST" else {}
        given = headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
        raw_query = scope.get("query_string", b"").decode()
        self.seen.append({"method": method, "path": path, "query": raw_query, "key": given})
        if not given:
            self.script.requests.append({"path": path, "body": body, "headers": headers})
            message = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."
            )
            await send_json(send, 403, error_body(403, message))
            return
        if self.key is not None and given != self.key:
            self.script.requests.append({"path": path, "body": body, "headers": headers})
            message = "API key not valid. Please pass a valid API key."
            await send_json(send, 400, error_body(400, message, "API_KEY_INVALID"))
            return
        found = _METHOD.match(path)
        if found and method == "POST" and found[3] in ("generateContent", "streamGenerateContent"):
            await self._generate(send, path, body, headers, found[2], query, found[3])
        elif found and method == "POST" and found[3] == "countTokens":
            self.script.requests.append({"path": path, "body": body, "headers": headers})
            await send_json(send, 200, {"totalTokens": 100, "promptTokensDetails": []})
        elif method == "GET" and re.fullmatch(r"/(v1beta|v1)/models(/[A-Za-z0-9._-]+)?", path):
            self.script.requests.append({"path": path, "body": body, "headers": headers})
            await send_json(send, 200, {"models": []} if path.endswith("/models") else {})
        else:
            self.script.requests.append({"path": path, "body": body, "unknown": True})
            await send_json(send, 404, error_body(404, f"stub: no route {method} {path}"))

    async def _generate(
        self,
        send: Send,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        model: str,
        query: dict[str, list[str]],
        verb: str,
    ) -> None:
        turn = self.script.answer(path, body, headers)
        if isinstance(turn, ErrorTurn):
            await send_json(send, turn.status, error_body(turn.status, turn.message))
        elif verb == "generateContent":
            await send_json(send, 200, self.response(turn, model))
        elif query.get("alt") == ["sse"]:
            await _send_events(send, self.chunks(turn, model))
        else:  # streamed without alt=sse: one JSON array, element by element
            await send_json(send, 200, list(self.chunks(turn, model)))


async def _send_events(send: Send, chunks: Iterator[dict[str, Any]]) -> None:
    """Server-sent events as the Generative Language API writes them: ``data:`` lines only,
    each event ended by a blank line, with CRLF line ends."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    for chunk in chunks:
        data = f"data: {json.dumps(chunk)}\r\n\r\n".encode()
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
