"""Bosun as real processes for crash tests: ``bosun serve`` and ``bosun worker`` subprocesses
configured through ``BOSUN_*`` environment variables, plus a private Docker engine a test may
stop and restart without touching the machine's shared one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr

from bot.settings import Settings
from tests.emulator.world import World
from tests.stack import free_port

T = TypeVar("T")

BOSUN = Path(sys.executable).with_name("bosun")
BASE_IMAGE = "debian:bookworm-slim"  # the script agents below need only `sh`
LIFECYCLE_PROFILES: dict[str, dict[str, Any]] = {
    "slow": {
        "runner": "script",
        "image": BASE_IMAGE,
        "command": ["sh", "-c", "echo started; sleep 300"],
    },
}
# Fast heartbeats so a dead worker is noticed in seconds, not minutes.
FAST_WORKER = {
    "poll_delay": 0.05,
    "heartbeat_seconds": 1.0,
    "heartbeat_stale_seconds": 4.0,
    "reconcile_seconds": 2,
}


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``BOSUN_*`` environment a Bosun process reads (groups as JSON)."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, BaseModel):
            return value.model_dump(exclude_defaults=True)
        raise TypeError(f"cannot put {type(value).__name__} into the environment")

    env: dict[str, str] = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if isinstance(value, str | Path):
            env[f"BOSUN_{name.upper()}"] = str(value)
        else:
            env[f"BOSUN_{name.upper()}"] = json.dumps(value, default=plain)
    return env


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BOSUN_", "DOCKER_"))}


@dataclass
class BosunProcess:
    """One ``bosun`` subprocess; its output goes to ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BosunProcess:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def logged_at(self, event: str) -> datetime | None:
        """When this process first logged ``event`` (JSON log lines)."""
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    return datetime.fromisoformat(record["timestamp"])
        return None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ProcessStack:
    """Bosun's web and worker processes on SQLite + the test Redis, wired to an emulator."""

    settings: Settings
    world: World
    logs: Path
    web: BosunProcess | None = None
    workers: list[BosunProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**_clean_environ(), **settings_env(self.settings)}

    @property
    def repo(self) -> str:
        return self.world.repo.full_name

    def start_web(self, port: int) -> None:
        subprocess.run(
            [str(BOSUN), "migrate"], env=self.env, check=True, capture_output=True, timeout=60
        )
        argv = [str(BOSUN), "serve", "--port", str(port)]
        self.web = BosunProcess("web", argv, self.env, self.logs / "web.log").start()
        url = f"http://127.0.0.1:{port}/healthz"
        self.wait_for(lambda: _http_ok(url), 30, f"the web app at {url}; {self.web.output()}")

    def start_worker(self) -> BosunProcess:
        index = len(self.workers)
        log = self.logs / f"worker-{index}.log"
        worker = BosunProcess(f"worker-{index}", [str(BOSUN), "worker"], self.env, log).start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [*self.workers, self.web]:
            if process is not None:
                process.stop()
        self.remove_sandboxes()

    def remove_sandboxes(self) -> None:
        """Remove what a failed test left on the engine: no other Bosun's reaper touches the
        sandboxes of runs it does not know."""
        import docker

        with contextlib.suppress(Exception):
            run_ids = [row[0] for row in self.db("SELECT id FROM runs")]
            host = self.settings.sandbox.docker_host
            client = docker.DockerClient(base_url=host) if host else docker.from_env()
            try:
                for run_id in run_ids:
                    label = f"bosun.run_id={run_id}"
                    for container in client.containers.list(all=True, filters={"label": label}):
                        container.remove(force=True)
            finally:
                client.close()

    def outputs(self) -> str:
        parts = [f"--- {p.name}\n{p.output()[-4000:]}" for p in [self.web, *self.workers] if p]
        return "\n".join(parts)

    # -- what a user would see -------------------------------------------------------------
    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        path = self.settings.database.url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            return list(conn.execute(sql, args).fetchall())

    def run(self) -> dict[str, Any] | None:
        rows = self.db("SELECT id, state, reason, finished_at, heartbeat_at FROM runs")
        keys = ("id", "state", "reason", "finished_at", "heartbeat_at")
        return dict(zip(keys, rows[0], strict=True)) if rows else None

    def ended_after(self, start: datetime) -> float:
        """Seconds from ``start`` (UTC) to the moment the run entered its terminal state."""
        run = self.run()
        assert run is not None and run["finished_at"], run
        return (_utc(run["finished_at"]) - start).total_seconds()

    def heartbeat_age(self) -> float:
        run = self.run()
        assert run is not None and run["heartbeat_at"], run
        return (datetime.now(UTC) - _utc(run["heartbeat_at"])).total_seconds()

    def events(self, run_id: str, kind: str) -> list[dict[str, Any]]:
        rows = self.db(
            "SELECT data FROM run_events WHERE run_id=? AND kind=? ORDER BY seq", run_id, kind
        )
        return [json.loads(row[0]) for row in rows]

    def artifacts(self, run_id: str) -> dict[str, Path]:
        return {
            n: Path(p)
            for n, p in self.db("SELECT name, path FROM artifacts WHERE run_id=?", run_id)
        }

    def check_runs(self) -> list[dict[str, Any]]:
        owner, name = self.repo.split("/")
        checks: list[dict[str, Any]] = self.world.emulator.state(owner, name)["check_runs"]
        return [c for c in checks if c["name"] == "bosun"]

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.outputs()}")


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def process_stack(
    settings: Settings, world: World, port: int, logs: Path
) -> Iterator[ProcessStack]:
    """Web (started here) and no worker yet; every process is stopped on the way out."""
    logs.mkdir(parents=True, exist_ok=True)
    stack = ProcessStack(settings, world, logs)
    try:
        stack.start_web(port)
        yield stack
    finally:
        stack.stop()


class PrivateDockerd:
    """A second Docker engine (the bootstrap's flags, its own socket, data and exec roots) that a
    test may stop and restart; the machine's shared engine is never touched."""

    FLAGS = ("--bridge=none", "--iptables=false", "--ip-masq=false", "--userns-remap=default")

    def __init__(self) -> None:
        # A short path: a Unix socket path must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bosun-dockerd-", dir="/tmp"))
        self.root.chmod(0o755)
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise FileNotFoundError("dockerd is not installed")
        argv = [
            dockerd,
            *self.FLAGS,
            f"--host={self.host}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}",
        ]
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log.read_text()[-2000:]}")
            if self.docker("info", check=False).returncode == 0:
                return
            time.sleep(0.25)
        raise RuntimeError(f"dockerd did not answer in {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self, timeout: float = 60) -> None:
        """Stop the engine as an operator would (SIGTERM: it stops its containers first)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, check=check, timeout=120
        )

    def load_image(self, image: str) -> None:
        """Copy ``image`` from the shared engine (``docker save | docker load``)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        assert save.stdout is not None
        loaded = subprocess.run(
            ["docker", "-H", self.host, "load"], stdin=save.stdout, capture_output=True, timeout=300
        )
        save.stdout.close()
        if save.wait(60) != 0 or loaded.returncode != 0:
            raise RuntimeError(f"could not load {image}: {loaded.stderr.decode()[-1000:]}")

    def containers(self) -> list[str]:
        out = self.docker("ps", "-aq", "--filter", "label=bosun.managed=true").stdout
        return out.decode().split()

    def destroy(self) -> None:
        """Stop the engine (whatever it is doing) and delete its data."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = [
    "BASE_IMAGE",
    "FAST_WORKER",
    "LIFECYCLE_PROFILES",
    "PrivateDockerd",
    "ProcessStack",
    "free_port",
    "process_stack",
    "settings_env",
]
