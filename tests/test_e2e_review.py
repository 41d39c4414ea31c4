"""End to end: the review loop on a real PR — commands, permissions, SHA-bound approvals,
merge, retry lineage, and the audit trail."""

from __future__ import annotations

import json
from typing import Any

from tests.stack import BosunStack


def _comments(stack: BosunStack, number: int) -> list[dict[str, Any]]:
    for item in stack.state()["issues"] + stack.state()["pulls"]:
        if item["number"] == number:
            return list(item["comments"])
    return []


def _ready_pr(stack: BosunStack, title: str = "Reviewable") -> tuple[dict[str, Any], int]:
    stack.emulator.add_user("bob", stack.repo, "write")
    number = stack.emulator.create_issue(stack.repo, title, "Please change it.", "alice")
    stack.label(number)
    (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
    assert run["state"] == "review_ready", run
    pr = stack.wait_for(lambda: stack.state()["pulls"], 10, "a PR")[0]
    return run, pr["number"]


def _audit(stack: BosunStack) -> list[tuple[Any, ...]]:
    return stack.db("SELECT actor, command, outcome, permission FROM command_audit ORDER BY id")


def test_approve_by_another_writer_merges_and_refusals_are_polite(stack: BosunStack) -> None:
    config = "merge:\n  auto_merge: true\n"
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    run, pr = _ready_pr(stack)

    stack.emulator.comment(stack.repo, pr, "/approve", "mallory")  # read permission
    stack.emulator.comment(stack.repo, pr, "/approve", "alice")  # the requester: self-approval
    stack.wait_for(lambda: len(_audit(stack)) >= 2, 30, "two audited commands")
    assert {(a[0], a[2]) for a in _audit(stack)} == {("mallory", "refused"), ("alice", "refused")}
    assert stack.runs()[0]["state"] == "review_ready"

    stack.emulator.comment(stack.repo, pr, "Looks good!\n\n/approve", "bob")
    stack.wait_run({"merged"}, timeout=60)
    pull = next(p for p in stack.state()["pulls"] if p["number"] == pr)
    assert pull["pull"]["merged"] is True
    approvals = stack.db("SELECT actor, sha FROM approvals WHERE run_id=?", run["id"])
    assert approvals == [("bob", run["head_sha"])]
    assert ("bob", "approve", "accepted", "write") in _audit(stack)
    bodies = " ".join(c["body"] for c in _comments(stack, pr))
    assert "@mallory" in bodies


def test_commands_in_code_blocks_quotes_or_edits_do_nothing(stack: BosunStack) -> None:
    _run, pr = _ready_pr(stack, "Quiet")
    stack.emulator.comment(stack.repo, pr, "```\n/approve\n```\n> /approve\n", "bob")
    comment = stack.emulator.comment(stack.repo, pr, "nothing yet", "bob")
    stack.emulator.edit_comment(stack.repo, comment, "/approve", "bob")
    stack.wait_for(
        lambda: (
            len(stack.db("SELECT id FROM deliveries WHERE status='received'")) == 0
            and len(stack.db("SELECT id FROM deliveries")) >= 6
        ),
        30,
        "deliveries processed",
    )
    assert _audit(stack) == []
    assert stack.runs()[0]["state"] == "review_ready"


def test_retry_carries_feedback_and_lineage(stack: BosunStack) -> None:
    run, pr = _ready_pr(stack, "Retry me")
    stack.emulator.comment(
        stack.repo, pr, "/retry please also cover the empty case\nand keep it short", "alice"
    )
    runs = stack.wait_for(
        lambda: [r for r in stack.runs() if r["id"] != run["id"] and r["state"] == "review_ready"],
        120,
        "a second review-ready run",
    )
    child = runs[0]
    parent_id, prompt = stack.db("SELECT parent_run_id, prompt FROM runs WHERE id=?", child["id"])[
        0
    ]
    assert parent_id == run["id"]
    assert "please also cover the empty case" in prompt and "keep it short" in prompt
    assert child["branch"] == run["branch"]
    assert stack.db("SELECT state FROM runs WHERE id=?", run["id"])[0][0] == "rejected"
    assert len(stack.state()["pulls"]) == 1  # same PR


def test_a_push_after_approval_invalidates_it(stack: BosunStack) -> None:
    run, pr = _ready_pr(stack, "Bound to the head")
    stack.emulator.comment(stack.repo, pr, "/approve", "bob")
    stack.wait_run({"approved"}, timeout=60)  # auto_merge is off by default
    stack.emulator.push(stack.repo, run["branch"], {"extra.txt": "human change\n"}, user="alice")
    stack.wait_run({"review_ready"}, timeout=60)
    rows = stack.db("SELECT invalidated_at, invalidated_reason FROM approvals")
    assert len(rows) == 1 and rows[0][0] is not None and "moved" in rows[0][1]
    stack.wait_for(
        lambda: any("no longer count" in c["body"] for c in _comments(stack, pr)),
        30,
        "the invalidation comment",
    )


def _manifest(
    stack: BosunStack, run_id: str, state: str, *, has: str | None = None, timeout: float = 30
) -> dict[str, Any]:
    """The run's manifest.json once it records ``state`` (and key ``has``): the review loop
    rewrites it after the commands that change the run."""

    def read() -> dict[str, Any] | None:
        path = stack.artifacts(run_id).get("manifest.json")
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # being replaced
        return data if data.get("state") == state and (has is None or has in data) else None

    found: dict[str, Any] = stack.wait_for(read, timeout, f"manifest.json in state {state}")
    return found
