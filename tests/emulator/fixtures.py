"""pytest fixtures: a fresh emulator per test, a webhook receiver, a source repository, and
``github_world`` (App + installation + repository + receiver).

Load with ``pytest_plugins = ["tests.emulator.fixtures"]`` (root conftest or a test module);
import helper types from ``tests.emulator.world``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .client import EmulatorClient
from .server import EmulatorServer
from .world import Received, WebhookReceiver, World, make_source_repo


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorClient]:
    """A running emulator (own thread and event loop) with a fresh data directory."""
    server = EmulatorServer(tmp_path / "emulator").start()
    client = EmulatorClient(server.base_url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if receiver.delay:
                time.sleep(receiver.delay)
            with receiver.lock:
                receiver.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(receiver.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/webhooks/github"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    return make_source_repo(
        tmp_path / "source", {"README.md": "# Hello\n", "src/app.py": "print('hi')\n"}
    )


@pytest.fixture
def github_world(
    emulator: EmulatorClient, webhook_receiver: WebhookReceiver, source_repo: Path
) -> World:
    app = emulator.create_app(webhook_receiver.url, "webhook-secret")
    repo = emulator.create_repo("octo", "hello", str(source_repo))
    emulator.add_user("alice", "octo/hello", "write")
    emulator.add_user("mallory", "octo/hello", "read")
    return World(emulator, app, repo, webhook_receiver, source_repo)
