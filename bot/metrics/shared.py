"""Counts every process shares, read from the database and Redis when ``/metrics`` is scraped,
so a scrape of any web process sees what every worker did.

Each is one aggregate query or one Redis round trip; the event log's metrics are running
totals that read only recent events (``bot.metrics.events``). The results are kept
``metrics.cache_seconds``, so frequent scrapes cost the database one read per interval. A
source that cannot be read is reported as ``bosun_metrics_source_up{source=…} 0`` and leaves
its metrics out; the scrape still answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import CommandAudit, Delivery, Notification, NotificationAttempt, Run
from bot.domain.states import RunState
from bot.metrics import events
from bot.metrics.events import EventTotals
from bot.services import Services

log = structlog.get_logger("bot.metrics")

SANDBOX_FAILURES: tuple[tuple[str, str], ...] = (
    ("the sandbox did not start%", "start"),
    ("the sandbox stopped under the agent%", "lost"),
    ("the agent ran out of memory%", "out_of_memory"),
    ("the workspace grew past%", "workspace_limit"),
    ("the dependency cache (%", "workspace_limit"),
    ("could not stop the sandbox%", "stop"),
)
"""How a failed run's reason names a sandbox failure (the sentences ``jobs.run.pipeline``,
``jobs.run.agent``, ``jobs.run.publish`` and ``sandboxes.quota`` end runs with)."""

BUDGET_STOP = "the run's budget of %"

CAPACITY_PARTS = ("waiting", "alive", "held")
"""``jobs.admission.capacity``'s sorted sets of a scope
(``<namespace>:capacity:<scope>:<part>``)."""


@dataclass
class _Families:
    items: list[Metric] = field(default_factory=list)

    def gauge(
        self, name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Any, ...]]
    ) -> None:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        for *values, value in rows:
            family.add_metric([str(v) for v in values], float(value or 0))
        self.items.append(family)

    def counter(
        self, name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Any, ...]]
    ) -> None:
        family = CounterMetricFamily(name, doc, labels=list(labels))
        for *values, value in rows:
            family.add_metric([str(v) for v in values], float(value or 0))
        self.items.append(family)


async def _deliveries(session: AsyncSession, out: _Families) -> None:
    by_status = await session.execute(
        select(Delivery.status, func.count()).group_by(Delivery.status)
    )
    out.gauge(
        "bosun_webhook_deliveries",
        "Stored webhook deliveries by processing status.",
        ["status"],
        ((s.value if hasattr(s, "value") else s, n) for s, n in by_status.all()),
    )
    by_event = (
        await session.execute(
            select(
                Delivery.event, func.count(), func.coalesce(func.sum(Delivery.redeliveries), 0)
            ).group_by(Delivery.event)
        )
    ).all()
    out.counter(
        "bosun_webhook_deliveries_received",
        "Webhook deliveries stored (each delivery id once), by GitHub event.",
        ["event"],
        ((event, n) for event, n, _ in by_event),
    )
    out.counter(
        "bosun_webhook_deliveries_duplicate",
        "Webhook deliveries received again under an id already stored (acknowledged, not "
        "processed twice), by GitHub event.",
        ["event"],
        ((event, dup) for event, _, dup in by_event),
    )


async def _runs(session: AsyncSession, out: _Families, now: datetime) -> None:
    rows = await session.execute(
        select(Run.state, Run.profile, func.count()).group_by(Run.state, Run.profile)
    )
    out.gauge(
        "bosun_runs",
        "Runs by state and agent profile.",
        ["state", "profile"],
        ((s.value if hasattr(s, "value") else s, p, n) for s, p, n in rows.all()),
    )
    oldest = (
        await session.execute(select(func.min(Run.created_at)).where(Run.state == RunState.QUEUED))
    ).scalar_one_or_none()
    waited = (now - _utc(oldest)).total_seconds() if oldest is not None else 0.0
    out.gauge(
        "bosun_runs_queued_oldest_seconds",
        "How long the run queued longest has been waiting to start (0 when none waits).",
        [],
        [(max(0.0, waited),)],
    )
    reason = case(
        *((Run.reason.like(pattern), label) for pattern, label in SANDBOX_FAILURES),
        else_="",
    )
    failures = await session.execute(
        select(reason.label("reason"), func.count())
        .where(Run.state == RunState.FAILED)
        .group_by("reason")
    )
    counts = {label: 0 for _, label in SANDBOX_FAILURES}
    counts.update({label: n for label, n in failures.all() if label})
    out.counter(
        "bosun_sandbox_failures",
        "Runs that failed because of their sandbox, by reason: start (it did not start), lost "
        "(the engine or an operator stopped it), out_of_memory, workspace_limit, stop.",
        ["reason"],
        sorted(counts.items()),
    )
    stops = await session.execute(select(func.count()).where(Run.reason.like(BUDGET_STOP)))
    out.counter(
        "bosun_budget_stops",
        "Runs whose agent was stopped because the run's budget was spent.",
        [],
        [(stops.scalar_one(),)],
    )


async def _commands(session: AsyncSession, out: _Families) -> None:
    rows = await session.execute(
        select(
            CommandAudit.command, CommandAudit.source, CommandAudit.outcome, func.count()
        ).group_by(CommandAudit.command, CommandAudit.source, CommandAudit.outcome)
    )
    out.counter(
        "bosun_commands",
        "Review commands and API actions (the command audit), by command, source and outcome.",
        ["command", "source", "outcome"],
        rows.all(),
    )


async def _notifications(session: AsyncSession, out: _Families) -> None:
    rows = await session.execute(
        select(Notification.status, func.count()).group_by(Notification.status)
    )
    counts = {"pending": 0, "delivered": 0, "failed": 0}
    counts.update({status: n for status, n in rows.all()})
    out.gauge(
        "bosun_notifications",
        "Outbound webhook notifications by status (pending, delivered, failed).",
        ["status"],
        sorted(counts.items()),
    )
    delivered = and_(NotificationAttempt.status_code >= 200, NotificationAttempt.status_code < 300)
    outcome = case((delivered, "delivered"), else_="failed")
    attempts = await session.execute(
        select(outcome.label("outcome"), func.count()).group_by("outcome")
    )
    made = {"delivered": 0, "failed": 0}
    made.update({outcome: n for outcome, n in attempts.all()})
    out.counter(
        "bosun_notification_attempts",
        "Attempts at sending notifications, by outcome (failed: no 2xx answer).",
        ["outcome"],
        sorted(made.items()),
    )


async def _redis(services: Services, out: _Families) -> None:
    settings = services.settings
    redis = services.redis
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    capacity = f"{settings.redis.namespace}:capacity:global"
    queue = settings.redis.queue_name
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(queue)
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zrangebyscore(queue, "-inf", now_ms, start=0, num=1, withscores=True)
        pipe.zcount(f"{capacity}:held", now_ms, "+inf")
        pipe.zcount(f"{capacity}:alive", now_ms, "+inf")
        total, due, oldest, held, waiting = await pipe.execute()
    oldest_wait = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
    out.gauge("bosun_queue_jobs", "Jobs in the arq queue (due and deferred).", [], [(total,)])
    out.gauge("bosun_queue_due_jobs", "Jobs in the queue that are due now.", [], [(due,)])
    out.gauge(
        "bosun_queue_oldest_due_seconds",
        "How long the job due longest has waited for a worker (0 when none is due).",
        [],
        [(oldest_wait,)],
    )
    out.gauge(
        "bosun_capacity_in_use",
        "Running runs holding one of the installation's slots (all workers).",
        [],
        [(held,)],
    )
    out.gauge(
        "bosun_capacity_limit",
        "The installation's slots for running runs (worker.max_concurrent_runs as this "
        "process is configured).",
        [],
        [(settings.worker.max_concurrent_runs,)],
    )
    out.gauge(
        "bosun_runs_waiting",
        "Runs waiting in line for a slot (their repository's or the installation's).",
        [],
        [(waiting,)],
    )


async def collect(services: Services, totals: EventTotals | None = None) -> list[Metric]:
    """Every shared metric, read now (the event log's through ``totals``, this process's
    running totals; without them the whole log is read)."""
    out = _Families()
    up = GaugeMetricFamily(
        "bosun_metrics_source_up",
        "Whether this scrape could read a source of shared metrics.",
        labels=["source"],
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(10), services.sessions() as session:
            # Runs first: a state read is then never newer than the events read after it
            # (a transition writes both in one transaction).
            await _runs(session, out, datetime.now(UTC))
            out.items.extend(events.families(await (totals or EventTotals()).read(session)))
            for part in (_deliveries, _commands, _notifications):
                await part(session, out)
        up.add_metric(["database"], 1)
    except Exception as exc:  # noqa: BLE001 -- the scrape answers; the gauge says what failed
        log.warning("metrics_source_failed", source="database", error=str(exc)[:300])
        out.items = []
        up.add_metric(["database"], 0)
    kept = list(out.items)
    try:
        async with asyncio.timeout(5):
            await _redis(services, out)
        up.add_metric(["redis"], 1)
    except Exception as exc:  # noqa: BLE001
        log.warning("metrics_source_failed", source="redis", error=str(exc)[:300])
        out.items = kept
        up.add_metric(["redis"], 0)
    took = GaugeMetricFamily(
        "bosun_metrics_collect_seconds", "How long reading the shared metrics took."
    )
    took.add_metric([], time.monotonic() - started)
    return [*out.items, up, took]


class SharedMetrics:
    """``collect`` with the results kept ``cache_seconds`` (one read at a time)."""

    def __init__(self, services: Services, cache_seconds: float) -> None:
        self.services = services
        self.cache_seconds = cache_seconds
        self.totals = EventTotals()
        self._lock = asyncio.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    async def families(self) -> list[Metric]:
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            families = await collect(self.services, self.totals)
            self._cached = (time.monotonic(), families)
            return families


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
