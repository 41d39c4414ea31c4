"""A stub model API for the gateway tests (no tests of its own here).

A raw ASGI app served by uvicorn on a loopback port in its own thread. It speaks just enough of
Anthropic Messages (streamed and not), OpenAI Responses and Chat Completions (streamed and not)
to be metered, with fixed usage numbers, and records every request it receives (headers
included) so tests can see what crossed the gateway. A request header ``x-stub-pause: <secs>``
makes a stream stop halfway for that long, so tests can show chunks arrive before it ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"
ANTHROPIC_USAGE = {"input": 1234, "cache_write": 200, "cache_read": 3000, "output": 567}
OPENAI_MODEL = "gpt-5-2025-08-07"
RESPONSES_USAGE = {"input": 1500, "cached": 500, "output": 300}
CHAT_USAGE = {"input": 800, "cached": 0, "output": 120}


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StubUpstream:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(
            scope["method"], scope["path"], scope["query_string"].decode(), headers, bytes(body)
        )
        with self.lock:
            self.seen.append(seen)
        payload = json.loads(body) if body else {}
        pause = float(headers.get("x-stub-pause", "0"))
        route = (scope["method"], scope["path"])
        if route == ("POST", "/v1/messages"):
            if payload.get("stream"):
                await _sse(send, _anthropic_events(), pause)
            else:
                await _json(send, _anthropic_message())
        elif route == ("POST", "/v1/responses"):
            if payload.get("stream"):
                await _sse(send, _responses_events(), pause)
            else:
                await _json(send, _response_object())
        elif route == ("POST", "/v1/chat/completions"):
            if payload.get("stream"):
                usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                await _sse(send, _chat_chunks(usage), pause, done=True)
            else:
                await _json(send, _chat_completion())
        elif route == ("POST", "/v1/messages/count_tokens"):
            await _json(send, {"input_tokens": 42})
        else:
            await _json(send, {"stub": "reached", "path": scope["path"]})


async def _json(send: Any, obj: dict[str, Any], status: int = 200) -> None:
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"request-id", b"req_stub")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _sse(send: Any, events: list[dict[str, Any]], pause: float, done: bool = False) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    half = len(events) // 2
    for index, event in enumerate(events):
        if index == half and pause:
            await asyncio.sleep(pause)
        name = event.get("type", "chunk")
        frame = f"event: {name}\ndata: {json.dumps(event)}\n\n".encode()
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    tail = b"data: [DONE]\n\n" if done else b""
    await send({"type": "http.response.body", "body": tail})


def _anthropic_events() -> list[dict[str, Any]]:
    u = ANTHROPIC_USAGE
    start_usage = {
        "input_tokens": u["input"],
        "cache_creation_input_tokens": u["cache_write"],
        "cache_read_input_tokens": u["cache_read"],
        "output_tokens": 1,
    }
    text = ["Hel", "lo ", "from ", "the ", "stub"]
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_stub",
                "type": "message",
                "role": "assistant",
                "model": ANTHROPIC_MODEL,
                "content": [],
                "usage": start_usage,
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *[
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in text
        ],
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": u["output"]},
        },
        {"type": "message_stop"},
    ]


def _anthropic_message() -> dict[str, Any]:
    u = ANTHROPIC_USAGE
    return {
        "id": "msg_stub",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "Hello from the stub"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": u["input"],
            "cache_creation_input_tokens": u["cache_write"],
            "cache_read_input_tokens": u["cache_read"],
            "output_tokens": u["output"],
        },
    }


def _response_object(status: str = "completed") -> dict[str, Any]:
    u = RESPONSES_USAGE
    return {
        "id": "resp_stub",
        "object": "response",
        "status": status,
        "model": OPENAI_MODEL,
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
        "usage": {
            "input_tokens": u["input"],
            "input_tokens_details": {"cached_tokens": u["cached"]},
            "output_tokens": u["output"],
            "output_tokens_details": {"reasoning_tokens": 100},
            "total_tokens": u["input"] + u["output"],
        },
    }


def _responses_events() -> list[dict[str, Any]]:
    created = {**_response_object("in_progress"), "usage": None}
    deltas = [
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": piece}
        for piece in ["Hi", " there", " from", " the", " stub"]
    ]
    return [
        {"type": "response.created", "response": created},
        *deltas,
        {"type": "response.completed", "response": _response_object()},
    ]


def _chat_completion() -> dict[str, Any]:
    u = CHAT_USAGE
    return {
        "id": "chatcmpl_stub",
        "object": "chat.completion",
        "model": OPENAI_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        "usage": {
            "prompt_tokens": u["input"],
            "completion_tokens": u["output"],
            "total_tokens": u["input"] + u["output"],
            "prompt_tokens_details": {"cached_tokens": u["cached"]},
        },
    }


def _chat_chunks(include_usage: bool) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl_stub", "object": "chat.completion.chunk", "model": OPENAI_MODEL}
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"content": p}}], "usage": None}
        for p in ["Hi", " there", " from", " stub"]
    ]
    if include_usage:
        usage = _chat_completion()["usage"]
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def start_stub() -> tuple[StubUpstream, uvicorn.Server, threading.Thread]:
    """Serve a fresh stub on a free loopback port in a background thread."""
    stub = StubUpstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    stub.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(stub, log_config=None, lifespan="off", access_log=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "stub upstream did not start"
        time.sleep(0.01)
    return stub, server, thread


def stop_stub(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)
