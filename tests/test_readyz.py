"""``/healthz`` and a truthful ``/readyz``: Redis stopped → 503 naming Redis; back → 200."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.entrypoints.localredis import server_config
from bot.readiness import READINESS
from bot.web.app import create_app
from tests.conftest import make_settings
from tests.services import docker_client, missing
from tests.stack import free_port


class RedisProcess:
    """A private redis-server, with a password like every Redis Bosun is set up with, that a
    test may stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.password = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server", "install redis-server (scripts/bootstrap.sh test)")
        self.process = subprocess.Popen(
            [binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert self.process.stdin is not None
        self.process.stdin.write(server_config(self.port, self.folder, self.password).encode())
        self.process.stdin.close()
        import redis

        for _ in range(100):
            try:
                redis.Redis(
                    port=self.port, password=self.password, socket_connect_timeout=0.2
                ).ping()
                return
            except redis.ConnectionError:
                import time

                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_healthz_and_truthful_readyz(tmp_path: Path, private_redis: RedisProcess) -> None:
    docker_client()  # the Docker engine is part of readiness
    db = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    settings = make_settings(tmp_path, db, private_redis.url)
    engine = create_engine(db)
    await upgrade(engine)
    await engine.dispose()

    async with AsyncTestClient(app=create_app(settings, with_worker=True)) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"

        private_redis.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["failing"] == ["redis"]
        assert body["checks"]["redis"]["error"]
        assert body["checks"]["database"]["ok"] and body["checks"]["docker"]["ok"]
        # Liveness is not readiness.
        assert (await client.get("/healthz")).status_code == 200

        private_redis.start()
        for _ in range(50):
            back = await client.get("/readyz")
            if back.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert back.status_code == 200, back.text


async def test_readyz_names_unreachable_database(tmp_path: Path, redis_url: str) -> None:
    docker_client()
    settings = make_settings(tmp_path, "postgresql+asyncpg://nobody:x@127.0.0.1:1/none", redis_url)
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["database"]


async def test_web_only_readiness_does_not_need_docker(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    """A web-only host has no Docker engine: its /readyz asks for the database and Redis only;
    a process that also runs a worker (``bosun up``) needs the engine."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    nowhere = {"docker_host": "tcp://127.0.0.1:1", "workdir": tmp_path / "w"}  # closed port
    settings = make_settings(tmp_path, db, private_redis.url, sandbox=nowhere)
    engine = create_engine(db)
    await upgrade(engine)
    await engine.dispose()
    async with AsyncTestClient(app=create_app(settings)) as client:
        web = await client.get("/readyz")
    assert web.status_code == 200, web.text
    assert set(web.json()["checks"]) == {"database", "redis"}
    async with AsyncTestClient(app=create_app(settings, with_worker=True)) as client:
        both = await client.get("/readyz")
    assert both.status_code == 503
    assert both.json()["failing"] == ["docker"]


async def test_worker_check_follows_the_worker(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    """``bosun worker --check`` (the orchestrator's health check): 1 before the worker runs, 0
    while a worker of that name polls the queue, 1 for another name, and 1 once it stopped."""
    from click.testing import CliRunner

    from bot.entrypoints.cli import main
    from jobs.worker import build_worker
    from tests.lifecycle_stack import settings_env

    db = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    settings = make_settings(
        tmp_path, db, redis_url, redis_namespace,
        worker={"name": "w-check", "health_check_seconds": 1},
    )  # fmt: skip
    engine = create_engine(db)
    await upgrade(engine)
    await engine.dispose()
    env = {**settings_env(settings), "BOSUN_ENV_FILE": ""}

    async def check(name: str = "w-check") -> tuple[int, str]:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["worker", "--check"],
            env={**env, "BOSUN_WORKER": json.dumps({"name": name})},
        )
        return result.exit_code, result.output

    code, output = await check()
    assert code == 1 and "worker: no fresh health-check key" in output, output
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        for _ in range(100):
            code, output = await check()
            if code == 0:
                break
            await asyncio.sleep(0.2)
        assert code == 0, output
        assert {"worker: ok", "database: ok", "redis: ok", "docker: ok"} <= set(output.split("\n"))
        assert (await check("another-worker"))[0] == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    code, output = await check()  # arq deletes the key when the worker closes
    assert code == 1, output


async def test_bosun_up_is_not_ready_while_its_worker_rides_out_an_outage(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    """``bosun up``'s worker shares the process: while it waits to reconnect (``bot.readiness``,
    marked by ``jobs.resilience``) the process is not ready, and says what the worker lost."""
    docker_client()
    db = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    settings = make_settings(tmp_path, db, private_redis.url)
    engine = create_engine(db)
    await upgrade(engine)
    await engine.dispose()
    READINESS.clear()
    try:
        async with AsyncTestClient(app=create_app(settings, with_worker=True)) as client:
            assert (await client.get("/readyz")).status_code == 200
            READINESS.down("database", "connection refused")
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["failing"] == ["worker"]
            error = down.json()["checks"]["worker"]["error"]
            assert "lost database" in error and "connection refused" in error
            async with AsyncTestClient(app=create_app(settings)) as web_only:
                assert (await web_only.get("/readyz")).status_code == 200  # no worker inside
            READINESS.up("database")
            assert (await client.get("/readyz")).status_code == 200
    finally:
        READINESS.clear()
