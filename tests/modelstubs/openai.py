"""The OpenAI Responses API (``POST /v1/responses`` or ``/responses``, streaming or not),
answering from a ``ModelScript``; tool turns become ``function_call`` items (or
``custom_tool_call`` for freeform tools). ``GET .../models`` lists nothing; anything else is a
404 recorded in ``script.requests``."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from .asgi import read_json, send_json, send_sse
from .script import ErrorTurn, ModelScript, TextTurn, Turn
from .server import Receive, Scope, Send

_ids = itertools.count(1)


def _items(turn: Turn) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    text = turn.text
    if text:
        items.append(
            {
                "id": f"msg_stub{next(_ids):04d}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    if not isinstance(turn, TextTurn):
        call_id = f"call_stub{next(_ids):04d}"
        if turn.kind == "custom":
            items.append(
                {
                    "id": f"ctc_stub{next(_ids):04d}",
                    "type": "custom_tool_call",
                    "status": "completed",
                    "call_id": call_id,
                    "name": turn.name,
                    "input": str(turn.arguments.get("input", "")),
                }
            )
        else:
            items.append(
                {
                    "id": f"fc_stub{next(_ids):04d}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call_id,
                    "name": turn.name,
                    "arguments": json.dumps(turn.arguments),
                }
            )
    return items


def _usage(turn: Turn) -> dict[str, Any]:
    return {
        "input_tokens": turn.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": turn.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": turn.input_tokens + turn.output_tokens,
    }


def response(turn: Turn, model: str, *, status: str = "completed") -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": f"resp_stub{next(_ids):04d}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": _items(turn) if done else [],
        "usage": _usage(turn) if done else None,
        "error": None,
        "incomplete_details": None,
    }


def stream_events(turn: Turn, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The SSE events of one streamed response (``sequence_number`` included)."""
    seq = itertools.count()
    final = response(turn, model)
    opening = dict(final, status="in_progress", output=[], usage=None)

    def event(name: str, **data: Any) -> tuple[str, dict[str, Any]]:
        return name, {"type": name, "sequence_number": next(seq), **data}

    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    for index, item in enumerate(final["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            empty = dict(item, status="in_progress", content=[])
            yield event("response.output_item.added", output_index=index, item=empty)
            part = {"type": "output_text", "text": "", "annotations": []}
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.content_part.added", **common, part=part)
            for i in range(0, len(text), 16):
                yield event("response.output_text.delta", **common, delta=text[i : i + 16])
            yield event("response.output_text.done", **common, text=text)
            yield event("response.content_part.done", **common, part=item["content"][0])
        elif item["type"] == "function_call":
            empty = dict(item, status="in_progress", arguments="")
            yield event("response.output_item.added", output_index=index, item=empty)
            args = item["arguments"]
            for i in range(0, len(args), 24):
                yield event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=args[i : i + 24],
                )
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=args,
            )
        else:
            empty = dict(item, status="in_progress", input="")
            yield event("response.output_item.added", output_index=index, item=empty)
            yield event(
                "response.custom_tool_call_input.delta",
                item_id=item["id"],
                output_index=index,
                delta=item["input"],
            )
            yield event(
                "response.custom_tool_call_input.done",
                item_id=item["id"],
                output_index=index,
                input=item["input"],
            )
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=final)


class OpenAIResponsesStub:
    """ASGI app: ``OpenAIResponsesStub(ModelScript([ToolTurn("shell", {...}), TextTurn("")]))``."""

    def __init__(self, script: ModelScript) -> None:
        self.script = script

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = await read_json(receive) if scope["method"] == "POST" else {}
        if path in ("/v1/responses", "/responses") and scope["method"] == "POST":
            model = str(body.get("model", "gpt-stub"))
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            turn = self.script.answer(path, body, headers)
            if isinstance(turn, ErrorTurn):
                error = {"message": turn.message, "type": "invalid_request_error", "code": None}
                await send_json(send, turn.status, {"error": error})
            elif body.get("stream"):
                await send_sse(send, stream_events(turn, model))
            else:
                await send_json(send, 200, response(turn, model))
        elif path.endswith("/models"):
            self.script.requests.append({"path": path, "body": body})
            await send_json(send, 200, {"object": "list", "data": [], "models": []})
        else:
            self.script.requests.append({"path": path, "body": body, "unknown": True})
            error = {"message": f"stub: no route {path}", "type": "invalid_request_error"}
            await send_json(send, 404, {"error": error})
