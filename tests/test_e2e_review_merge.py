"""End to end: from approval to merge — exactly one merge under concurrent approvals, a merge
conflict named by path, and a partial approval that keeps exactly the approved files."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.stack import BosunStack
from tests.test_e2e_review import _comments, _manifest, _ready_pr

AUTO_MERGE = "merge:\n  auto_merge: true\n"


def _auto_merge(stack: BosunStack) -> None:
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": AUTO_MERGE}, user="alice")


def _git(stack: BosunStack, *args: str) -> str:
    git_dir = Path(stack.state()["git_dir"])
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True, text=True
    ).stdout


def _pull(stack: BosunStack, number: int) -> dict[str, Any]:
    return dict(next(p for p in stack.state()["pulls"] if p["number"] == number)["pull"])


def _merge_calls(stack: BosunStack, pr: int) -> list[dict[str, Any]]:
    """The merge calls in the emulator's request log."""
    return [
        r
        for r in stack.emulator.requests()
        if r["method"] == "PUT" and r["path"].endswith(f"/pulls/{pr}/merge")
    ]


def test_two_concurrent_approvals_merge_exactly_once(stack: BosunStack) -> None:
    _auto_merge(stack)
    run, pr = _ready_pr(stack, "Popular")
    stack.emulator.add_user("carol", stack.repo, "write")
    stack.emulator.clear_requests()
    stack.emulator.comment(stack.repo, pr, "/approve", "bob")
    stack.emulator.comment(stack.repo, pr, "/approve", "carol")
    stack.wait_run({"merged"}, timeout=60)
    stack.wait_for(
        lambda: len(stack.db("SELECT id FROM command_audit")) == 2, 30, "both commands audited"
    )
    assert _pull(stack, pr)["merged"] is True
    merges = _merge_calls(stack, pr)
    assert len(merges) == 1, merges
    assert merges[0]["status"] == 200
    statuses = [e["data"]["to"] for e in stack.events(run["id"], "status")]
    assert statuses.count("approved") == 1 and statuses.count("merged") == 1
    assert statuses[-1] == "merged"

    def both_listed() -> dict[str, Any] | None:
        # The manifest is rewritten after each command: the refused one may come last.
        manifest = _manifest(stack, run["id"], "merged")
        return manifest if {c["actor"] for c in manifest["commands"]} == {"bob", "carol"} else None

    manifest = stack.wait_for(both_listed, 30, "the manifest listing both commands")
    assert {a["actor"] for a in manifest["approvals"]} <= {"bob", "carol"}
    assert manifest["approvals"] and all(a["sha"] == run["head_sha"] for a in manifest["approvals"])
    assert manifest["review"]["merge"]["sha"] == _pull(stack, pr)["merge_commit_sha"]


def test_a_merge_conflict_names_the_paths_and_keeps_the_run_in_review(stack: BosunStack) -> None:
    _auto_merge(stack)
    run, pr = _ready_pr(stack, "Conflicting")
    # The agent appended to README.md; the base branch rewrites the same file meanwhile.
    stack.emulator.push(
        stack.repo, "main", {"README.md": "# Rewritten on main\n\nEntirely.\n"}, user="alice"
    )
    stack.emulator.clear_requests()
    stack.emulator.comment(stack.repo, pr, "/approve", "bob")

    def conflict_reply() -> list[str]:
        return [c["body"] for c in _comments(stack, pr) if "conflicts on" in c["body"]]

    (reply,) = stack.wait_for(conflict_reply, 60, "the conflict reply")
    assert "`README.md`" in reply and "src/feature.py" not in reply
    merges = _merge_calls(stack, pr)
    assert [m["status"] for m in merges] == [405]
    assert stack.db("SELECT state FROM runs WHERE id=?", run["id"])[0][0] == "review_ready"
    assert _pull(stack, pr)["merged"] is False
    manifest = _manifest(stack, run["id"], "review_ready", has="review")
    assert manifest["review"]["merge"]["conflicts"] == ["README.md"]


def test_partial_approval_merges_exactly_the_approved_files(stack: BosunStack) -> None:
    _auto_merge(stack)
    run, pr = _ready_pr(stack, "Partly good")
    base = _git(stack, "rev-parse", "main").strip()
    changed = set(_git(stack, "diff", "--name-only", base, run["head_sha"]).split())
    assert {"README.md", "src/feature.py"} <= changed and len(changed) >= 3
    stack.emulator.comment(stack.repo, pr, "/approve src/feature.py", "bob")
    stack.wait_run({"merged", "review_ready"}, timeout=60)
    (merged,) = stack.wait_run({"merged"}, timeout=30)

    pull = _pull(stack, pr)
    assert pull["merged"] is True
    main = _git(stack, "rev-parse", "main").strip()
    assert main == pull["merge_commit_sha"]
    assert _git(stack, "diff", "--name-only", base, main).split() == ["src/feature.py"]
    assert _git(stack, "show", f"{main}:src/feature.py") == "def feature():\n    return 42\n"
    assert _git(stack, "show", f"{main}:README.md") == _git(stack, "show", f"{base}:README.md")

    # The revert is its own commit on the PR branch, on top of the approved head.
    revert = pull["head_sha"]
    assert revert != run["head_sha"] and merged["head_sha"] == revert
    assert _git(stack, "rev-parse", f"{revert}^").strip() == run["head_sha"]
    message = _git(stack, "log", "-1", "--format=%B", revert)
    assert f"Bosun-Run: {run['id']}" in message and "Approved-by: @bob" in message
    reverted = set(_git(stack, "diff", "--name-only", run["head_sha"], revert).split())
    assert reverted == changed - {"src/feature.py"}

    (event,) = [
        e["data"]
        for e in stack.events(run["id"], "policy")
        if e["data"].get("rule") == "approval.partial"
    ]
    assert event["commit"] == revert and set(event["reverted"]) == reverted
    assert event["kept"] == ["src/feature.py"]
    manifest = _manifest(stack, run["id"], "merged")
    partial = manifest["review"]["partial_approval"]
    assert partial["revert_commit"] == revert and partial["kept"] == ["src/feature.py"]
    (approval,) = manifest["approvals"]
    assert approval["actor"] == "bob" and approval["sha"] == run["head_sha"]
    assert approval["paths"] == ["src/feature.py"] and approval["valid"] is True
    assert any("Kept only the approved files" in c["body"] for c in _comments(stack, pr))


def test_merge_when_green_through_the_whole_stack(stack: BosunStack) -> None:
    """Webhooks over HTTP, the worker deciding: the approved run waits for the CI's required
    status, its own check run says so, and the status's webhook merges it."""
    _auto_merge(stack)
    stack.emulator.protect(stack.repo, "main", ["ci/test"])
    run, pr = _ready_pr(stack, "Green first")
    stack.emulator.comment(stack.repo, pr, "/approve", "bob")
    stack.wait_run({"approved"}, timeout=60)

    def waiting_check() -> dict[str, Any] | None:
        checks = [c for c in stack.state()["check_runs"] if c["name"] == "bosun"]
        latest = checks[-1] if checks else None
        title = (latest or {}).get("output", {}).get("title")
        return latest if title == "Waiting for required checks" else None

    check = stack.wait_for(waiting_check, 30, "the check run waiting for ci/test")
    assert check["status"] == "in_progress" and "`ci/test`" in check["output"]["summary"]
    assert _merge_calls(stack, pr) == []
    stack.emulator.commit_status(stack.repo, run["head_sha"], "ci/test", "success", user="ci")
    stack.wait_run({"merged"}, timeout=60)
    assert _pull(stack, pr)["merged"] is True and len(_merge_calls(stack, pr)) == 1
