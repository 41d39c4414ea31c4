"""``python -m modelstubs {anthropic|openai|gemini} --port PORT [--script FILE] [--prefix P]``:
serve a stub until killed. FILE is a JSON list of turns (see ``ModelScript.from_json``); each
request is logged to stderr as one JSON line (method, path, query, the key it carried, how many
tools it offered, the body's size)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .anthropic import AnthropicStub
from .gemini import GeminiStub
from .openai import OpenAIResponsesStub
from .script import ModelScript, TextTurn
from .server import ASGIApp, Receive, Scope, Send, serve_forever

KEY_HEADERS = ("x-api-key", "authorization", "x-goog-api-key")


def logged(app: ASGIApp, prefix: str = "") -> ASGIApp:
    """``app``, logging each request it receives to stderr; ``prefix`` is taken off the paths
    that start with it (the gateway's route prefix, for a CLI configured with one)."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if prefix and path.startswith(prefix + "/"):
            scope = {**scope, "path": path[len(prefix) :]}
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        headers = {k.decode(): v.decode() for k, v in scope.get("headers", [])}
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        tools = body.get("tools") if isinstance(body, dict) else None
        line = {
            "method": scope.get("method"),
            "path": scope.get("path"),
            "query": scope.get("query_string", b"").decode(),
            "key": next((headers[h] for h in KEY_HEADERS if h in headers), ""),
            "tools": len(tools) if isinstance(tools, list) else 0,
            "bytes": len(raw),
        }
        print(json.dumps(line), file=sys.stderr, flush=True)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await app(scope, replay, send)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(prog="modelstubs")
    parser.add_argument("api", choices=["anthropic", "openai", "gemini"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", help="JSON file with the turns")
    parser.add_argument("--prefix", default="", help="path prefix to take off (/anthropic)")
    parser.add_argument("--cached", type=int, default=0, help="gemini: cached prompt tokens")
    parser.add_argument("--thoughts", type=int, default=0, help="gemini: thinking tokens")
    args = parser.parse_args()
    turns = ModelScript.from_json(Path(args.script).read_text()).turns if args.script else []
    script = ModelScript(turns or [TextTurn("Hello from the stub.")])
    app: ASGIApp
    if args.api == "gemini":
        app = GeminiStub(script, cached_tokens=args.cached, thoughts_tokens=args.thoughts)
    else:
        app = AnthropicStub(script) if args.api == "anthropic" else OpenAIResponsesStub(script)
    asyncio.run(serve_forever(logged(app, args.prefix.rstrip("/")), host=args.host, port=args.port))


if __name__ == "__main__":
    main()
