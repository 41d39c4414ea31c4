"""The shared counts of ``/metrics`` (bot.metrics.shared), read from a real database (SQLite and
PostgreSQL: the JSON aggregates differ between them) and the test Redis: seeded runs, events,
deliveries and commands come out as the metrics docs/operations.md lists, and protection is
decided as documented."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from pydantic import SecretStr

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import CommandAudit, Delivery, Repository, Run, Task
from bot.db.runlog import append_event, transition
from bot.domain.states import DeliveryStatus, RunState
from bot.metrics import shared
from bot.metrics.events import EventCounts, EventTotals, read_counts
from bot.metrics.settings import MetricsSettings
from bot.metrics.web import _Fixed, refusal
from bot.services import Services
from bot.settings import Settings
from bot.web.app import create_app
from jobs.admission.capacity import Capacity
from jobs.run.agent import SANDBOX_LOST
from sandboxes.quota import WorkspaceQuota
from tests.conftest import make_settings

S = RunState


def samples(families: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def seed(services: Services) -> None:
    old = datetime.now(UTC) - timedelta(minutes=10)
    async with services.sessions.begin() as session:
        repo = Repository(full_name="octo/hello")
        session.add(repo)
        await session.flush()
        task = Task(repository_id=repo.id, issue_number=1)
        session.add(task)
        await session.flush()
        runs = {
            "r-ok": Run(id="r-ok", task_id=task.id, repository_id=repo.id, profile="default"),
            "r-lost": Run(id="r-lost", task_id=task.id, repository_id=repo.id, profile="fast"),
            "r-budget": Run(id="r-budget", task_id=task.id, repository_id=repo.id),
            "r-wait": Run(id="r-wait", task_id=task.id, repository_id=repo.id, created_at=old),
        }
        session.add_all(runs.values())
        await session.flush()
        for state in (S.PREPARING, S.RUNNING, S.GATES, S.REVIEW_READY):
            await transition(session, runs["r-ok"], state, actor="bosun")
        await transition(session, runs["r-lost"], S.PREPARING, actor="bosun")
        await transition(session, runs["r-lost"], S.RUNNING, actor="bosun")
        await transition(session, runs["r-lost"], S.FAILED, actor="bosun", reason=SANDBOX_LOST)
        await transition(session, runs["r-budget"], S.PREPARING, actor="bosun")
        await transition(
            session,
            runs["r-budget"],
            S.FAILED,
            actor="bosun",
            reason="the run's budget of $1.00 is spent ($1.02); the agent was stopped",
        )
        gates = [
            {"name": "tests", "passed": True, "timed_out": False},
            {"name": "tests", "passed": False, "timed_out": False},
            {"name": "lint", "passed": False, "timed_out": True},
        ]
        for gate in gates:
            await append_event(session, "r-ok", "gate_result", gate)
        for usd, model in ((0.25, "claude-sonnet-4"), (0.5, "claude-sonnet-4"), (0.1, "gpt-5")):
            cost = {
                "source": "gateway",
                "model": model,
                "tokens_in": 1000,
                "tokens_out": 200,
                "cache_read_tokens": 600,
                "cache_write_tokens": 0,
                "usd": usd,
            }
            await append_event(session, "r-ok", "cost", cost)
        await append_event(session, "r-ok", "cost", {"source": "budget", "budget_usd": 5})
        session.add_all(
            [
                Delivery(id="d1", event="issues", payload="{}", redeliveries=2),
                Delivery(id="d2", event="issues", payload="{}", status=DeliveryStatus.PROCESSED),
                Delivery(id="d3", event="issue_comment", payload="{}"),
                CommandAudit(
                    repository="octo/hello",
                    actor="alice",
                    command="approve",
                    source="comment",
                    outcome="accepted",
                ),
                CommandAudit(
                    repository="octo/hello",
                    actor="mallory",
                    command="approve",
                    source="comment",
                    outcome="refused",
                ),
            ]
        )


async def test_shared_counts_from_the_database_and_redis(
    db_url: str, tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    engine = create_engine(db_url)
    await upgrade(engine)
    await engine.dispose()
    settings = make_settings(tmp_path, db_url, redis_url, redis_namespace)
    services = Services.build(settings)
    try:
        await seed(services)
        queue = settings.redis.queue_name
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        await services.redis.zadd(queue, {"due-1": now_ms - 4000, "later": now_ms + 600_000})
        held = f"{redis_namespace}:capacity:global:held"
        await services.redis.zadd(held, {"r-ok": now_ms + 60_000, "gone": now_ms - 1000})
        alive = f"{redis_namespace}:capacity:global:alive"
        await services.redis.zadd(alive, {"r-wait": now_ms + 30_000, "lapsed": now_ms - 1})
        found = samples(await shared.collect(services))
    finally:
        await services.close()

    assert value(found, "bosun_metrics_source_up", source="database") == 1
    assert value(found, "bosun_metrics_source_up", source="redis") == 1
    # Deliveries: stored by status and event; redeliveries counted as duplicates.
    assert value(found, "bosun_webhook_deliveries", status="received") == 2
    assert value(found, "bosun_webhook_deliveries", status="processed") == 1
    assert value(found, "bosun_webhook_deliveries_received_total", event="issues") == 2
    assert value(found, "bosun_webhook_deliveries_duplicate_total", event="issues") == 2
    # Runs by state and profile; the oldest queued run's wait.
    assert value(found, "bosun_runs", state="review_ready", profile="default") == 1
    assert value(found, "bosun_runs", state="failed", profile="fast") == 1
    assert value(found, "bosun_runs", state="queued", profile="default") == 1
    assert 590 < value(found, "bosun_runs_queued_oldest_seconds") < 900
    # Transitions, time in each state, sandbox starts and failures, budget stops.
    assert value(found, "bosun_run_transitions_total", **{"from": "queued", "to": "preparing"}) == 3
    assert value(found, "bosun_sandbox_starts_total") == 2
    assert value(found, "bosun_run_state_duration_seconds_count", state="queued") == 3
    assert value(found, "bosun_run_state_duration_seconds_bucket", state="running", le="1.0") == 2
    assert value(found, "bosun_run_state_duration_seconds_count", state="review_ready") == 0
    assert value(found, "bosun_sandbox_failures_total", reason="lost") == 1
    assert value(found, "bosun_sandbox_failures_total", reason="start") == 0
    assert value(found, "bosun_budget_stops_total") == 1
    # Gates, gateway cost by model (budget events are not requests), commands.
    assert value(found, "bosun_gate_results_total", gate="tests", result="passed") == 1
    assert value(found, "bosun_gate_results_total", gate="tests", result="failed") == 1
    assert value(found, "bosun_gate_results_total", gate="lint", result="timed_out") == 1
    assert value(found, "bosun_gateway_requests_total", model="claude-sonnet-4") == 2
    assert value(found, "bosun_gateway_cost_usd_total", model="claude-sonnet-4") == 0.75
    assert value(found, "bosun_gateway_tokens_total", model="gpt-5", kind="output") == 200
    assert value(found, "bosun_gateway_tokens_total", model="gpt-5", kind="cache_read") == 600
    labels = {"command": "approve", "source": "comment"}
    assert value(found, "bosun_commands_total", outcome="refused", **labels) == 1
    # Redis: the queue and the installation's slots.
    assert value(found, "bosun_queue_jobs") == 2
    assert value(found, "bosun_queue_due_jobs") == 1
    assert 3.5 < value(found, "bosun_queue_oldest_due_seconds") < 60
    assert value(found, "bosun_capacity_in_use") == 1
    assert value(found, "bosun_capacity_limit") == settings.worker.max_concurrent_runs
    assert value(found, "bosun_runs_waiting") == 1


def test_capacity_keys_are_the_ones_admission_uses() -> None:
    capacity = Capacity.__new__(Capacity)
    capacity.namespace = "ns"
    assert capacity._keys(7)[:3] == [f"ns:capacity:global:{part}" for part in shared.CAPACITY_PARTS]


@pytest.mark.parametrize("public", [False, True])
async def test_loopback_only_unless_public(settings: Settings, public: bool) -> None:
    """Without a token, a client elsewhere is refused unless metrics are public; a loopback
    client is answered, with the shared and the process's metrics."""
    settings = settings.model_copy(update={"metrics": MetricsSettings(public=public)})
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(settings)
    app = create_app(settings, services)
    app.state.services = services  # what the lifespan does, without its background tasks
    answers = {}
    try:
        for host in ("10.0.0.9", "127.0.0.1"):
            transport = httpx.ASGITransport(app, client=(host, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://bosun") as http:
                answers[host] = await http.get("/metrics")
    finally:
        await services.close()
    assert answers["10.0.0.9"].status_code == (200 if public else 403)
    assert answers["127.0.0.1"].status_code == 200
    names = {f.name for f in text_string_to_metric_families(answers["127.0.0.1"].text)}
    assert {"bosun_runs", "bosun_webhook_rejected", "bosun_metrics_source_up"} <= names


async def test_a_source_that_cannot_be_read_is_reported_not_fatal(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    missing_db = f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}"
    settings = make_settings(tmp_path, missing_db, redis_url, redis_namespace)
    services = Services.build(settings)
    try:
        found = samples(await shared.collect(services))
    finally:
        await services.close()
    assert value(found, "bosun_metrics_source_up", source="database") == 0
    assert value(found, "bosun_metrics_source_up", source="redis") == 1
    assert not any(name == "bosun_runs" for name, _ in found)


def rounded(counts: EventCounts) -> dict[str, Any]:
    """The counts with sums rounded (added up in another order, floats differ in the last bit)."""
    return {
        name: {k: [round(x, 6) for x in v] if isinstance(v, list) else round(v, 6)
               for k, v in getattr(counts, name).items()}
        for name in ("transitions", "gates", "costs")
    }  # fmt: skip


async def test_running_totals_equal_a_full_read(
    db_url: str, tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    """Settled stretches are read once and added up; the sum is what reading the whole log
    says, however the scrapes fall."""
    engine = create_engine(db_url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(make_settings(tmp_path, db_url, redis_url, redis_namespace))
    totals = EventTotals(settle_seconds=0)
    try:
        await seed(services)
        for round_ in range(3):
            async with services.sessions() as session:
                running = await totals.read(session)
                whole = await read_counts(session, 0, None)
            assert rounded(running) == rounded(whole), round_
            async with services.sessions.begin() as session:
                await append_event(
                    session, "r-ok", "gate_result", {"name": "tests", "passed": True}
                )
                run = await session.get(Run, "r-wait")
                assert run is not None
                if run.state is S.QUEUED:
                    await transition(session, run, S.CANCELLED, actor="bosun")
        assert totals.settled_id > 0
        assert totals.settled.gates[("tests", "passed")] == 3
    finally:
        await services.close()


def test_failure_sentences_are_the_ones_runs_end_with() -> None:
    """The classifier's patterns match the sentences the pipeline writes."""

    async def ignore(_quota: WorkspaceQuota) -> None:
        return None

    quota = WorkspaceQuota(Path("/nonexistent"), 2_000_000_000, ignore)
    quota.exceeded = 2_100_000_000
    sentences = {
        "lost": SANDBOX_LOST,
        "workspace_limit": quota.reason(),
        "start": "the sandbox did not start: no such image",
        "out_of_memory": "the agent ran out of memory and was killed (sandbox memory limit)",
    }
    cache = WorkspaceQuota(
        Path("/nonexistent"),
        10,
        ignore,
        name="the dependency cache (uv)",
        setting="caches.max_bytes_per_repository",
    )
    cache.exceeded = 20
    pairs = [*sentences.items(), ("workspace_limit", cache.reason())]
    for label, sentence in pairs:
        matched = [lbl for pattern, lbl in shared.SANDBOX_FAILURES if _like(sentence, pattern)]
        assert matched == [label], sentence


def _like(text: str, pattern: str) -> bool:
    return text.startswith(pattern.rstrip("%"))


@pytest.mark.parametrize(
    ("token", "public", "authorization", "client", "status"),
    [
        (None, False, "", "127.0.0.1", None),
        (None, False, "", "::1", None),
        (None, False, "", "10.1.2.3", 403),
        (None, False, "", None, 403),
        (None, True, "", "10.1.2.3", None),
        ("t0ken-of-some-length", False, "", "127.0.0.1", 401),
        ("t0ken-of-some-length", False, "Bearer wrong", "127.0.0.1", 401),
        ("t0ken-of-some-length", False, "Bearer t0ken-of-some-length", "10.1.2.3", None),
    ],
)
def test_who_may_scrape(
    token: str | None, public: bool, authorization: str, client: str | None, status: int | None
) -> None:
    settings = MetricsSettings(token=SecretStr(token) if token else None, public=public)
    refused = refusal(settings, authorization, client)
    assert (refused.status_code if refused else None) == status
