"""Serving the emulator: in a background thread (tests) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import uvicorn

from .app import EmulatorApp


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


class EmulatorServer:
    """The emulator on 127.0.0.1 with its own event loop, in a daemon thread."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.sock = _bind(port)
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.app = EmulatorApp(data_dir, self.base_url)
        # Leaves logging alone: uvicorn's own config would give the "uvicorn" loggers a
        # handler bound to this moment's stderr, stop them propagating and set their level,
        # for the whole test process.
        config = uvicorn.Config(
            self.app, lifespan="on", access_log=False, log_config=None, log_level=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="github-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> EmulatorServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the emulator failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve_forever(data_dir: Path, port: int) -> None:
    sock = _bind(port)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = EmulatorApp(data_dir, base_url)
    print(base_url, flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
