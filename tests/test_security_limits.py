"""Resource limits hold against a hostile agent (issue 7, SPEC §6): fork bomb, memory bomb,
disk and output floods, an endless loop. Each runs as the agent through the pipeline; the test
checks the run's end state and reason, what the agent saw, and that the host is unharmed."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes.git import run_git
from tests.security_agents import (
    LOOP_TIMEOUT,
    OUTPUT_LIMIT,
    PIDS,
    SecurityStack,
    findings,
    log_lines,
    security_stack,
)

pytestmark = pytest.mark.docker

WORKSPACE_LIMIT = 96 << 20  # bytes the workspace may grow by while the agent runs


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    limits = tmp_path_factory.mktemp("security-limits")
    with security_stack(limits, workspace_limit_bytes=WORKSPACE_LIMIT) as running:
        yield running


def host_is_fine() -> None:
    done = subprocess.run(["sh", "-c", "echo ok"], capture_output=True, text=True, timeout=10)
    assert done.stdout == "ok\n"


def test_fork_bomb_is_held_by_the_pids_limit(sec: SecurityStack) -> None:
    started = time.monotonic()
    run = sec.probe("sec-forkbomb")
    elapsed = time.monotonic() - started
    found = findings(sec.stack, run["id"])
    assert found["fork_error"] == "EAGAIN"  # fork refused: the pids cgroup is full
    assert 0 < found["forked_before_refusal"] < PIDS
    # ...then a shell fork bomb churned until the run's time limit ended it
    assert run["state"] == "timed_out", run
    assert "time limit" in run["reason"] and "/resume" in run["reason"]
    assert elapsed < LOOP_TIMEOUT + 30
    assert run["branch"] in sec.branches()  # the work so far was kept
    sec.settled(run["id"])
    host_is_fine()


def test_memory_bomb_is_reported_as_out_of_memory(sec: SecurityStack) -> None:
    run = sec.probe("sec-memory")
    assert run["state"] == "failed", run
    assert "ran out of memory" in run["reason"]
    agent = [
        e["data"] for e in sec.stack.events(run["id"], "progress") if "oom_killed" in e["data"]
    ]
    assert agent and agent[-1]["oom_killed"] is True and agent[-1]["exit_code"] == 137
    allocated = [int(line.split()[1]) for line in log_lines(sec.stack, run["id"])
                 if line.startswith("allocated")]  # fmt: skip
    assert max(allocated) <= 256  # killed at the 256 MiB limit, long before 2 GiB
    assert run["branch"] not in sec.branches()
    sec.settled(run["id"])
    host_is_fine()


def test_disk_flood_fills_tmp_and_the_workspace_quota_stops_the_agent(
    sec: SecurityStack,
) -> None:
    started = time.monotonic()
    run = sec.probe("sec-disk", timeout=120)
    elapsed = time.monotonic() - started
    lines = log_lines(sec.stack, run["id"])
    tmp = next(line for line in lines if line.startswith("finding tmp = "))
    match = re.fullmatch(r"finding tmp = error:ENOSPC after (\d+) MiB", tmp)
    assert match and int(match.group(1)) <= 64, tmp  # the 64m tmpfs is full
    # the workspace quota (96 MiB in this stack) stopped the agent long before its 400 MiB
    assert run["state"] == "failed", run
    assert run["reason"].startswith("the workspace grew past 101 MB (disk limit"), run["reason"]
    assert "nothing was pushed" in run["reason"]
    written = [int(line.split()[1]) for line in lines if line.startswith("wrote ")]
    assert 96 <= max(written) < 400, written
    assert not any(line.startswith("FINDINGS ") for line in lines)  # it never got to finish
    errors = [e["data"]["line"] for e in sec.stack.events(run["id"], "error")]
    assert run["reason"] in errors
    assert run["branch"] not in sec.branches()
    assert elapsed < 60  # stopped, not left to sleep to its time limit
    sec.settled(run["id"])
    host_is_fine()


def test_large_binary_is_refused_by_the_file_size_limit(sec: SecurityStack) -> None:
    run = sec.probe("sec-binary")
    assert run["state"] == "failed", run
    assert "nothing was pushed" in run["reason"]
    message = "file of 8.4 MB; the limit is 5.0 MB per file (not read)"
    assert f"assets/model.bin (limits.max_file_bytes): {message}" in run["reason"]
    policy = [e["data"] for e in sec.stack.events(run["id"], "policy")]
    assert {"rule": "limits.max_file_bytes", "path": "assets/model.bin", "decision": "deny",
            "message": message} in policy  # fmt: skip
    # The host never read the file: it is in no artifact, only its size in the refusal.
    stats = json.loads(sec.stack.artifacts(run["id"])["diff-stats"].read_text())
    sizes = {f["path"]: f["size"] for f in stats}
    assert "assets/model.bin" not in sizes and sizes["notes.txt"] == 20
    assert run["branch"] not in sec.branches() and run["pr_number"] is None


def test_text_flood_is_refused_by_the_diff_size_limit(sec: SecurityStack) -> None:
    run = sec.probe("sec-textflood")
    assert run["state"] == "failed", run
    assert "60001 lines added or removed; the limit is 5000" in run["reason"]
    assert "nothing was pushed" in run["reason"]
    assert run["branch"] not in sec.branches() and run["pr_number"] is None
    policy = [e["data"] for e in sec.stack.events(run["id"], "policy")]
    assert any(p["rule"] == "limits.max_diff_lines" and p["decision"] == "deny" for p in policy)


def test_output_flood_is_truncated_with_a_note(sec: SecurityStack) -> None:
    run = sec.probe("sec-output")
    assert run["state"] == "review_ready", run
    lines = log_lines(sec.stack, run["id"])
    notes = [line for line in lines if re.fullmatch(r"\[output truncated after \d+ bytes\]", line)]
    assert len(notes) == 1, lines[-3:]
    assert len(lines) < 5000  # most of the 5,000 lines never became events
    transcript = sec.stack.artifacts(run["id"])["transcript"].read_bytes()
    assert OUTPUT_LIMIT // 2 < len(transcript) <= OUTPUT_LIMIT + 1024
    diff = sec.stack.artifacts(run["id"])["diff"].read_text()
    assert '"printed_bytes": 5120000' in diff  # the agent printed all of it and went on


def test_endless_loop_ends_timed_out_with_work_kept(sec: SecurityStack) -> None:
    started = time.monotonic()
    run = sec.probe("sec-loop")
    elapsed = time.monotonic() - started
    assert run["state"] == "timed_out", run
    assert "time limit" in run["reason"] and "/resume" in run["reason"]
    assert LOOP_TIMEOUT - 1 < elapsed < LOOP_TIMEOUT + 20
    assert run["branch"] in sec.branches()
    assert "security/loop.json" in sec.stack.artifacts(run["id"])["diff"].read_text()
    sec.settled(run["id"])


async def test_cancelling_host_git_is_always_a_cancellation(tmp_path: Path) -> None:
    """A /cancel that lands while host-side git is finishing must end the run ``cancelled``,
    never as an internal error (it used to surface as ``ProcessLookupError``)."""
    outcomes: dict[str, int] = {}
    for _ in range(200):
        task = asyncio.create_task(run_git(["--version"], cwd=tmp_path))
        await asyncio.sleep(random.uniform(0.0005, 0.01))
        task.cancel()
        try:
            await task
            kind = "finished"
        except asyncio.CancelledError:
            kind = "cancelled"
        except Exception as exc:  # noqa: BLE001 -- any other outcome is the failure
            kind = type(exc).__name__
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert set(outcomes) <= {"finished", "cancelled"}, outcomes
    assert outcomes.get("cancelled", 0) > 0
