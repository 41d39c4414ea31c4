"""``python -m modelstubs {anthropic|openai} --port PORT [--host H] [--script FILE]``: serve a
stub until killed. FILE is a JSON list of turns (see ``ModelScript.from_json``); each request
is logged to stderr as one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .anthropic import AnthropicStub
from .openai import OpenAIResponsesStub
from .script import ModelScript, TextTurn
from .server import serve_forever


class _Logged(ModelScript):
    def answer(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        turn = super().answer(path, body, headers)
        seen = headers or {}
        key = seen.get("x-api-key") or seen.get("authorization", "")
        line = {"path": path, "tools": len(body.get("tools") or []), "key": key}
        print(json.dumps(line), file=sys.stderr, flush=True)
        return turn


def main() -> None:
    parser = argparse.ArgumentParser(prog="modelstubs")
    parser.add_argument("api", choices=["anthropic", "openai"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", help="JSON file with the turns")
    args = parser.parse_args()
    turns = ModelScript.from_json(Path(args.script).read_text()).turns if args.script else []
    script = _Logged(turns or [TextTurn("Hello from the stub.")])
    app = AnthropicStub(script) if args.api == "anthropic" else OpenAIResponsesStub(script)
    asyncio.run(serve_forever(app, host=args.host, port=args.port))


if __name__ == "__main__":
    main()
