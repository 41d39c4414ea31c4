"""``/metrics`` on a real Bosun (web + worker, the GitHub emulator): the exposition parses, its
counters and gauges move as a run goes through its states, a scrape needs the token, and the
worker's own port shows what only that worker knows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import EDIT_AGENT, PROFILES, BosunStack, StackPlace, free_port, open_stack

pytestmark = pytest.mark.docker

TOKEN = "scrape-token-for-the-test"
# An agent that stays in `running` long enough to be seen there, then edits like the default.
PAUSE_AGENT = "import time; time.sleep(6)\n" + EDIT_AGENT

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series carrying ``labels``."""
    return sum(
        v for (n, series), v in samples.items() if n == name and set(labels.items()) <= set(series)
    )


@pytest.fixture
def metered(place: StackPlace) -> Iterator[tuple[BosunStack, int]]:
    worker_port = free_port()
    profiles: dict[str, Any] = {
        **PROFILES,
        "pause": {"runner": "script", "command": ["python3", "-c", PAUSE_AGENT]},
    }
    with open_stack(
        *place,
        profiles=profiles,
        metrics={"token": TOKEN, "cache_seconds": 0, "worker_port": worker_port},
    ) as stack:
        yield stack, worker_port


def test_metrics_follow_a_run_through_its_states(metered: tuple[BosunStack, int]) -> None:
    stack, worker_port = metered
    # Protected: no token, a wrong one, another scheme.
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = httpx.get(f"{stack.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "bosun_runs" not in refused.text

    before = scrape(stack.url)
    assert value(before, "bosun_metrics_source_up", source="database") == 1
    assert value(before, "bosun_metrics_source_up", source="redis") == 1
    assert total(before, "bosun_runs") == 0
    rejected = value(before, "bosun_webhook_rejected_total", reason="signature")

    # A forged delivery is refused and counted by the process that refused it.
    forged = httpx.post(
        f"{stack.url}/webhooks/github",
        content=b"{}",
        headers={
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": "forged",
            "X-Hub-Signature-256": "sha256=00",
        },
        timeout=10,
    )
    assert forged.status_code == 401

    number = stack.emulator.create_issue(stack.repo, "Metered", "Please change it.", "alice")
    stack.label(number, "bosun:pause")

    def running() -> Samples | None:
        now = scrape(stack.url)
        return now if value(now, "bosun_runs", state="running", profile="pause") == 1 else None

    during = stack.wait_for(running, 60, "the run to be seen running")
    assert value(during, "bosun_webhook_rejected_total", reason="signature") == rejected + 1
    assert value(during, "bosun_webhook_deliveries_received_total", event="issues") >= 2
    assert value(during, "bosun_capacity_in_use") == 1
    assert value(during, "bosun_sandbox_starts_total") == 1
    assert (
        value(during, "bosun_run_transitions_total", **{"from": "queued", "to": "preparing"}) == 1
    )
    assert value(during, "bosun_run_state_duration_seconds_count", state="queued") == 1
    assert value(during, "bosun_run_state_duration_seconds_count", state="running") == 0

    stack.wait_run({"review_ready"}, 120)

    def settled() -> Samples | None:  # the slot is given back once the run's job ends
        now = scrape(stack.url)
        return now if value(now, "bosun_capacity_in_use") == 0 else None

    after = stack.wait_for(settled, 30, "the run's slot to be given back")
    assert value(after, "bosun_runs", state="running", profile="pause") == 0
    assert value(after, "bosun_runs", state="review_ready", profile="pause") == 1
    for source, dest in (("running", "gates"), ("gates", "review_ready")):
        assert value(after, "bosun_run_transitions_total", **{"from": source, "to": dest}) == 1
    assert value(after, "bosun_run_state_duration_seconds_count", state="running") == 1
    assert value(after, "bosun_run_state_duration_seconds_sum", state="running") >= 6
    bucket = {"state": "running", "le": "1.0"}
    assert value(after, "bosun_run_state_duration_seconds_bucket", **bucket) == 0
    for gauge in ("bosun_queue_jobs", "bosun_queue_due_jobs", "bosun_queue_oldest_due_seconds"):
        assert (gauge, ()) in after  # the worker keeps taking GitHub's deliveries meanwhile
    # Web and worker share this test's process: its GitHub calls and pickups are counted here.
    assert total(after, "bosun_github_requests_total") > total(
        before, "bosun_github_requests_total"
    )
    assert total(after, "bosun_job_pickup_seconds_count", kind="run") >= 1

    # The worker's own port: the same protection, its process-local metrics only.
    worker_url = f"http://127.0.0.1:{worker_port}"
    assert httpx.get(f"{worker_url}/metrics", timeout=10).status_code == 401
    own = scrape(worker_url)
    assert total(own, "bosun_job_pickup_seconds_count", kind="delivery") >= 1
    assert total(own, "bosun_github_requests_total", method="POST") >= 1
    assert 0 < value(own, "bosun_github_rate_limit_remaining", resource="core") < 5000
    assert value(own, "bosun_github_rate_limit_reset_timestamp_seconds", resource="core") > 0
    assert not any(name == "bosun_runs" for name, _ in own)
