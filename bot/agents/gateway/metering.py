"""Token usage read out of model API responses as they stream past.

Shapes understood (by their JSON, whichever upstream sent them):

- Anthropic Messages, streamed: ``message_start`` (``message.model``, ``message.usage``) then
  ``message_delta`` (``usage.output_tokens`` and, on newer API versions, cumulative input and
  cache counts); later values replace earlier ones. Not streamed: ``{"type": "message", ...}``.
- OpenAI Responses: ``response.completed`` / ``response.incomplete`` / ``response.failed``
  events (``response.usage``), or a plain ``{"object": "response", ...}`` body.
- OpenAI Chat Completions: ``usage`` of a ``chat.completion`` body or of the last
  ``chat.completion.chunk`` (the gateway asks for it with ``stream_options.include_usage``).
- Gemini ``generateContent`` / ``streamGenerateContent``: ``usageMetadata`` (and
  ``modelVersion``) of each ``GenerateContentResponse``, streamed as SSE (``?alt=sse``), as a
  JSON array (without it) or whole; later counts replace earlier ones, field by field.

Counts are kept disjoint so each is priced once: ``input_tokens`` is uncached input,
``cache_read_tokens`` and ``cache_write_tokens`` the cached parts. OpenAI reports cached tokens
inside its input count, so they are subtracted from it here; so does Gemini
(``cachedContentTokenCount`` is part of ``promptTokenCount``). Gemini's tool-use prompt tokens
count as input, its thinking tokens (``thoughtsTokenCount``) as output, as they are billed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Largest single SSE line or JSON body the meter parses (a ``response.completed`` event carries
the whole response). Larger ones are passed through unmetered and flagged ``overflowed``."""


@dataclass(frozen=True)
class Usage:
    """Tokens one request consumed, in disjoint buckets."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        """Every input token, cached or not (the prompt's size)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class UsageMeter:
    """Feed it a response body chunk by chunk; read ``model`` and ``usage`` at the end."""

    def __init__(self, *, streaming: bool, request_model: str | None = None) -> None:
        self.streaming = streaming
        self.request_model = request_model
        self.response_model: str | None = None
        self.seen_usage = False
        self.overflowed = False
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._counts = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
        self._gemini: dict[str, int] = {}

    @property
    def model(self) -> str | None:
        return self.response_model or self.request_model

    @property
    def usage(self) -> Usage:
        c = self._counts
        return Usage(c["input"], c["output"], c["cache_read"], c["cache_write"])

    # -- input -----------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            if len(self._buffer) + len(chunk) > MAX_EVENT_BYTES:
                self.overflowed = True
                self._buffer.clear()
            elif not self.overflowed:
                self._buffer.extend(chunk)
            return
        self._buffer.extend(chunk)
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_EVENT_BYTES:
                    self.overflowed = True
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._line(line)

    def finish(self) -> None:
        """The body ended: parse what is left."""
        if self.streaming:
            if self._buffer:
                self._line(bytes(self._buffer).rstrip(b"\r"))
                self._buffer.clear()
            self._dispatch()
        elif self._buffer:
            self._parse(bytes(self._buffer))
            self._buffer.clear()

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"data:"):
            self._data.append(line[5:].removeprefix(b" "))

    def _dispatch(self) -> None:
        if self._data:
            payload = b"\n".join(self._data)
            self._data = []
            if payload.strip() != b"[DONE]":
                self._parse(payload)

    def _parse(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        if isinstance(obj, dict):
            self.apply(obj)
        elif isinstance(obj, list):  # Gemini's stream without ?alt=sse: one array of chunks
            for item in obj:
                if isinstance(item, dict):
                    self.apply(item)

    # -- shapes ----------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> None:
        """Take usage (and the model name) from one decoded event or body."""
        kind = obj.get("type")
        if kind == "message_start":
            message = _dict(obj.get("message"))
            self._model(message.get("model"))
            self._anthropic(message.get("usage"))
        elif kind == "message_delta":
            self._anthropic(obj.get("usage"))
        elif kind == "message":
            self._model(obj.get("model"))
            self._anthropic(obj.get("usage"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = _dict(obj.get("response"))
            self._model(response.get("model"))
            self._openai(response.get("usage"), "input_tokens", "output_tokens")
        elif obj.get("object") == "response":
            self._model(obj.get("model"))
            self._openai(obj.get("usage"), "input_tokens", "output_tokens")
        elif obj.get("object") in ("chat.completion", "chat.completion.chunk"):
            self._model(obj.get("model"))
            self._openai(obj.get("usage"), "prompt_tokens", "completion_tokens")
        elif isinstance(obj.get("usageMetadata"), dict):
            self._model(obj.get("modelVersion"))
            self._gemini_usage(obj["usageMetadata"])

    def _model(self, value: Any) -> None:
        if isinstance(value, str) and value and self.response_model is None:
            self.response_model = value

    def _anthropic(self, raw: Any) -> None:
        usage = _dict(raw)
        fields = {
            "input": "input_tokens",
            "output": "output_tokens",
            "cache_read": "cache_read_input_tokens",
            "cache_write": "cache_creation_input_tokens",
        }
        for bucket, name in fields.items():
            value = _int(usage.get(name))
            if value is not None:
                self._counts[bucket] = value
                self.seen_usage = True

    def _openai(self, raw: Any, input_name: str, output_name: str) -> None:
        usage = _dict(raw)
        total_in = _int(usage.get(input_name))
        out = _int(usage.get(output_name))
        if total_in is None and out is None:
            return
        details = _dict(usage.get(f"{input_name}_details"))
        cached = min(_int(details.get("cached_tokens")) or 0, total_in or 0)
        self._counts.update(
            input=(total_in or 0) - cached, output=out or 0, cache_read=cached, cache_write=0
        )
        self.seen_usage = True

    _GEMINI_FIELDS = (
        "promptTokenCount",
        "cachedContentTokenCount",
        "toolUsePromptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
    )

    def _gemini_usage(self, usage: dict[str, Any]) -> None:
        seen = False
        for name in self._GEMINI_FIELDS:
            value = _int(usage.get(name))
            if value is not None:
                self._gemini[name] = value
                seen = True
        if not seen:
            return
        g = self._gemini
        prompt = g.get("promptTokenCount", 0) + g.get("toolUsePromptTokenCount", 0)
        cached = min(g.get("cachedContentTokenCount", 0), prompt)
        output = g.get("candidatesTokenCount", 0) + g.get("thoughtsTokenCount", 0)
        self._counts.update(input=prompt - cached, output=output, cache_read=cached, cache_write=0)
        self.seen_usage = True


@dataclass(frozen=True)
class UsageRecord:
    """One forwarded request, metered. The pipeline turns it into a ``cost`` event."""

    run_id: str
    upstream: str
    endpoint: str
    status: int
    model: str | None
    usage: Usage
    cost_usd: float
    spent_usd: float
    budget_usd: float | None
    streamed: bool
    metered: bool
    known_model: bool
    duration_s: float
    priced_by: str = "genai-prices"
    """Where the price came from: ``override``, ``genai-prices`` or ``unknown`` (charged at the
    conservative price for a model nobody priced)."""

    def event_data(self) -> dict[str, Any]:
        """JSON-safe fields for a ``cost`` event (no headers, no keys)."""
        return {
            "source": "gateway",
            "upstream": self.upstream,
            "endpoint": self.endpoint,
            "status": self.status,
            "model": self.model,
            "tokens_in": self.usage.total_input_tokens,
            "tokens_out": self.usage.output_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "usd": round(self.cost_usd, 6),
            "spent_usd": round(self.spent_usd, 6),
            "budget_usd": self.budget_usd,
            "streamed": self.streamed,
            "metered": self.metered,
            "known_model": self.known_model,
            "priced_by": self.priced_by,
            "duration_s": round(self.duration_s, 3),
        }
