"""``python -m tests.emulator serve --port N --data DIR``: prints the base URL, then serves."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .server import serve_forever


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the GitHub emulator on 127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--data", type=Path, help="directory for bare repositories")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="github-emulator-"))
    data.mkdir(parents=True, exist_ok=True)
    serve_forever(data.resolve(), args.port)


if __name__ == "__main__":
    main()
