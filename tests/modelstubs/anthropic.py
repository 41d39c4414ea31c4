"""The Anthropic Messages API (``POST /v1/messages``, streaming or not), answering from a
``ModelScript``. Also ``/v1/messages/count_tokens`` and ``/v1/models``; anything else is a 404
recorded in ``script.requests``."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

from .asgi import read_json, send_json, send_sse
from .script import ErrorTurn, ModelScript, TextTurn, Turn
from .server import Receive, Scope, Send

_ids = itertools.count(1)


def _content(turn: Turn) -> list[dict[str, Any]]:
    if isinstance(turn, TextTurn):
        return [{"type": "text", "text": turn.text}]
    blocks: list[dict[str, Any]] = []
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    blocks.append(
        {
            "type": "tool_use",
            "id": f"toolu_stub{next(_ids):04d}",
            "name": turn.name,
            "input": turn.arguments,
        }
    )
    return blocks


def _usage(turn: Turn, *, output: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": turn.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": turn.output_tokens if output is None else output,
    }


def message(turn: Turn, model: str) -> dict[str, Any]:
    """The whole (non-streamed) message for ``turn``."""
    return {
        "id": f"msg_stub{next(_ids):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content(turn),
        "stop_reason": "end_turn" if isinstance(turn, TextTurn) else "tool_use",
        "stop_sequence": None,
        "usage": _usage(turn),
    }


def stream_events(turn: Turn, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The SSE events of one streamed message, as the real API sends them."""
    whole = message(turn, model)
    start = dict(whole, content=[], stop_reason=None, usage=_usage(turn, output=1))
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(whole["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            text = block["text"]
            deltas = [
                {"type": "text_delta", "text": text[i : i + 16]} for i in range(0, len(text), 16)
            ]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [
                {"type": "input_json_delta", "partial_json": raw[i : i + 24]}
                for i in range(0, len(raw), 24)
            ]
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": opening,
            },
        )
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": turn.output_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}


class AnthropicStub:
    """ASGI app. ``AnthropicStub(ModelScript([ToolTurn("Write", {...}), TextTurn("done")]))``."""

    def __init__(self, script: ModelScript) -> None:
        self.script = script

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = await read_json(receive) if scope["method"] == "POST" else {}
        if path == "/v1/messages" and scope["method"] == "POST":
            model = str(body.get("model", "claude-stub"))
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            turn = self.script.answer(path, body, headers)
            if isinstance(turn, ErrorTurn):
                error = {"type": "invalid_request_error", "message": turn.message}
                await send_json(send, turn.status, {"type": "error", "error": error})
            elif body.get("stream"):
                await send_sse(send, stream_events(turn, model))
            else:
                await send_json(send, 200, message(turn, model))
        elif path == "/v1/messages/count_tokens":
            self.script.requests.append({"path": path, "body": body})
            await send_json(send, 200, {"input_tokens": 100})
        elif path.startswith("/v1/models"):
            self.script.requests.append({"path": path, "body": body})
            await send_json(
                send, 200, {"data": [], "has_more": False, "first_id": None, "last_id": None}
            )
        else:
            self.script.requests.append({"path": path, "body": body, "unknown": True})
            error = {"type": "not_found_error", "message": f"stub: no route {path}"}
            await send_json(send, 404, {"type": "error", "error": error})
