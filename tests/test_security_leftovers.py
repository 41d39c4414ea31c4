"""Nothing the agent starts outlives its turn: processes it leaves running are killed before
the gates run, so they cannot race the gates, read their memory or change the tree."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import PROFILES, BosunStack, StackPlace, open_stack

# The agent exits at once but leaves a detached process that writes into the workspace two
# seconds later, while the (four-second) gate runs.
LEAVES_A_PROCESS = r"""
import os, pathlib, subprocess
pathlib.Path("/workspace/agent.txt").write_text("the agent's change\n")
subprocess.Popen(
    ["sh", "-c", "sleep 2; echo late > /workspace/late.txt"],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print("agent: done, a helper keeps running")
"""


@pytest.fixture
def lstack(place: StackPlace) -> Iterator[BosunStack]:
    profiles = {
        **PROFILES,
        "leaver": {"runner": "script", "command": ["python3", "-c", LEAVES_A_PROCESS]},
    }
    with open_stack(*place, profiles=profiles) as running:
        yield running


def test_processes_the_agent_leaves_are_killed_before_the_gates(lstack: BosunStack) -> None:
    stack = lstack
    config = "gates:\n  - name: slow-check\n    run: [sh, -c, 'sleep 4; ls /workspace']\n"
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    number = stack.emulator.create_issue(stack.repo, "Change", "Change a file.", "alice")
    stack.label(number, "bosun:leaver")
    (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
    assert run["state"] == "review_ready", run
    artifacts = stack.artifacts(run["id"])
    diff = artifacts["diff"].read_text()
    assert "agent.txt" in diff
    assert "late.txt" not in diff  # the leftover died before it could write
    gate_output = artifacts["gate:slow-check"].read_text()
    assert "agent.txt" in gate_output and "late.txt" not in gate_output
