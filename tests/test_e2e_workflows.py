"""End to end: workflows (SPEC §4.2). Each phase is its own agent invocation with its own
prompt; a repository's ``.bosun/commands/<phase>.md`` replaces a phase's directive; the plan
reaches the later phases; phase progress shows in the check run.

The "agent" is a script that reads its prompt and acts by the phase it is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import PROFILES, BosunStack, StackPlace, open_stack

PHASE_AGENT = r"""
import os, pathlib, re
prompt = pathlib.Path(os.environ["BOSUN_PROMPT_FILE"]).read_text()
phase = re.findall(r"^## What to do now \((\w+)\)$", prompt, re.M)[-1]
log = pathlib.Path("/workspace/phases.log")
if phase == "plan":
    # A plan phase must change nothing: Bosun discards what it writes anyway.
    pathlib.Path("/workspace/scratch-from-plan.txt").write_text("should be discarded\n")
    template = "TEMPLATE-PLAN-MARKER" in prompt
    print("Plan: 1. add greet() to src/greet.py 2. test it")
    print(f"template-seen={template}")
else:
    plan_seen = "add greet() to src/greet.py" in prompt
    with log.open("a") as handle:
        handle.write(f"{phase} file={os.path.basename(os.environ['BOSUN_PROMPT_FILE'])} "
                     f"plan_seen={plan_seen}\n")
    if phase == "implement":
        pathlib.Path("/workspace/src/greet.py").write_text("def greet():\n    return 'hi'\n")
    print(f"{phase} done")
"""

WORKFLOW_PROFILES: dict[str, dict[str, Any]] = {
    **PROFILES,
    "planned": {
        "runner": "script",
        "command": ["python3", "-c", PHASE_AGENT],
        "workflow": "plan_implement",
    },
    "tested": {
        "runner": "script",
        "command": ["python3", "-c", PHASE_AGENT],
        "workflow": "plan_implement_test",
    },
    "planonly": {"runner": "script", "command": ["python3", "-c", PHASE_AGENT], "workflow": "plan"},
}


@pytest.fixture
def wstack(place: StackPlace) -> Iterator[BosunStack]:
    with open_stack(*place, profiles=WORKFLOW_PROFILES) as running:
        yield running


def _completed_check(stack: BosunStack, run: dict[str, Any]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        checks = [
            c
            for c in stack.state()["check_runs"]
            if c["external_id"] == run["id"]
            and c["status"] == "completed"
            and c["head_sha"] == (run["head_sha"] or run["base_sha"])
        ]
        return checks[-1] if checks else None

    return stack.wait_for(done, 30, "a completed check run")


def test_plan_implement_runs_two_phases_with_the_repo_template(wstack: BosunStack) -> None:
    stack = wstack
    template = "TEMPLATE-PLAN-MARKER: plan in two numbered steps, naming each file.\n"
    stack.emulator.push(stack.repo, "main", {".bosun/commands/plan.md": template}, user="alice")
    number = stack.emulator.create_issue(stack.repo, "Add greet", "Add a greet function.", "alice")
    stack.label(number, "bosun:planned")
    (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
    assert run["state"] == "review_ready", run
    assert stack.db("SELECT workflow FROM runs WHERE id=?", run["id"]) == [("plan_implement",)]

    artifacts = stack.artifacts(run["id"])
    # Two invocations: the plan phase saw the repository's template, the implement phase got
    # its own prompt file carrying the plan.
    transcript = artifacts["transcript"].read_text()
    assert "=== bosun: plan phase ===" in transcript
    assert "=== bosun: implement phase ===" in transcript
    assert "template-seen=True" in transcript
    assert "Plan: 1. add greet() to src/greet.py" in artifacts["plan"].read_text()

    diff = artifacts["diff"].read_text()
    assert "src/greet.py" in diff
    assert "implement file=prompt-implement.md plan_seen=True" in diff  # phases.log
    assert "scratch-from-plan.txt" not in diff  # the plan phase changed nothing

    events = stack.events(run["id"])
    steps = [
        (e["data"]["phase"], e["data"]["step"], e["data"]["of"])
        for e in events
        if e["kind"] == "progress" and "step" in e["data"]
    ]
    assert steps == [("plan", 1, 2), ("implement", 2, 2)]
    assert any(
        e["kind"] == "progress" and e["data"].get("template") == ".bosun/commands/plan.md"
        for e in events
    )
    assert any(e["kind"] == "policy" and e["data"].get("rule") == "workflow.plan" for e in events)

    # Phase progress in the check run: a row per phase, both done.
    check = _completed_check(stack, run)
    summary = check["output"]["summary"]
    assert "| plan | ✅ done |" in summary and "| implement | ✅ done |" in summary
    assert "| agent |" not in summary
    # The PR carries the plan.
    (pull,) = stack.state()["pulls"]
    assert "Plan: 1. add greet() to src/greet.py" in pull["body"]

    manifest = json.loads(artifacts["manifest.json"].read_text())
    assert manifest["workflow"] == "plan_implement"


def test_plan_implement_test_runs_three_phases(wstack: BosunStack) -> None:
    stack = wstack
    number = stack.emulator.create_issue(stack.repo, "Add greet", "Add a greet function.", "alice")
    stack.label(number, "bosun:tested")
    (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
    assert run["state"] == "review_ready", run
    diff = stack.artifacts(run["id"])["diff"].read_text()
    # Without a template the plan phase gets Bosun's own directive; implement then test ran,
    # each from its own prompt file, each seeing the plan.
    assert "implement file=prompt-implement.md plan_seen=True" in diff
    assert "test file=prompt-test.md plan_seen=True" in diff
    summary = _completed_check(stack, run)["output"]["summary"]
    for phase in ("plan", "implement", "test"):
        assert f"| {phase} | ✅ done |" in summary


def test_plan_workflow_posts_the_plan_and_changes_no_code(wstack: BosunStack) -> None:
    stack = wstack
    number = stack.emulator.create_issue(stack.repo, "Add greet", "Add a greet function.", "alice")
    stack.label(number, "bosun:planonly")
    (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
    assert run["state"] == "review_ready", run
    state = stack.state()
    assert state["pulls"] == []  # no code, no pull request
    assert not any(name.startswith("bosun/") for name in state["branches"])
    issue = next(i for i in state["issues"] if i["number"] == number)
    plans = [c for c in issue["comments"] if f"<!-- bosun:plan run={run['id']} -->" in c["body"]]
    assert len(plans) == 1
    assert "Plan: 1. add greet() to src/greet.py" in plans[0]["body"]
    assert "No code was changed" in plans[0]["body"]
    summary = _completed_check(stack, run)["output"]["summary"]
    assert "| plan | ✅ done |" in summary and "| push | ⏭️ skipped |" in summary


def test_repo_config_narrows_the_profile_the_run_gets(wstack: BosunStack) -> None:
    """The server's `slow` profile has no time limit of its own (the sandbox default is 120 s);
    the repository narrows it to 3 s, and the run is stopped within 3 s."""
    stack = wstack
    config = "profiles:\n  slow:\n    timeout: 3\n"
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    number = stack.emulator.create_issue(stack.repo, "Wait", "Take your time.", "alice")
    stack.label(number, "bosun:slow")
    (run,) = stack.wait_run({"timed_out", "failed", "review_ready"}, timeout=60)
    assert run["state"] == "timed_out", run
    agent = [
        e["data"]
        for e in stack.events(run["id"], "progress")
        if e["data"].get("phase") == "agent" and "duration_s" in e["data"]
    ]
    # The time limit covers the whole run, so the agent gets what preparing left of 3 s.
    assert len(agent) == 1 and agent[0]["timed_out"] and agent[0]["duration_s"] <= 3.0
