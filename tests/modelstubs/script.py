"""Turns a model stub answers with, and the record of the requests it received."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextTurn:
    """A final answer: plain assistant text, ``end_turn``."""

    text: str
    input_tokens: int = 120
    output_tokens: int = 30


@dataclass(frozen=True)
class ToolTurn:
    """The model asks for one tool call, then waits for its result.

    ``kind`` is ``function`` (JSON ``arguments``) or, for the Responses API only, ``custom``
    (a freeform tool such as Codex's ``apply_patch``, whose input is ``arguments["input"]``)."""

    name: str
    arguments: dict[str, Any]
    text: str = ""
    kind: str = "function"
    input_tokens: int = 200
    output_tokens: int = 40


@dataclass(frozen=True)
class ErrorTurn:
    """The API refuses the request with HTTP ``status`` and an error body."""

    status: int
    message: str
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


Turn = TextTurn | ToolTurn | ErrorTurn


@dataclass(frozen=True)
class Depends:
    """A turn chosen from the request it answers: ``choose(body)`` (e.g. following a steer the
    gateway put into the conversation)."""

    choose: Callable[[dict[str, Any]], Turn]


@dataclass
class ModelScript:
    """Answers in order. Requests that offer no tools (titles, summaries, token counts) get
    ``side_text`` and do not use a turn; once the turns run out, ``TextTurn(done_text)``."""

    turns: list[Turn | Depends]
    side_text: str = "ok"
    done_text: str = "Done."
    requests: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Turn:
        with self._lock:
            self.requests.append({"path": path, "body": body, "headers": headers or {}})
            if not body.get("tools"):
                return TextTurn(self.side_text, input_tokens=20, output_tokens=2)
            if self._next >= len(self.turns):
                return TextTurn(self.done_text)
            turn = self.turns[self._next]
            self._next += 1
            return turn.choose(body) if isinstance(turn, Depends) else turn

    @property
    def used(self) -> int:
        """How many scripted turns have been answered."""
        return self._next

    @classmethod
    def from_json(cls, text: str) -> ModelScript:
        """``[{"text": ...} | {"tool": name, "arguments": {...}, "kind"?, "text"?}
        | {"error": status, "message": ...}]``"""
        turns: list[Turn | Depends] = []
        for item in json.loads(text):
            if "error" in item:
                turns.append(ErrorTurn(int(item["error"]), str(item.get("message", "error"))))
            elif "tool" in item:
                turns.append(
                    ToolTurn(
                        item["tool"],
                        item.get("arguments", {}),
                        text=item.get("text", ""),
                        kind=item.get("kind", "function"),
                    )
                )
            else:
                turns.append(TextTurn(item["text"]))
        return cls(turns)
