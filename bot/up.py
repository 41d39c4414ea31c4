"""``bosun up``: the whole of Bosun in one process on the embedded defaults."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import uvicorn

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.localredis import ensure_redis
from bot.settings import Settings
from bot.web.app import create_app
from jobs.worker import build_worker

log = structlog.get_logger("bot.up")


async def run_all(settings: Settings, *, host: str, port: int) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    redis_child = (
        await ensure_redis(settings.redis.url, settings.data_dir)
        if settings.redis.spawn_local
        else None
    )
    try:
        engine = create_engine(settings.database.url)
        try:
            revision = await upgrade(engine)
        finally:
            await engine.dispose()
        log.info("database_ready", revision=revision)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings), host=host, port=port, log_config=None, access_log=False
            )
        )
        worker = build_worker(settings, handle_signals=False)
        worker_task = asyncio.create_task(worker.async_run())
        log.info("bosun_up", url=f"http://{host}:{port}", public_url=settings.public_url)
        try:
            await server.serve()
        finally:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
            await worker.close()
    finally:
        if redis_child is not None:
            redis_child.terminate()
            redis_child.wait(timeout=10)
