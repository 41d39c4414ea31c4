"""``python -m tests.emulator serve --port N --data DIR``: prints the base URL, then serves."""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from .server import serve_forever


def _exit_with(parent: int) -> None:
    """End this process as soon as ``parent`` is gone (it is then no longer our parent)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the GitHub emulator on 127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--data", type=Path, help="directory for bare repositories")
    serve.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started the emulator ends (tests that start it)",
    )
    args = parser.parse_args()
    if args.exit_with_parent:
        _exit_with(os.getppid())
    data = args.data or Path(tempfile.mkdtemp(prefix="github-emulator-"))
    data.mkdir(parents=True, exist_ok=True)
    serve_forever(data.resolve(), args.port)


if __name__ == "__main__":
    main()
