"""Counts every process shares, read from the database and Redis when ``/metrics`` is scraped,
so a scrape of any web process sees what every worker did.

Each is one aggregate query (``run_events`` is read through its ``kind`` index) or one Redis
round trip; the results are kept ``metrics.cache_seconds`` so frequent scrapes cost the
database one read per interval. A source that cannot be read is reported as
``bosun_metrics_source_up{source=…} 0`` and leaves its metrics out; the scrape still answers.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Float, and_, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import (
    CommandAudit,
    Delivery,
    Notification,
    NotificationAttempt,
    Run,
    RunEvent,
    RunState,
)
from bot.services import Services

log = structlog.get_logger("bot.metrics")

STATE_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Upper bounds (seconds) of the time-in-state histogram."""

SANDBOX_FAILURES: tuple[tuple[str, str], ...] = (
    ("the sandbox did not start%", "start"),
    ("the sandbox stopped under the agent%", "lost"),
    ("the agent ran out of memory%", "out_of_memory"),
    ("the workspace grew past%", "workspace_limit"),
    ("could not stop the sandbox%", "stop"),
)
"""How a failed run's reason names a sandbox failure (the sentences ``jobs.pipeline``,
``jobs.run_agent``, ``jobs.run_publish`` and ``sandboxes.quota`` end runs with)."""

BUDGET_STOP = "the run's budget of %"


def _float(expression: Any) -> Any:
    return cast(expression.as_string(), Float)


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


async def _transitions(session: AsyncSession, out: _Families) -> None:
    previous, target = RunEvent.data["from"].as_string(), RunEvent.data["to"].as_string()
    seconds = _float(RunEvent.data["in_state_s"])
    timed = RunEvent.data["in_state_s"].as_string().is_not(None)
    columns = [
        func.count(),
        func.sum(case((timed, 1), else_=0)),
        func.coalesce(func.sum(case((timed, seconds), else_=0.0)), 0.0),
        *(func.sum(case((and_(timed, seconds <= bound), 1), else_=0)) for bound in STATE_BUCKETS),
    ]
    rows = (
        await session.execute(
            select(previous.label("source"), target.label("dest"), *columns)
            .where(RunEvent.kind == "status")
            .group_by("source", "dest")
        )
    ).all()
    transitions = CounterMetricFamily(
        "bosun_run_transitions", "Run state changes, by from and to state.", labels=["from", "to"]
    )
    durations: dict[str, list[float]] = defaultdict(lambda: [0.0] * (len(STATE_BUCKETS) + 2))
    starts = 0.0
    for row in rows:
        source, dest, total, timed_count, seconds_sum, *buckets = row
        transitions.add_metric([str(source), str(dest)], float(total))
        if source == RunState.PREPARING.value and dest == RunState.RUNNING.value:
            starts += float(total)
        acc = durations[str(source)]
        for i, n in enumerate(buckets):
            acc[i] += float(n or 0)
        acc[-2] += float(timed_count or 0)
        acc[-1] += float(seconds_sum or 0)
    out.items.append(transitions)
    histogram = HistogramMetricFamily(
        "bosun_run_state_duration_seconds",
        "Time runs spent in a state before leaving it, by that state (queued: the wait to start).",
        labels=["state"],
    )
    for state, acc in sorted(durations.items()):
        buckets = [(_le(b), acc[i]) for i, b in enumerate(STATE_BUCKETS)]
        buckets.append(("+Inf", acc[-2]))
        histogram.add_metric([state], buckets, acc[-1])
    out.items.append(histogram)
    out.counter(
        "bosun_sandbox_starts",
        "Sandboxes started with the repository checked out (runs that went from preparing "
        "to running).",
        [],
        [(starts,)],
    )


async def _gates(session: AsyncSession, out: _Families) -> None:
    name = RunEvent.data["name"].as_string()
    passed = RunEvent.data["passed"].as_string()
    timed_out = RunEvent.data["timed_out"].as_string()
    rows = await session.execute(
        select(name.label("gate"), passed.label("ok"), timed_out.label("late"), func.count())
        .where(RunEvent.kind == "gate_result")
        .group_by("gate", "ok", "late")
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for gate, ok, late, n in rows.all():
        result = "passed" if _true(ok) else "timed_out" if _true(late) else "failed"
        counts[(str(gate), result)] += int(n)
    out.counter(
        "bosun_gate_results",
        "Gate runs by gate name and result (passed, failed, timed_out).",
        ["gate", "result"],
        ((gate, result, n) for (gate, result), n in sorted(counts.items())),
    )


async def _costs(session: AsyncSession, out: _Families) -> None:
    data = RunEvent.data
    model = func.coalesce(data["model"].as_string(), "unknown")
    rows = (
        await session.execute(
            select(
                model.label("model"),
                func.count(),
                *(
                    func.coalesce(func.sum(_float(data[key])), 0)
                    for key in (
                        "tokens_in",
                        "tokens_out",
                        "cache_read_tokens",
                        "cache_write_tokens",
                        "usd",
                    )
                ),
            )
            .where(RunEvent.kind == "cost", data["source"].as_string() == "gateway")
            .group_by("model")
        )
    ).all()
    out.counter(
        "bosun_gateway_requests",
        "Model requests the gateway metered, by model.",
        ["model"],
        ((m, n) for m, n, *_ in rows),
    )
    tokens = CounterMetricFamily(
        "bosun_gateway_tokens",
        "Tokens through the model gateway, by model and kind (input includes cache reads "
        "and writes; cache_read and cache_write are those parts).",
        labels=["model", "kind"],
    )
    for m, _, tin, tout, cread, cwrite, _usd in rows:
        for kind, value in (
            ("input", tin),
            ("output", tout),
            ("cache_read", cread),
            ("cache_write", cwrite),
        ):
            tokens.add_metric([str(m), kind], float(value or 0))
    out.items.append(tokens)
    out.counter(
        "bosun_gateway_cost_usd",
        "Cost of model requests through the gateway in US dollars, by model.",
        ["model"],
        ((m, usd) for m, *_, usd in rows),
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


async def collect(services: Services) -> list[Metric]:
    """Every shared metric, read now."""
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
            for part in (_transitions, _deliveries, _gates, _costs, _commands, _notifications):
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
        self._lock = asyncio.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    async def families(self) -> list[Metric]:
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            families = await collect(self.services)
            self._cached = (time.monotonic(), families)
            return families


def _le(bound: float) -> str:
    return f"{float(bound)}"


def _true(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
