"""Steering through the gateway: the maintainer's queued messages (``/bosun steer``) put into the
agent's next model request as a user turn, in that API's own format, so the model reads them
where a person typing into the agent's session would have put them.

Only the agent's main conversation is steered: a request that offers the model ``tools``.
Side requests (titles, summaries, token counts) carry no tools and are left alone, and so is a
request that could not take a user turn as it stands (an assistant turn last whose tool calls
await their results); the messages then wait for the next request.

* Anthropic Messages: a user turn last (the usual case: the results of the tools the model
  asked for) gets a text block after its blocks — ``tool_result`` blocks must stay first in that
  turn, and a second user turn in a row would be refused; otherwise a new user turn.
* OpenAI Responses: an ``input`` item ``{"type": "message", "role": "user", ...}``.
* OpenAI Chat Completions: a ``{"role": "user"}`` message.
"""

from __future__ import annotations

import json
from typing import Any

STEERABLE: dict[str, str] = {
    "POST /v1/messages": "anthropic",
    "POST /v1/responses": "responses",
    "POST /v1/chat/completions": "chat",
}
"""Endpoints whose requests can carry a steer, and the format each speaks."""


def _anthropic(payload: dict[str, Any], text: str) -> bool:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return False
    block = {"type": "text", "text": text}
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "user":
        content = last.get("content")
        if isinstance(content, str):
            last["content"] = [{"type": "text", "text": content}, block]
            return True
        if isinstance(content, list):
            content.append(block)
            return True
        return False
    if isinstance(last, dict) and last.get("role") == "assistant":
        content = last.get("content")
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") in ("tool_use", "server_tool_use")
            for b in content
        ):
            return False  # its tool calls need their results first
    messages.append({"role": "user", "content": [block]})
    return True


def _responses(payload: dict[str, Any], text: str) -> bool:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    given = payload.get("input")
    if isinstance(given, str):
        first = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": given}],
        }
        payload["input"] = [first, item]
        return True
    if isinstance(given, list):
        given.append(item)
        return True
    if given is None:
        payload["input"] = [item]
        return True
    return False


def _chat(payload: dict[str, Any], text: str) -> bool:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return False
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant" and last.get("tool_calls"):
        return False  # its tool calls need their results first
    messages.append({"role": "user", "content": text})
    return True


_INJECT = {"anthropic": _anthropic, "responses": _responses, "chat": _chat}


def inject(endpoint: str, payload: Any, text: str) -> bool:
    """Add ``text`` to ``payload`` (a parsed request body, changed in place) as a user turn;
    whether it did (False: not a steerable request, see the module docstring)."""
    form = STEERABLE.get(endpoint)
    if form is None or not isinstance(payload, dict) or not payload.get("tools"):
        return False
    return _INJECT[form](payload, text)


def steer_body(endpoint: str, body: bytes, text: str) -> bytes | None:
    """``body`` with ``text`` added as a user turn, or None when this request does not take it."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not inject(endpoint, payload, text):
        return None
    return json.dumps(payload).encode()


__all__ = ["STEERABLE", "inject", "steer_body"]
