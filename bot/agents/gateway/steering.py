"""Steering through the gateway: the maintainer's queued messages (``/bosun steer``) put into the
agent's next model request as a user turn, in that API's own format, so the model reads them
where a person typing into the agent's session would have put them — and kept there in every
later request of that conversation.

Only the agent's conversations are steered: requests that offer the model ``tools``.
Side requests (titles, summaries, token counts) carry no tools and are left alone, and so is a
request that could not take a user turn as it stands (an assistant turn last whose tool calls
await their results); the messages then wait for the next request.

* Anthropic Messages: a user turn last (the usual case: the results of the tools the model
  asked for) gets a text block after its blocks — ``tool_result`` blocks must stay first in that
  turn, and a second user turn in a row would be refused; otherwise a new user turn.
* OpenAI Responses: an ``input`` item ``{"type": "message", "role": "user", ...}``.
* OpenAI Chat Completions: a ``{"role": "user"}`` message.
* Gemini ``generateContent`` / ``streamGenerateContent``: like Anthropic, in ``contents``: a
  ``{"text": ...}`` part after the parts of a ``user`` turn last (its ``functionResponse``
  parts stay first), otherwise a new ``user`` turn.

**Re-insertion.** The agent's CLI never learns of the text the gateway added, so its next
request would arrive without it. Each delivery is therefore remembered as a ``Placed``: the
turns it followed (how many, and a chained SHA-256 of them with ``cache_control`` markers
ignored, since CLIs move those between requests) and its text. A later request whose first
``depth`` turns hash the same is the same conversation grown: the text goes back at the same
place. Another conversation (a sub-agent, another task) starts differently and never matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STEERABLE: dict[str, str] = {
    "POST /v1/messages": "anthropic",
    "POST /v1/responses": "responses",
    "POST /v1/chat/completions": "chat",
    **{
        f"POST /{version}/models/{{model}}:{verb}": "gemini"
        for version in ("v1beta", "v1")
        for verb in ("generateContent", "streamGenerateContent")
    },
}
"""Endpoints whose requests can carry a steer, and the format each speaks."""
MAX_REMEMBERED_STEERS = 32
"""Deliveries a run's gateway keeps putting back (the oldest is forgotten past it); each holds
at most ``MAX_PENDING`` messages."""


@dataclass(frozen=True)
class Placed:
    """Where a delivered steer went: after the first ``depth`` turns of a conversation whose
    chained hash is ``digest``; ``joined`` when it was a block appended to turn ``depth - 1``
    (an Anthropic user turn) rather than a turn of its own."""

    form: str
    depth: int
    digest: bytes
    text: str
    joined: bool


@dataclass(frozen=True)
class Steered:
    """A request's new body, and where the newly queued text went (None: it was not taken)."""

    body: bytes
    placed: Placed | None


def _turns(form: str, payload: dict[str, Any]) -> list[Any] | None:
    """The conversation's turns as the agent sent them (a string ``input`` is one user item)."""
    if form == "responses":
        given = payload.get("input")
        if isinstance(given, str):
            return [_user_item(given)]
        if given is None:
            return []
        return given if isinstance(given, list) else None
    messages = payload.get("contents" if form == "gemini" else "messages")
    return messages if isinstance(messages, list) else None


def _user_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _chain(turns: Sequence[Any], upto: int) -> list[bytes]:
    """``out[i]``: the hash of turns ``0..i``, each canonical (``cache_control`` dropped)."""
    out: list[bytes] = []
    digest = b""
    for turn in turns[:upto]:
        text = json.dumps(_canonical(turn), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(digest + text.encode()).digest()
        out.append(digest)
    return out


def _takes_text(form: str, turns: Sequence[Any]) -> tuple[bool, bool]:
    """Whether a user turn may follow ``turns`` now, and whether it joins the last turn."""
    last = turns[-1] if turns else None
    if not isinstance(last, dict):
        return True, False
    if form == "anthropic":
        if last.get("role") == "user":
            return isinstance(last.get("content"), (str, list)), True
        content = last.get("content")
        pending = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") in ("tool_use", "server_tool_use")
            for b in content
        )
        return not pending, False
    if form == "chat":
        return not (last.get("role") == "assistant" and last.get("tool_calls")), False
    if form == "gemini":
        parts = last.get("parts")
        if last.get("role") == "user":
            return isinstance(parts, list), True
        pending = isinstance(parts, list) and any(
            isinstance(p, dict) and "functionCall" in p for p in parts
        )
        return not pending, False
    return True, False


def _text_turn(form: str, texts: Sequence[str]) -> list[dict[str, Any]]:
    if form == "anthropic":
        return [{"role": "user", "content": [{"type": "text", "text": t} for t in texts]}]
    if form == "responses":
        return [_user_item(t) for t in texts]
    if form == "gemini":
        return [{"role": "user", "parts": [{"text": t} for t in texts]}]
    return [{"role": "user", "content": t} for t in texts]


def _join(form: str, turn: dict[str, Any], texts: Sequence[str], *, first: bool = False) -> None:
    """Add text blocks (Gemini: parts) to a user turn, after its own (or before: ``first``)."""
    if form == "gemini":
        parts = turn.get("parts")
        own = list(parts) if isinstance(parts, list) else []
        added: list[Any] = [{"text": t} for t in texts]
        turn["parts"] = added + own if first else own + added
        return
    content = turn.get("content")
    blocks = [{"type": "text", "text": t} for t in texts]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content = list(content) if isinstance(content, list) else []
    turn["content"] = blocks + content if first else content + blocks


def _put(form: str, turns: list[Any], places: Sequence[Placed]) -> None:
    """Insert the texts of ``places`` into ``turns`` (changed in place), in delivery order at
    each depth, deepest first so the shallower depths still point where they did."""
    depths = sorted({p.depth for p in places}, reverse=True)
    for depth in depths:
        here = [p for p in places if p.depth == depth]
        joined = [p.text for p in here if p.joined]
        alone = [p.text for p in here if not p.joined]
        if alone:
            after = turns[depth] if depth < len(turns) else None
            if (
                form in ("anthropic", "gemini")
                and isinstance(after, dict)
                and after.get("role") == "user"
            ):
                _join(form, after, alone, first=True)  # two user turns in a row: refused
            else:
                turns[depth:depth] = _text_turn(form, alone)
        if joined and depth >= 1 and isinstance(turns[depth - 1], dict):
            _join(form, turns[depth - 1], joined)


def steer_payload(
    endpoint: str, payload: Any, text: str | None, remembered: Sequence[Placed] = ()
) -> tuple[bool, Placed | None]:
    """Put the steers ``remembered`` back where they were, and ``text`` (newly queued) after
    the last turn, into ``payload`` (a parsed request body, changed in place). Returns whether
    it changed, and where ``text`` went (None: not taken, it waits for the next request)."""
    form = STEERABLE.get(endpoint)
    if form is None or not isinstance(payload, dict) or not payload.get("tools"):
        return False, None
    turns = _turns(form, payload)
    if turns is None:
        return False, None
    mine = [p for p in remembered if p.form == form and 1 <= p.depth <= len(turns)]
    want = max((p.depth for p in mine), default=0)
    takes, joined = _takes_text(form, turns) if text is not None else (False, False)
    chain = _chain(turns, len(turns) if takes else want)
    places = [p for p in mine if chain[p.depth - 1] == p.digest]
    placed = None
    if takes and text is not None:
        digest = chain[-1] if chain else b""
        placed = Placed(form, len(turns), digest, text, joined)
        places.append(placed)
    if not places:
        return False, None
    if form == "responses" and not isinstance(payload.get("input"), list):
        payload["input"] = turns
    _put(form, turns, places)
    return True, placed


def inject(endpoint: str, payload: Any, text: str) -> bool:
    """Add ``text`` to ``payload`` (a parsed request body, changed in place) as a user turn;
    whether it did (False: not a steerable request, see the module docstring)."""
    return steer_payload(endpoint, payload, text)[0]


def steer_body(
    endpoint: str, body: bytes, text: str | None, remembered: Sequence[Placed] = ()
) -> Steered | None:
    """``body`` with the ``remembered`` steers back in place and ``text`` added as a user turn,
    or None when it stays as it is."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    changed, placed = steer_payload(endpoint, payload, text, remembered)
    if not changed:
        return None
    return Steered(json.dumps(payload).encode(), placed)


__all__ = [
    "MAX_REMEMBERED_STEERS",
    "STEERABLE",
    "Placed",
    "Steered",
    "inject",
    "steer_body",
    "steer_payload",
]
