"""Test helpers behind the fixtures: the webhook receiver's records, a source repository
maker, and ``World`` (an emulator with an App installed on one repository)."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from githubkit import AppAuthStrategy, AppInstallationAuthStrategy, GitHub, TokenAuthStrategy

from .client import AppCredentials, EmulatorClient, RepoInfo


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
    delay: float = 0.0  # seconds to wait before answering
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[tuple[str, str | None]]:
        with self.lock:
            return [(r.event, r.payload.get("action")) for r in self.received]


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


@dataclass
class World:
    """An emulator with an App (webhooks to ``receiver``) installed on ``octo/hello``."""

    emulator: EmulatorClient
    app: AppCredentials
    repo: RepoInfo
    receiver: WebhookReceiver
    source: Path
    clients: dict[str, GitHub[Any]] = field(default_factory=dict)

    # githubkit clients are kept here: githubkit refuses calls through the ``rest`` namespace
    # of a client that was garbage-collected, which chained calls would otherwise hit.
    def app_github(self) -> GitHub[Any]:
        if "app" not in self.clients:
            strategy = AppAuthStrategy(str(self.app.app_id), self.app.private_key_pem)
            self.clients["app"] = GitHub(strategy, base_url=self.emulator.base_url)
        return self.clients["app"]

    def installation_github(self) -> GitHub[Any]:
        if "installation" not in self.clients:
            strategy = AppInstallationAuthStrategy(
                str(self.app.app_id), self.app.private_key_pem, self.repo.installation_id
            )
            self.clients["installation"] = GitHub(strategy, base_url=self.emulator.base_url)
        return self.clients["installation"]

    def token_github(self, token: str) -> GitHub[Any]:
        if token not in self.clients:
            self.clients[token] = GitHub(TokenAuthStrategy(token), base_url=self.emulator.base_url)
        return self.clients[token]
