"""Every benchmark in bench/ still runs: each one's ``--smoke`` mode (one short round) as a
child process, as a reader would start it, on the real services it measures.

A refactor that breaks a benchmark fails here; the numbers themselves are never asserted
(speed goals live in bench/ and docs/benchmarks.md, not in timed tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import docker_client, missing, tcp_open

ROOT = Path(__file__).resolve().parents[1]
PROBOT = ROOT / "bench" / "probot" / "node_modules" / "probot"
CHROMIUM = Path("/usr/bin/chromium")


def _needs_redis() -> None:
    if not tcp_open("127.0.0.1", 6379):
        missing("Redis on 127.0.0.1:6379", "run scripts/bootstrap.sh test")


def _needs_postgres() -> None:
    if not tcp_open("127.0.0.1", 5432):
        missing("PostgreSQL on 127.0.0.1:5432", "run scripts/bootstrap.sh test")


def _needs_docker() -> None:
    client = docker_client()
    try:
        client.images.get("bosun-agent:latest")
    except Exception:  # noqa: BLE001 -- docker-py raises ImageNotFound or an API error
        missing("the agent image bosun-agent:latest", "build it: sandboxes/images/build.sh")


def _needs_chromium() -> None:
    if not CHROMIUM.exists():
        missing("Chromium", "run scripts/bootstrap.sh test")


def _needs_probot() -> None:
    if shutil.which("node") is None or not PROBOT.is_dir():
        missing("Probot 14 in bench/probot", "run scripts/bootstrap.sh test (npm ci there)")


def _needs_wrk() -> None:
    if shutil.which("wrk") is None:
        missing("wrk", "run scripts/bootstrap.sh test (apt-get install wrk)")


# (benchmark module, extra arguments, what it needs, a key its result file must hold)
BENCHMARKS = {
    "webhook_ack": ("bench.webhook_ack", [], [_needs_redis], "integrity"),
    # Probot 14 and Bosun side by side under wrk (the receivers webhook_ack --probot and
    # --postgres use are the same classes, bench/servers.py).
    "intake_ab": ("bench.intake_ab", [], [_needs_redis, _needs_probot, _needs_wrk], "integrity"),
    "ingest_parts": ("bench.ingest_parts", [], [_needs_redis], None),
    "dashboard": ("bench.dashboard", [], [_needs_redis, _needs_chromium], "run_page"),
    "dashboard_log": (
        "bench.dashboard_log",
        [],
        [_needs_redis, _needs_docker, _needs_chromium],
        "delay_to_dom",
    ),
    "live_log": ("bench.live_log", [], [_needs_redis, _needs_docker], "cpu_cores"),
    "queue_pickup": ("bench.queue_pickup", [], [_needs_redis], "pickup_ms"),
    # Its queue part is tests/test_fleet_queue.py's code with more runs.
    "fleet": ("bench.fleet", ["--skip", "queue"], [_needs_redis, _needs_docker], "eight_at_once"),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_smoke_round(name: str, tmp_path: Path) -> None:
    module, extra, needs, key = BENCHMARKS[name]
    for need in needs:
        need()
    out = tmp_path / f"{name}.json"
    argv = [sys.executable, "-m", module, "--smoke", *extra]
    if key is not None:
        argv += ["--out", str(out)]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = f"{' '.join(argv[1:])}: exit {done.returncode}\n{done.stdout[-4000:]}"
    report += f"\n{done.stderr[-4000:]}"
    assert done.returncode == 0, report
    if key is not None:
        result = json.loads(out.read_text())
        assert result.get(key), f"{out} has no {key!r}: {sorted(result)}"
        assert result.get("load_average_at_start"), "every result records the host's load"
    else:
        assert "wall ms" in done.stdout, report


def test_profile_summary_reads_the_committed_profile() -> None:
    profile = ROOT / "bench" / "results" / "webhook_ack.pyspy.txt.gz"
    done = subprocess.run(
        [sys.executable, "-m", "bench.profile_summary", str(profile), "--top", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "litestar" in done.stdout, done.stdout
