"""``bench.label_to_agent`` still runs: its ``--smoke`` round (the cold run and one warm run,
with and without the warm pool) as a child process, as a reader would start it, on Redis, the
local Docker engine and the GitHub emulator.

A refactor that breaks the benchmark — a probe that no longer fires, a stage the product stopped
recording — fails here. Its numbers are never asserted (speed goals live in bench/ and
docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security_agents import require_agent_image
from tests.services import REDIS_URL

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pool", [0, 1])
def test_label_to_agent_smoke_round_measures_every_stage(pool: int, tmp_path: Path) -> None:
    require_agent_image()
    out = tmp_path / "label_to_agent.json"
    argv = [
        sys.executable, "-m", "bench.label_to_agent", "--smoke", "--pool-size", str(pool),
        "--redis", REDIS_URL, "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = f"exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, report
    result = json.loads(out.read_text())
    assert result["unmeasured"] == [], report
    assert result["load_average_at_start"], "every result records the host's load"
    assert result["pool_size"] == pool
    samples = result["samples"]
    assert len(samples) == 2 and all(s["state"] == "review_ready" for s in samples), samples
    total = samples[1]["stages"]["received_to_agent"]
    assert math.isfinite(total) and total > 0
    # The product's own record of the run (manifest timings) is where the prepare stages come
    # from, so a production run shows the same breakdown.
    assert {"mirror_fetch", "checkout", "sandbox_start", "prepare", "to_agent"} <= set(
        samples[1]["timings"]
    )
    assert samples[1]["sandbox"] == ("pooled" if pool else "fresh"), samples[1]
