"""A burst of labelled issues through Bosun as deployed — three ``bosun worker`` processes, a
web process, PostgreSQL, Redis, Docker and the GitHub emulator: every run starts exactly once,
a repository's runs are let in in the order they were created, and every queue position its
status comment showed while the runs went through was true (tests/queue_audit.py).

bench/fleet.py runs the same with 100 runs and reports the numbers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from bench.live_log import deployed, runs_of
from tests.conftest import _pg_admin
from tests.queue_audit import STARTED_MARK, CommentSampler, RunFacts, Sample, audit, run_facts
from tests.services import POSTGRES_URL, REDIS_URL, docker_client, missing

RUNS = 12
AGENT = ["sh", "-c", f"echo {STARTED_MARK}; sleep 1; exit 3"]
QUEUE_POLL = 1.0
LAG = QUEUE_POLL + 4.0
"""A comment may trail its line by one poll plus the edit on GitHub (seconds on a loaded host)."""
ENDED = {"failed", "review_ready", "cancelled", "timed_out", "rejected", "merged"}


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        await _pg_admin(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # noqa: BLE001 -- any failure means PostgreSQL is unusable
        missing("PostgreSQL", f"{POSTGRES_URL}: {exc} (run scripts/bootstrap.sh test)")
    url = make_url(POSTGRES_URL).update_query_dict({"search_path": schema})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        await _pg_admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.docker
def test_burst_across_three_workers_runs_once_in_order_with_true_positions(pg_url: str) -> None:
    docker_client().close()
    with deployed(
        runs=RUNS,
        webs=1,
        command=AGENT,
        redis=REDIS_URL,
        database_url=pg_url,
        workers=3,
        repo_cap=2,
        worker={"max_concurrent_runs": 8, "queue_poll_seconds": QUEUE_POLL},
    ) as bosun:
        sampler = CommentSampler(bosun.emulator, bosun.repo)
        sampler.start()
        try:
            bosun.label_issues(RUNS)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                states = [state for _, state in runs_of(bosun.database_url)]
                if len(states) == RUNS and ENDED.issuperset(states):
                    break
                time.sleep(0.5)
        finally:
            sampler.stop()
        facts = run_facts(bosun.database_url)
    report = audit(facts, sampler.samples, lag=LAG)
    assert report["runs"] == RUNS, report
    assert report["ended"] == ["failed"], report  # the agent exits 3 after its mark
    assert report["not_exactly_once"] == [], report
    assert report["admitted_out_of_order"] == [], report
    # With two slots for twelve runs, most runs waited and said so.
    assert report["positions_checked"] >= RUNS, (report, sampler.reads)
    assert report["positions_wrong"] == [], report


def test_the_audit_catches_a_wrong_position_a_queue_jump_and_a_second_start() -> None:
    """The checks above can fail: a hand-made history with each fault."""
    runs = [
        RunFacts("a", 1, created=0.0, state="failed", admitted=[1.0], started_marks=1),
        RunFacts("b", 2, created=0.1, state="failed", admitted=[9.0], started_marks=1),
        RunFacts("c", 3, created=0.2, state="failed", admitted=[5.0], started_marks=2),
    ]
    samples = [
        Sample(2.0, 2, 1, 2, "octo/hello"),  # right: b heads the line, c behind it
        Sample(2.0, 3, 2, 2, "octo/hello"),
        Sample(4.0, 3, 1, 2, "octo/hello"),  # wrong: b is still ahead of c
    ]
    report = audit(runs, samples, lag=0.5)
    assert report["positions_checked"] == 3
    assert [w["issue"] for w in report["positions_wrong"]] == [3]
    assert report["admitted_out_of_order"] == [(2, 3)]  # c let in while b surely waited
    assert report["not_exactly_once"] == [3]
