"""Bosun running for real in a test: web app (uvicorn on a loopback port) and an arq worker, in
a background thread with its own event loop, on SQLite + the test Redis + the local Docker
engine, talking to the GitHub emulator over HTTP.

Tests stay synchronous: they drive the emulator's scenario API and wait for outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
import uvicorn

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.settings import Settings
from bot.web.app import create_app
from jobs.worker import build_worker
from tests.emulator.client import EmulatorClient
from tests.emulator.world import World
from tests.services import docker_client, missing

T = TypeVar("T")

WORK_ROOT = Path("/tmp/bosun-e2e")
AGENT_IMAGE = "bosun-agent:latest"

# Deterministic "agents" for the script runner: small Python programs run inside the sandbox.
EDIT_AGENT = r"""
import pathlib, os
prompt = pathlib.Path(os.environ["BOSUN_PROMPT_FILE"]).read_text()
print("agent: read prompt of", len(prompt), "chars")
pathlib.Path("/workspace/prompt-seen.txt").write_text(prompt)
readme = pathlib.Path("/workspace/README.md")
readme.write_text(readme.read_text() + "\nEdited by the agent.\n")
pathlib.Path("/workspace/src/feature.py").write_text("def feature():\n    return 42\n")
print("agent: done")
"""

PROFILES: dict[str, dict[str, Any]] = {
    "default": {"runner": "script", "command": ["python3", "-c", EDIT_AGENT]},
    "fail": {
        "runner": "script",
        "command": ["python3", "-c", "print('boom'); raise SystemExit(3)"],
    },
    "noop": {"runner": "script", "command": ["python3", "-c", "print('nothing to do')"]},
    "workflow": {
        "runner": "script",
        "command": [
            "sh",
            "-c",
            "mkdir -p .github/workflows && echo 'on: push' > .github/workflows/evil.yml",
        ],
    },
    "secret": {
        "runner": "script",
        "command": [
            "sh",
            "-c",
            "printf 'TOKEN = \"ghp_%s\"\\n' 0123456789abcdefghijABCDEFGHIJ012345 > config.py",
        ],
    },
    "slow": {"runner": "script", "command": ["sh", "-c", "echo started; sleep 300"]},
    "badimage": {"runner": "script", "image": "bosun-absent:nope", "command": ["true"]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BosunStack:
    settings: Settings
    world: World
    url: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop_event: asyncio.Event
    errors: list[BaseException] = field(default_factory=list)

    @property
    def emulator(self) -> EmulatorClient:
        return self.world.emulator

    @property
    def repo(self) -> str:
        return self.world.repo.full_name

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        path = self.settings.database.url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            return list(conn.execute(sql, args).fetchall())

    def runs(self) -> list[dict[str, Any]]:
        rows = self.db("SELECT id, state, reason, branch, base_sha, head_sha, pr_number FROM runs")
        keys = ("id", "state", "reason", "branch", "base_sha", "head_sha", "pr_number")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def events(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self.db("SELECT seq, kind, data FROM run_events WHERE run_id=? ORDER BY seq", run_id)
        out = [{"seq": s, "kind": k, "data": json.loads(d)} for s, k, d in rows]
        return [e for e in out if kind is None or e["kind"] == kind]

    def artifacts(self, run_id: str) -> dict[str, Path]:
        rows = self.db("SELECT name, path FROM artifacts WHERE run_id=?", run_id)
        return {name: Path(path) for name, path in rows}

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 60, what: str = "condition"
    ) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def wait_run(
        self, states: set[str], timeout: float = 90, count: int = 1
    ) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]]:
            runs = [r for r in self.runs() if r["state"] in states]
            return runs if len(runs) >= count else []

        return self.wait_for(done, timeout, f"{count} run(s) in {states}; runs: {self.runs()}")

    def state(self) -> dict[str, Any]:
        owner, name = self.repo.split("/")
        return self.emulator.state(owner, name)

    def label(self, number: int, label: str = "bosun", user: str = "alice") -> None:
        self.emulator.add_labels(self.repo, number, [label], user)


def _run_stack(settings: Settings, port: int, ready: threading.Event, box: dict[str, Any]) -> None:
    async def main() -> None:
        engine = create_engine(settings.database.url)
        await upgrade(engine)
        await engine.dispose()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
            )
        )
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        worker = build_worker(settings, handle_signals=False)
        stop = asyncio.Event()
        box["loop"], box["stop"] = asyncio.get_running_loop(), stop
        serve = asyncio.create_task(server.serve())
        work = asyncio.create_task(worker.async_run())
        while not server.started:
            await asyncio.sleep(0.02)
        ready.set()
        await stop.wait()
        server.should_exit = True
        # Stop the worker between polls (arq's burst exit), never in the middle of a Redis
        # call: cancelling its loop mid-command would abandon a connection.
        worker.burst, worker.max_burst_jobs = True, 0
        try:
            await asyncio.wait_for(asyncio.shield(work), 30)
        except TimeoutError:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        await worker.close()
        await serve

    try:
        asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001 -- reported to the test
        box["error"] = exc
        ready.set()


@pytest.fixture
def work_root() -> Iterator[Path]:
    """A workspace root the remapped sandbox uid can traverse (tmp_path's parents cannot)."""
    WORK_ROOT.mkdir(mode=0o755, exist_ok=True)
    WORK_ROOT.chmod(0o755)
    path = WORK_ROOT / uuid.uuid4().hex[:10]
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class StackPlace(NamedTuple):
    """Where a test's Bosun stack lives, in the order ``open_stack`` takes it: the emulator
    world it serves, the test's own directory, Redis with the test's own namespace, and the
    sandboxes' workspace root."""

    world: World
    tmp_path: Path
    redis_url: str
    namespace: str
    work_root: Path


@pytest.fixture
def place(
    github_world: World, tmp_path: Path, redis_url: str, redis_namespace: str, work_root: Path
) -> StackPlace:
    """The five things every end-to-end stack is opened on (``open_stack(*place, ...)``)."""
    return StackPlace(github_world, tmp_path, redis_url, redis_namespace, work_root)


def make_stack_settings(
    tmp_path: Path,
    world: World,
    redis_url: str,
    namespace: str,
    work_root: Path,
    port: int,
    **extra: Any,
) -> Settings:
    values: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "data_dir": tmp_path / "data",
        "log_format": "json",
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"},
        "redis": {"url": redis_url, "spawn_local": False, "namespace": namespace},
        "github": {
            "app_id": world.app.app_id,
            "private_key": world.app.private_key_pem,
            "webhook_secret": "webhook-secret",
            "api_url": world.emulator.base_url,
            "web_url": world.emulator.base_url,
            "slug": world.app.slug,
            "retry_base_seconds": 0.05,
            "secondary_backoff_seconds": 0.1,
        },
        "sandbox": {"image": AGENT_IMAGE, "workdir": work_root, "timeout_seconds": 120},
        "worker": {"poll_delay": 0.05},
        "profiles": PROFILES,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return Settings.model_validate(values)


@contextlib.contextmanager
def running_stack(settings: Settings, world: World, port: int) -> Iterator[BosunStack]:
    ready, box = threading.Event(), {}
    thread = threading.Thread(
        target=_run_stack, args=(settings, port, ready, box), name="bosun-stack", daemon=True
    )
    thread.start()
    if not ready.wait(30) or "error" in box:
        raise RuntimeError(f"Bosun did not start: {box.get('error')!r}")
    stack = BosunStack(
        settings, world, f"http://127.0.0.1:{port}", box["loop"], thread, box["stop"]
    )
    try:
        yield stack
    finally:
        stack.loop.call_soon_threadsafe(stack.stop_event.set)
        thread.join(30)


@contextlib.contextmanager
def open_stack(
    world: World, tmp_path: Path, redis_url: str, namespace: str, work_root: Path, **extra: Any
) -> Iterator[BosunStack]:
    """Bosun (web + worker) on a free port, registered as the world's App so it receives its
    webhooks, with ``extra`` settings (``profiles=...``, ``worker={...}``) over the test ones."""
    client = docker_client()
    try:
        client.images.get(AGENT_IMAGE)
    except Exception as exc:  # noqa: BLE001
        missing(AGENT_IMAGE, f"{exc} (build it with sandboxes/images/build.sh)")
    finally:
        client.close()
    port = free_port()
    world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
    settings = make_stack_settings(tmp_path, world, redis_url, namespace, work_root, port, **extra)
    with running_stack(settings, world, port) as running:
        yield running


@pytest.fixture
def stack(place: StackPlace) -> Iterator[BosunStack]:
    """Bosun (web + worker) wired to a fresh emulator world whose webhooks it receives."""
    with open_stack(*place) as running:
        yield running
