"""Helpers shared by the adapters that read JSON-lines output: lenient decoding, clipping, and
reading session ids and final results back out of the events."""

from __future__ import annotations

import json
from typing import Any

from bot.agents.runners.base import RunnerEvent

CLIP = 2000
"""Longest text kept in one event field; the full output is in the transcript artifact."""


def decode(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or ``None`` when it is not one."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def clip(value: Any, limit: int = CLIP) -> str:
    """A string of at most ``limit`` characters (non-strings as compact JSON)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def log(stream: str, line: str, **extra: Any) -> RunnerEvent:
    return RunnerEvent("log", {"stream": stream, "line": clip(line), **extra})


def session_id(events: list[RunnerEvent]) -> str | None:
    """The last ``session_id`` any event carried."""
    found: str | None = None
    for event in events:
        value = event.data.get("session_id")
        if isinstance(value, str) and value:
            found = value
    return found


def final(events: list[RunnerEvent]) -> RunnerEvent | None:
    """The last ``cost`` event marked ``final`` (the runner's own end-of-run report)."""
    for event in reversed(events):
        if event.kind == "cost" and event.data.get("final"):
            return event
    return None


def last_message(events: list[RunnerEvent]) -> str:
    for event in reversed(events):
        if event.kind == "message":
            return str(event.data.get("text", ""))
    return ""
