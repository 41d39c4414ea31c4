"""pytest fixtures: a fresh emulator per test, a webhook receiver, and a source repository.

Use from another test module or conftest with ``pytest_plugins = ["tests.emulator.fixtures"]``.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .client import EmulatorClient
from .server import EmulatorServer


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


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> str:
        return self.headers.get("x-github-event", "")

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class WebhookReceiver:
    """Records every POST; answers ``status`` (changeable to simulate an outage)."""

    url: str
    received: list[Received] = field(default_factory=list)
    status: int = 202
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[tuple[str, str | None]]:
        with self.lock:
            return [(r.event, r.payload.get("action")) for r in self.received]


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
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
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_source_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    """A local git repository with one commit of ``files`` on ``branch``."""
    path.mkdir(parents=True, exist_ok=True)
    env = {
        "GIT_AUTHOR_NAME": "Octo Cat",
        "GIT_AUTHOR_EMAIL": "octocat@example.com",
        "GIT_COMMITTER_NAME": "Octo Cat",
        "GIT_COMMITTER_EMAIL": "octocat@example.com",
        "HOME": str(path),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q", "-b", branch, str(path)], check=True, env=env)
    for name, content in (files or {"README.md": "# Hello\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=env)
    subprocess.run(
        ["git", "-C", str(path), "commit", "-q", "-m", "Initial commit"], check=True, env=env
    )
    return path


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    return make_source_repo(
        tmp_path / "source", {"README.md": "# Hello\n", "src/app.py": "print('hi')\n"}
    )
