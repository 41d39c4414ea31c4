"""Shared fixtures: settings on real services, a database per backend, Redis.

Every test that takes ``db_url`` runs twice: on SQLite (the embedded default) and on
PostgreSQL (each test in a schema of its own, dropped afterwards).
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.settings import Settings
from tests.services import POSTGRES_URL, REDIS_URL, missing

pytest_plugins = ["tests.emulator.fixtures", "tests.stack", "tests.review_harness"]


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C works in the processes the tests start, whoever started the tests: a shell that
    ran them in the background (``cmd &``) hands them SIGINT ignored, which every child would
    inherit (the CLI's Ctrl-C test then waits forever). A handled signal is reset to the
    default in a child, so handling it here gives each child Python's KeyboardInterrupt."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def _pg_admin(sql: str) -> None:
    import asyncpg

    url = make_url(POSTGRES_URL)
    conn = await asyncpg.connect(
        user=url.username,
        password=url.password,
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        database=url.database,
        timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        await _pg_admin(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # noqa: BLE001 -- any failure means PostgreSQL is unusable
        missing("PostgreSQL", f"{POSTGRES_URL}: {exc} (run scripts/bootstrap.sh test)")
    url = make_url(POSTGRES_URL).update_query_dict({"search_path": schema})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        await _pg_admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A Redis key namespace of this test's own (tests may run in parallel on one Redis);
    its keys are deleted afterwards."""
    import redis

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing("Redis", f"{REDIS_URL}: {exc} (run scripts/bootstrap.sh test)")
    yield namespace
    keys = list(client.scan_iter(f"{namespace}:*")) + list(client.scan_iter(f"arq:*{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_url(redis_namespace: str) -> str:
    return REDIS_URL


def make_settings(
    tmp_path: Path, db_url: str, redis_url: str, namespace: str = "bosun", **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database": {"url": db_url},
        "redis": {"url": redis_url, "spawn_local": False, "namespace": namespace},
        "sandbox": {"workdir": tmp_path / "work"},
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, redis_namespace: str) -> Settings:
    """Settings on SQLite and the test Redis (for tests that need one backend only)."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    return make_settings(tmp_path, db, redis_url, redis_namespace)
