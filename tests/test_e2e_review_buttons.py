"""End to end: the check run's buttons and GitHub reviews act like comment commands, with the
same permission checks (SPEC §8, §3.3)."""

from __future__ import annotations

from typing import Any

from tests.stack import EDIT_AGENT, PROFILES, BosunStack, StackPlace, open_stack
from tests.test_e2e_review import _audit, _ready_pr

AUTO_MERGE = "merge:\n  auto_merge: true\n"


def _check_run(stack: BosunStack, run: dict[str, Any]) -> dict[str, Any]:
    def on_head() -> dict[str, Any] | None:
        checks = [
            c
            for c in stack.state()["check_runs"]
            if c["external_id"] == run["id"]
            and c["head_sha"] == run["head_sha"]
            and c["status"] == "completed"
        ]
        return checks[-1] if checks else None

    return stack.wait_for(on_head, 30, "the completed check run on the PR head")


def test_approve_button_is_permission_checked_then_merges(stack: BosunStack) -> None:
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": AUTO_MERGE}, user="alice")
    run, pr = _ready_pr(stack, "Buttons")
    check = _check_run(stack, run)
    assert [a["identifier"] for a in check["actions"]] == ["approve", "retry"]

    stack.emulator.click_action(check["id"], "approve", "mallory")  # read permission
    stack.wait_for(lambda: len(_audit(stack)) >= 1, 30, "the refused click audited")
    assert _audit(stack)[0][:3] == ("mallory", "approve", "refused")
    assert stack.runs()[0]["state"] == "review_ready"

    stack.emulator.click_action(check["id"], "approve", "bob")  # write
    (merged,) = stack.wait_run({"merged"}, timeout=60)
    assert merged["id"] == run["id"]
    assert next(p for p in stack.state()["pulls"] if p["number"] == pr)["pull"]["merged"]
    assert ("bob", "approve", "accepted", "write") in _audit(stack)
    assert stack.db("SELECT actor, sha, source FROM approvals WHERE run_id=?", run["id"]) == [
        ("bob", run["head_sha"], "button")
    ]


def test_rerequested_check_run_means_retry(stack: BosunStack) -> None:
    run, pr = _ready_pr(stack, "Again")
    check = _check_run(stack, run)
    stack.emulator.rerequest(check["id"], "alice")  # the requester may retry

    def child() -> dict[str, Any] | None:
        rows = stack.db("SELECT id, state FROM runs WHERE parent_run_id=?", run["id"])
        done = [r for r in rows if r[1] in {"review_ready", "failed"}]
        return {"id": done[0][0], "state": done[0][1]} if done else None

    follow_up = stack.wait_for(child, 120, "the retry run to finish")
    assert follow_up["state"] == "review_ready"
    parent_state = stack.db("SELECT state FROM runs WHERE id=?", run["id"])[0][0]
    assert parent_state == "rejected"  # superseded by the retry
    assert ("alice", "retry", "accepted") in [a[:3] for a in _audit(stack)]
    # Same branch and PR.
    assert len(stack.state()["pulls"]) == 1 and stack.state()["pulls"][0]["number"] == pr


def test_an_approving_github_review_counts_as_approve(stack: BosunStack) -> None:
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": AUTO_MERGE}, user="alice")
    run, pr = _ready_pr(stack, "Reviewed")
    stack.emulator.review(stack.repo, pr, "APPROVED", "mallory")  # read permission: refused
    stack.wait_for(lambda: len(_audit(stack)) >= 1, 30, "the refused review audited")
    assert _audit(stack)[0][:3] == ("mallory", "approve", "refused")
    stack.emulator.review(stack.repo, pr, "COMMENTED", "bob", body="Nice, but not yet.")
    stack.emulator.review(stack.repo, pr, "APPROVED", "bob")
    stack.wait_run({"merged"}, timeout=60)
    approvals = stack.db("SELECT actor, sha, source FROM approvals WHERE run_id=?", run["id"])
    assert approvals == [("bob", run["head_sha"], "review")]


def test_retry_while_running_is_folded_into_the_next_run(place: StackPlace) -> None:
    """A `/retry` that arrives while the agent works does not race it: its feedback waits and
    reaches the next run's prompt together with the feedback that starts that run."""
    slow_edit = "import time; time.sleep(6)\n" + EDIT_AGENT
    profiles = {
        **PROFILES,
        "default": {"runner": "script", "command": ["python3", "-c", slow_edit]},
    }
    with open_stack(*place, profiles=profiles) as stack:
        number = stack.emulator.create_issue(stack.repo, "Fold", "Change it.", "alice")
        stack.label(number)
        (first,) = stack.wait_run({"running"}, timeout=60)
        stack.emulator.comment(stack.repo, number, "/retry please use tabs", "alice")
        stack.wait_for(lambda: len(_audit(stack)) >= 1, 30, "the folded retry audited")
        assert _audit(stack)[0][:3] == ("alice", "retry", "accepted")
        (first,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
        assert first["state"] == "review_ready"  # the running agent was not disturbed
        pr = stack.wait_for(lambda: stack.state()["pulls"], 10, "a PR")[0]["number"]
        stack.emulator.comment(stack.repo, pr, "/retry and add docs", "alice")

        def second() -> dict[str, Any] | None:
            rows = stack.db("SELECT id, state FROM runs WHERE parent_run_id=?", first["id"])
            done = [r for r in rows if r[1] in {"review_ready", "failed"}]
            return {"id": done[0][0], "state": done[0][1]} if done else None

        run = stack.wait_for(second, 120, "the retry run to finish")
        assert run["state"] == "review_ready", run
        prompt = stack.artifacts(run["id"])["diff"].read_text()  # prompt-seen.txt is in the diff
        assert "1. please use tabs" in prompt and "2. and add docs" in prompt
