"""The arq worker: settings, startup/shutdown building the typed job context, job registry."""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import structlog
from arq.cron import cron
from arq.worker import Worker, func

from bot import jobcodec, tracing
from bot.jobids import API_COMMAND, EXECUTE_RUN, PROCESS_DELIVERY
from bot.metrics.local import job_started
from bot.metrics.worker import start_worker_metrics, stop_worker_metrics
from bot.services import Services, queue_client
from bot.settings import Settings
from jobs.context import JobContext
from jobs.deliveries.commands import api_command
from jobs.deliveries.process import process_delivery
from jobs.deliveries.sweeper import sweep_deliveries
from jobs.deliveries.traced import traced_delivery
from jobs.resilience import ResilientWorker
from jobs.review.green import recheck_waiting
from jobs.run.pipeline import execute_run
from jobs.upkeep.notify import notify_crons, notify_functions, notify_startup
from jobs.upkeep.ping import ping
from jobs.upkeep.prune import HostUpkeep, prune
from jobs.upkeep.reconcile import after_reconnect, reconcile
from jobs.wakeup import WakingWorker

log = structlog.get_logger("jobs.worker")


def job_functions() -> list[Any]:
    """Every job the worker runs. Each takes ``ctx`` and JSON-safe keyword arguments."""
    return [
        func(ping, name="ping"),
        func(traced_delivery(process_delivery), name=PROCESS_DELIVERY, max_tries=5),
        func(execute_run, name=EXECUTE_RUN, max_tries=3),
        func(api_command, name=API_COMMAND, max_tries=3),
        *notify_functions(),
    ]


def cron_jobs(settings: Settings) -> list[Any]:
    # arq's cron job ids are global: the namespace keeps two Bosuns on one Redis apart.
    # ``run_at_startup``: a restarted worker settles what its predecessor left at once.
    namespace = settings.redis.namespace
    seconds = set(range(0, 60, settings.worker.reconcile_seconds))
    minutes = set(range(0, 60, settings.worker.sweep_minutes))
    return [
        cron(
            reconcile,
            name=f"{namespace}:reconcile",
            second=seconds,
            run_at_startup=True,
            unique=True,
        ),
        cron(
            sweep_deliveries,
            name=f"{namespace}:sweep",
            minute=minutes,
            second={30},  # away from the reconciler's second 0
            run_at_startup=True,
            unique=True,
        ),
        cron(prune, name=f"{namespace}:prune", minute={41}, second={15}, unique=True),
        cron(
            recheck_waiting,  # merge when green: a check webhook that never came
            name=f"{namespace}:merge-recheck",
            minute=set(range(0, 60, settings.worker.merge_recheck_minutes)),
            second={45},
            unique=True,
        ),
        *notify_crons(settings),
    ]


def raise_descriptor_limit() -> None:
    """Lift the soft open-file limit to the hard one: a worker holds sockets, pipes and one
    descriptor per folder level while it measures a workspace (systemd's default soft limit
    is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BosunWorker(ResilientWorker, WakingWorker):
    """Woken when a job is queued (``jobs/wakeup.py``); riding out Redis outages, with a
    reconciler pass once reconnected (``jobs/resilience.py``)."""


def build_worker(settings: Settings, *, burst: bool = False, handle_signals: bool = True) -> Worker:
    """An arq ``Worker`` for ``settings``: woken when a job is queued (``jobs/wakeup.py``),
    polling every ``poll_delay`` seconds otherwise, surviving Redis and database outages."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        raise_descriptor_limit()
        ctx["traced"] = tracing.acquire()
        services = Services.build(settings)
        ctx["bosun"] = JobContext(settings=settings, services=services)
        await notify_startup(ctx["bosun"])
        ctx["metrics_server"] = await start_worker_metrics(settings.metrics)
        bosun = ctx["bosun"]
        ctx["host_upkeep"] = HostUpkeep(services.sessions, settings, lambda: bosun.workspaces)
        ctx["host_upkeep"].start()
        log.info("worker_started", worker=ctx["bosun"].worker_id, queue=settings.redis.queue_name)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if (upkeep := ctx.get("host_upkeep")) is not None:
            await upkeep.stop()
        await stop_worker_metrics(ctx.get("metrics_server"))
        bosun: JobContext | None = ctx.get("bosun")
        if bosun is not None:
            await bosun.close()
        if ctx.pop("traced", False):
            await asyncio.to_thread(tracing.release)  # flushes: may wait on the collector
        log.info("worker_stopped")

    async def on_job_start(ctx: dict[str, Any]) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"))
        job_started(ctx)
        bosun: JobContext | None = ctx.get("bosun")
        if bosun is not None:
            await bosun.adopt_stored_app()

    return BosunWorker(
        on_reconnect=after_reconnect,
        functions=job_functions(),
        cron_jobs=cron_jobs(settings),
        queue_name=settings.redis.queue_name,
        redis_pool=queue_client(settings.redis),
        # JSON, never pickle: a job forged in Redis is refused, not run (bot/jobcodec.py).
        job_serializer=jobcodec.serialize,
        job_deserializer=jobcodec.deserialize,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        on_job_start=on_job_start,
        burst=burst,
        handle_signals=handle_signals,
        max_jobs=settings.worker.max_jobs,
        job_timeout=settings.worker.job_timeout,
        idle_poll=settings.worker.poll_delay,
        keep_result=3600,
        # Per worker, so `bosun worker --check` answers for this one (bot/web/health.py).
        health_check_key=settings.worker_health_key(),
        health_check_interval=settings.worker.health_check_seconds,
        max_tries=5,
        allow_abort_jobs=True,
    )
