"""A worker's own metrics (``bot.metrics.local``) on ``metrics.worker_port``: uvicorn serving
the same ``/metrics`` handler, with the same protection, in the worker's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
import uvicorn
from litestar import Litestar
from litestar.datastructures import State

from bot.errors import ConfigError
from bot.metrics.settings import MetricsSettings
from bot.metrics.web import metrics

log = structlog.get_logger("bot.metrics")


@dataclass(frozen=True)
class _Settings:
    metrics: MetricsSettings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to the worker (arq), which stops this server on shutdown


class WorkerMetrics:
    def __init__(self, settings: MetricsSettings, port: int) -> None:
        app = Litestar(
            route_handlers=[metrics], state=State({"settings": _Settings(settings)}), debug=False
        )
        config = uvicorn.Config(
            app, host=settings.worker_host, port=port, log_config=None, lifespan="off"
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        deadline = asyncio.get_running_loop().time() + 10
        # uvicorn sets a flag, not an event, once it listens
        while not (self.server.started or self._task.done()):
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigError("the worker's metrics port did not start listening in 10 s")
            await asyncio.sleep(0.02)
        if self._task.done():
            try:
                await self._task
            except SystemExit as exc:  # uvicorn exits when it cannot listen
                raise ConfigError(
                    f"metrics.worker_port {self.server.config.port} cannot be listened on "
                    f"({self.server.config.host})"
                ) from exc
        log.info("worker_metrics_listening", port=self.server.config.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 5)


async def start_worker_metrics(settings: MetricsSettings) -> WorkerMetrics | None:
    if settings.worker_port is None:
        return None
    served = WorkerMetrics(settings, settings.worker_port)
    await served.start()
    return served


async def stop_worker_metrics(served: object) -> None:
    if isinstance(served, WorkerMetrics):
        await served.stop()
