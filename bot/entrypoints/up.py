"""``bosun up``: the whole of Bosun in one process on the embedded defaults."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import uvicorn
from pydantic import SecretStr

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.entrypoints.localredis import ensure_redis, supervise
from bot.entrypoints.localtoken import write_local_token
from bot.settings import Settings
from bot.web.app import create_app
from bot.web.dashboard.login import print_admin_link
from bot.web.intake_protocol import IntakeProtocol
from jobs.worker import build_worker

log = structlog.get_logger("bot.entrypoints.up")


async def run_all(settings: Settings, *, host: str, port: int) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    redis_child = (
        await ensure_redis(settings.redis.url, settings.data_dir, settings.redis.password_value())
        if settings.redis.spawn_local
        else None
    )
    if redis_child is not None and redis_child.generated:
        # The private server's password lives in this process only: web and worker share it.
        redis = settings.redis.model_copy(update={"password": SecretStr(redis_child.password)})
        settings = settings.model_copy(update={"redis": redis})
    try:
        engine = create_engine(settings.database.url)
        try:
            revision = await upgrade(engine)
        finally:
            await engine.dispose()
        log.info("database_ready", revision=revision)
        await write_local_token(settings)  # `bosun` commands on this host need no --token
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, with_worker=True),
                host=host,
                port=port,
                http=IntakeProtocol,
                log_config=None,
                access_log=False,
            )
        )
        worker = build_worker(settings, handle_signals=False)
        worker_task = asyncio.create_task(worker.async_run())
        # The worker rides out Redis and database outages; should it still end, the whole
        # process stops (and its supervisor restarts it) rather than take webhooks nobody runs.
        worker_task.add_done_callback(lambda task: _worker_ended(task, server))
        supervisor = (
            asyncio.create_task(supervise(redis_child)) if redis_child is not None else None
        )
        log.info("bosun_up", url=f"http://{host}:{port}", public_url=settings.public_url)
        await print_admin_link(settings)  # the dashboard's one-time sign-in for the local admin
        try:
            await server.serve()
        finally:
            if supervisor is not None:
                supervisor.cancel()
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
            await worker.close()
        if worker_task.done() and not worker_task.cancelled() and worker_task.exception():
            raise SystemExit(1)
    finally:
        if redis_child is not None:
            redis_child.stop()


def _worker_ended(task: asyncio.Task[None], server: uvicorn.Server) -> None:
    if task.cancelled():
        return
    error = task.exception()
    log.error("worker_ended", error=repr(error) if error else None)
    server.should_exit = True
