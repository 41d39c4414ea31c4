"""End to end: approvals are bound to the tree — a push that keeps the files keeps them, a push
that changes the files invalidates them, the status comment says which, and manifest.json
records the approvals and commands. Also the emulator's Git data API commit, which Bosun reads
the tree SHA from, checked against GitHub's description."""

from __future__ import annotations

from typing import Any

import pytest
from githubkit.exception import RequestFailed

from tests.emulator import schemas
from tests.emulator.world import World
from tests.stack import BosunStack
from tests.test_e2e_review import _comments, _manifest, _ready_pr


def _status_comment(stack: BosunStack, issue: int) -> str:
    for item in stack.state()["issues"]:
        if item["number"] == issue:
            for comment in item["comments"]:
                if "<!-- bosun:status -->" in comment["body"]:
                    return str(comment["body"])
    return ""


def _issue_of(stack: BosunStack, run_id: str) -> int:
    return int(
        stack.db(
            "SELECT t.issue_number FROM tasks t JOIN runs r ON r.task_id=t.id WHERE r.id=?", run_id
        )[0][0]
    )


def _approvals(stack: BosunStack) -> list[tuple[Any, ...]]:
    return stack.db("SELECT actor, sha, invalidated_at, invalidated_reason FROM approvals")


def _policy(stack: BosunStack, run_id: str) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in stack.events(run_id, "policy")
        if e["data"].get("rule") == "approval.bound_to_tree"
    ]


def test_same_tree_push_keeps_the_approval_and_a_tree_change_invalidates_it(
    stack: BosunStack,
) -> None:
    run, pr = _ready_pr(stack, "Bound to the tree")
    issue = _issue_of(stack, run["id"])
    approve = stack.emulator.comment(stack.repo, pr, "/approve", "bob")
    stack.wait_run({"approved"}, timeout=60)  # auto_merge is off by default

    # An empty commit (a message-only amend): new head, same tree.
    same = stack.emulator.push(stack.repo, run["branch"], {}, user="alice", message="Reword")
    stack.wait_for(lambda: _policy(stack, run["id"]), 30, "the rebind decision")
    (decision,) = _policy(stack, run["id"])
    assert decision["decision"] == "rebind" and decision["approvals"] == 1
    assert decision["from_sha"] == run["head_sha"] and decision["head_sha"] == same
    assert stack.runs()[0]["state"] == "approved"
    assert _approvals(stack) == [("bob", same, None, None)]
    stack.wait_for(
        lambda: "still count" in _status_comment(stack, issue), 30, "the status comment's note"
    )
    assert not any("no longer count" in c["body"] for c in _comments(stack, pr))

    # A push that changes a file: the approval no longer counts, the run is back in review.
    changed = stack.emulator.push(
        stack.repo, run["branch"], {"extra.txt": "a human change\n"}, user="alice"
    )
    stack.wait_run({"review_ready"}, timeout=60)
    ((actor, sha, invalidated_at, reason),) = _approvals(stack)
    assert (actor, sha) == ("bob", same) and invalidated_at is not None
    assert changed[:12] in reason and "changing the files" in reason
    assert [d["decision"] for d in _policy(stack, run["id"])] == ["rebind", "invalidate"]
    stack.wait_for(
        lambda: any("no longer count" in c["body"] for c in _comments(stack, pr)),
        30,
        "the invalidation reply on the PR",
    )
    body = stack.wait_for(
        lambda: (b := _status_comment(stack, issue)) and "no longer count" in b and b,
        30,
        "the status comment to say the approval no longer counts",
    )
    assert "<!-- bosun:review -->" in body and body.count("<!-- bosun:review -->") == 1
    assert "@bob approved" in body

    stack.wait_for(
        lambda: _manifest(stack, run["id"], "review_ready")["head_sha"] == changed,
        30,
        "the manifest to follow the head",
    )
    manifest = _manifest(stack, run["id"], "review_ready")
    (approval,) = manifest["approvals"]
    assert approval["actor"] == "bob" and approval["sha"] == same
    assert approval["valid"] is False and approval["invalidated_at"]
    assert approval["approved_at"] and "changing the files" in approval["invalidated_reason"]
    (command,) = manifest["commands"]
    assert command["command"] == "approve" and command["actor"] == "bob"
    assert command["comment_id"] == approve and command["delivery_id"]
    assert command["permission"] == "write" and command["outcome"] == "accepted"
    assert command["sha"] == run["head_sha"]


def test_git_commit_endpoint_matches_githubs_description(github_world: World) -> None:
    gh = github_world.installation_github()
    owner, name = github_world.repo.full_name.split("/")
    head = github_world.emulator.push(
        github_world.repo.full_name, "topic", {"a.txt": "one\n"}, user="alice", message="Add a"
    )
    empty = github_world.emulator.push(
        github_world.repo.full_name, "topic", {}, user="alice", message="Reword"
    )
    template = "/repos/{owner}/{repo}/git/commits/{commit_sha}"
    answers = {}
    for sha in (head, empty, head[:10]):
        response = gh.rest.git.get_commit(owner, name, sha)
        assert schemas.rest_errors("get", template, 200, response.json()) == []
        answers[sha] = response.parsed_data
    assert answers[head].sha == head and answers[head[:10]].sha == head
    assert answers[empty].tree.sha == answers[head].tree.sha  # same files, same tree
    assert [p.sha for p in answers[empty].parents] == [head]
    assert answers[empty].message == "Reword"
    for missing in ("0" * 40, "main"):
        with pytest.raises(RequestFailed) as info:
            gh.rest.git.get_commit(owner, name, missing)
        body = info.value.response.json()
        assert info.value.response.status_code == 404 and body["message"] == "Not Found"
        assert schemas.rest_errors("get", template, 404, body) == []
