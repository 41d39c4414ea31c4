"""Metrics from the append-only run event log: transitions and time in each state (``status``
events), gate results (``gate_result``) and the gateway's tokens and cost (``cost``).

Reading the whole log at every scrape would grow with Bosun's history, so each web process
keeps running totals (``EventTotals``): events up to a *settled* id are aggregated once and
added up; only the events after it are read again at each scrape. An id is settled once it was
the log's highest id at least ``SETTLE_SECONDS`` ago: a transaction still uncommitted then
(which could commit an event with a lower id later, on PostgreSQL) would have to have been
open that long, and Bosun's event writes are short transactions.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from bot.db.models import RunEvent
from bot.domain.states import RunState

SETTLE_SECONDS = 300.0

STATE_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Upper bounds (seconds) of the time-in-state histogram."""

COST_FIELDS = ("tokens_in", "tokens_out", "cache_read_tokens", "cache_write_tokens", "usd")


def _float(expression: Any) -> Any:
    return cast(expression.as_string(), Float)


@dataclass
class EventCounts:
    """Aggregates of a stretch of the event log; stretches add up."""

    transitions: dict[tuple[str, str, int], list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0.0, 0.0])
    )
    """(from, to, bucket index or -1 when untimed) → [count, seconds]."""
    gates: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    """(gate, passed | failed | timed_out) → count."""
    costs: dict[str, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0.0] * (1 + len(COST_FIELDS)))
    )
    """model → [requests, *COST_FIELDS sums]."""

    def add(self, other: EventCounts) -> None:
        for key, (count, seconds) in other.transitions.items():
            self.transitions[key][0] += count
            self.transitions[key][1] += seconds
        for gate, count in other.gates.items():
            self.gates[gate] += count
        for model, sums in other.costs.items():
            mine = self.costs[model]
            for i, value in enumerate(sums):
                mine[i] += value


async def read_counts(session: AsyncSession, after_id: int, upto_id: int | None) -> EventCounts:
    """The aggregates of the events with ``after_id < id <= upto_id`` (no upper bound: None)."""
    window: list[ColumnElement[bool]] = [RunEvent.id > after_id]
    if upto_id is not None:
        window.append(RunEvent.id <= upto_id)
    counts = EventCounts()
    data = RunEvent.data

    seconds = _float(data["in_state_s"])
    bucket = case(  # one CASE per row: the first bucket the time fits, -1 when untimed
        (data["in_state_s"].as_string().is_(None), -1),
        *((seconds <= bound, i) for i, bound in enumerate(STATE_BUCKETS)),
        else_=len(STATE_BUCKETS),
    )
    rows = await session.execute(
        select(
            data["from"].as_string().label("source"),
            data["to"].as_string().label("dest"),
            bucket.label("bucket"),
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
        )
        .where(RunEvent.kind == "status", *window)
        .group_by("source", "dest", "bucket")
    )
    for source, dest, index, count, total in rows.all():
        counts.transitions[(str(source), str(dest), int(index))] = [float(count), float(total)]

    rows = await session.execute(
        select(
            data["name"].as_string().label("gate"),
            data["passed"].as_string().label("ok"),
            data["timed_out"].as_string().label("late"),
            func.count(),
        )
        .where(RunEvent.kind == "gate_result", *window)
        .group_by("gate", "ok", "late")
    )
    for gate, ok, late, count in rows.all():
        result = "passed" if _true(ok) else "timed_out" if _true(late) else "failed"
        counts.gates[(str(gate), result)] += float(count)

    model = func.coalesce(data["model"].as_string(), "unknown")
    rows = await session.execute(
        select(
            model.label("model"),
            func.count(),
            *(func.coalesce(func.sum(_float(data[key])), 0) for key in COST_FIELDS),
        )
        .where(RunEvent.kind == "cost", data["source"].as_string() == "gateway", *window)
        .group_by("model")
    )
    for name, *sums in rows.all():
        counts.costs[str(name)] = [float(v or 0) for v in sums]
    return counts


class EventTotals:
    """Running totals of one process: settled stretches read once, the rest at each scrape."""

    def __init__(self, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settle_seconds = settle_seconds
        self.settled = EventCounts()
        self.settled_id = 0
        self._seen: deque[tuple[float, int]] = deque()

    async def read(self, session: AsyncSession) -> EventCounts:
        now = time.monotonic()
        highest = (await session.execute(select(func.max(RunEvent.id)))).scalar_one_or_none()
        self._seen.append((now, int(highest or 0)))
        settle_to = self.settled_id
        while self._seen and self._seen[0][0] <= now - self.settle_seconds:
            settle_to = max(settle_to, self._seen.popleft()[1])
        if settle_to > self.settled_id:
            self.settled.add(await read_counts(session, self.settled_id, settle_to))
            self.settled_id = settle_to
        total = EventCounts()
        total.add(self.settled)
        total.add(await read_counts(session, self.settled_id, None))
        return total


def families(counts: EventCounts) -> Iterable[Metric]:
    transitions: dict[tuple[str, str], float] = defaultdict(float)
    per_state: dict[str, list[float]] = defaultdict(lambda: [0.0] * (len(STATE_BUCKETS) + 3))
    for (source, dest, index), (count, seconds) in counts.transitions.items():
        transitions[(source, dest)] += count
        if index >= 0:  # a count per bucket (the last: past every bound), then count, sum
            acc = per_state[source]
            acc[index] += count
            acc[-2] += count
            acc[-1] += seconds
    family = CounterMetricFamily(
        "bosun_run_transitions", "Run state changes, by from and to state.", labels=["from", "to"]
    )
    for (source, dest), count in sorted(transitions.items()):
        family.add_metric([source, dest], count)
    yield family

    histogram = HistogramMetricFamily(
        "bosun_run_state_duration_seconds",
        "Time runs spent in a state before leaving it, by that state (queued: the wait to start).",
        labels=["state"],
    )
    for state, acc in sorted(per_state.items()):
        cumulative, buckets = 0.0, []
        for i, bound in enumerate(STATE_BUCKETS):
            cumulative += acc[i]
            buckets.append((str(float(bound)), cumulative))
        buckets.append(("+Inf", acc[-2]))
        histogram.add_metric([state], buckets, acc[-1])
    yield histogram

    starts = CounterMetricFamily(
        "bosun_sandbox_starts",
        "Sandboxes started with the repository checked out (runs that went from preparing to "
        "running).",
    )
    starts.add_metric([], transitions.get((RunState.PREPARING.value, RunState.RUNNING.value), 0))
    yield starts

    gates = CounterMetricFamily(
        "bosun_gate_results",
        "Gate runs by gate name and result (passed, failed, timed_out).",
        labels=["gate", "result"],
    )
    for (gate, result), count in sorted(counts.gates.items()):
        gates.add_metric([gate, result], count)
    yield gates

    requests = CounterMetricFamily(
        "bosun_gateway_requests", "Model requests the gateway metered, by model.", labels=["model"]
    )
    tokens = CounterMetricFamily(
        "bosun_gateway_tokens",
        "Tokens through the model gateway, by model and kind (input includes cache reads and "
        "writes; cache_read and cache_write are those parts).",
        labels=["model", "kind"],
    )
    cost = CounterMetricFamily(
        "bosun_gateway_cost_usd",
        "Cost of model requests through the gateway in US dollars, by model.",
        labels=["model"],
    )
    for model, (count, tin, tout, cread, cwrite, usd) in sorted(counts.costs.items()):
        requests.add_metric([model], count)
        for kind, value in (
            ("input", tin),
            ("output", tout),
            ("cache_read", cread),
            ("cache_write", cwrite),
        ):
            tokens.add_metric([model, kind], value)
        cost.add_metric([model], usd)
    yield from (requests, tokens, cost)


def _true(value: Any) -> bool:
    return str(value).lower() in ("1", "true")
