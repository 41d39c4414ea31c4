"""The clients Bosun's processes share: database, Redis queue, Docker engine.

Built once per process from ``Settings`` (by the web app's startup or the worker's
``on_startup``) and closed at shutdown. Connections are lazy, so a process starts even while
a service is down and ``/readyz`` can say which one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import jobcodec
from bot.db.engine import SessionFactory, create_engine, session_factory
from bot.queuewake import WakingRedis
from bot.settings import RedisSettings, Settings


def redis_pool(
    url: str, queue_name: str, *, password: str | None = None, timeout: float = 5.0
) -> ArqRedis:
    """An arq client on a lazily connecting pool (no ping at construction) that writes and
    reads jobs and results as JSON (``bot.jobcodec``), never pickle, and wakes the workers
    when it enqueues (``bot.queuewake``). ``password`` is used unless ``url`` holds one."""
    pool = ConnectionPool.from_url(
        url, password=password, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    return WakingRedis(
        pool,
        default_queue_name=queue_name,
        job_serializer=jobcodec.serialize,
        job_deserializer=jobcodec.deserialize,
    )


def queue_client(redis: RedisSettings) -> ArqRedis:
    """The arq client for Bosun's queue as configured (URL, password, namespace)."""
    return redis_pool(redis.url, redis.queue_name, password=redis.password_value())


def docker_client(settings: Settings, *, timeout: int = 10) -> Any:
    """A docker-py client for the configured engine (``DOCKER_HOST`` when unset)."""
    import docker

    if settings.sandbox.docker_host:
        return docker.DockerClient(base_url=settings.sandbox.docker_host, timeout=timeout)
    return docker.from_env(timeout=timeout)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    redis: ArqRedis
    _docker: Any = field(default=None, repr=False)
    stored_webhook_secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = create_engine(settings.database.url, echo=settings.database.echo)
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            redis=queue_client(settings.redis),
        )

    def webhook_secret(self) -> bytes | None:
        """The secret webhook signatures are checked against (configured or stored by the
        manifest flow)."""
        secret = self.settings.github.webhook_secret
        if secret is not None:
            return secret.get_secret_value().encode()
        return self.stored_webhook_secret

    @property
    def docker(self) -> Any:
        if self._docker is None:
            self._docker = docker_client(self.settings)
        return self._docker

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        await self.engine.dispose()
        if self._docker is not None:
            await asyncio.to_thread(self._docker.close)
            self._docker = None

    # Readiness probes: each returns None when healthy, or a short reason.

    async def check_database(self) -> str | None:
        try:
            async with asyncio.timeout(3):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 -- any failure means not ready
            return _reason(exc)
        return None

    async def check_redis(self) -> str | None:
        try:
            async with asyncio.timeout(3):
                await self.redis.ping()
        except Exception as exc:  # noqa: BLE001
            return _reason(exc)
        return None

    async def check_docker(self) -> str | None:
        try:
            async with asyncio.timeout(5):
                await asyncio.to_thread(lambda: self.docker.ping())
        except Exception as exc:  # noqa: BLE001
            client, self._docker = self._docker, None  # reconnect next time (it may come up)
            if client is not None:
                await asyncio.to_thread(client.close)
            return _reason(exc)
        return None


def _reason(exc: BaseException) -> str:
    text_ = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text_}"[:300]
