"""End to end: who may use which review command (refusals answered and audited), `/budget`,
`/hold` against an approval's merge, and `/cancel` of a running agent."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from tests.services import docker_client
from tests.stack import BosunStack
from tests.test_e2e_review import _comments, _ready_pr


def _bot_replies(stack: BosunStack, number: int) -> list[str]:
    return [c["body"] for c in _comments(stack, number) if c["user_type"] == "Bot"]


def _audit_rows(stack: BosunStack) -> list[dict[str, Any]]:
    rows = stack.db(
        "SELECT delivery_id, comment_id, actor, permission, sha, command, outcome, reason "
        "FROM command_audit ORDER BY id"
    )
    keys = ("delivery_id", "comment_id", "actor", "permission", "sha", "command", "outcome")
    return [dict(zip((*keys, "reason"), row, strict=True)) for row in rows]


def _reactions(stack: BosunStack, number: int, comment_id: int) -> list[str]:
    comment = next(c for c in _comments(stack, number) if c["id"] == comment_id)
    return [r["content"] for r in comment["reactions"]]


def test_a_read_only_user_is_refused_every_state_changing_verb(stack: BosunStack) -> None:
    run, pr = _ready_pr(stack, "Guarded")
    verbs = {
        "approve": "/approve",
        "reject": "/reject I do not like it",
        "hold": "/hold",
        "unhold": "/unhold",
        "budget": "/budget +5",
        "retry": "/retry do it differently",
        "cancel": "/cancel",
        "resume": "/resume",
    }
    ids = {
        verb: stack.emulator.comment(stack.repo, pr, body, "mallory")
        for verb, body in verbs.items()
    }
    stack.wait_for(lambda: len(_audit_rows(stack)) >= len(verbs), 60, "every command audited")
    rows = {row["command"]: row for row in _audit_rows(stack)}
    assert set(rows) == set(verbs)
    for verb, row in rows.items():
        assert row["actor"] == "mallory" and row["permission"] == "read", row
        assert row["outcome"] == "refused", row
        assert row["comment_id"] == ids[verb] and row["delivery_id"], row
        assert row["sha"] == run["head_sha"], row
        assert f"`/{verb}`" in row["reason"] and "you have read" in row["reason"], row

    def replied() -> bool:
        bodies = _bot_replies(stack, pr)
        return all(any(f"`/{v}`" in b and "@mallory" in b for b in bodies) for v in verbs)

    stack.wait_for(replied, 30, "one polite refusal per command")
    for verb in ("retry", "cancel", "resume"):  # not the requester, no write access
        reply = next(b for b in _bot_replies(stack, pr) if f"`/{verb}`" in b)
        assert "requester (@alice)" in reply and "write access" in reply
    stack.wait_for(
        lambda: all("-1" in _reactions(stack, pr, i) for i in ids.values()), 30, "👎 on each"
    )
    state, on_hold, budget = stack.db(
        "SELECT state, on_hold, budget_usd FROM runs WHERE id=?", run["id"]
    )[0]
    assert (state, on_hold, budget) == ("review_ready", 0, None)
    assert len(stack.runs()) == 1  # no retry started
    assert stack.db("SELECT count(*) FROM approvals")[0][0] == 0


def test_budget_raise_by_a_writer_is_accepted_and_audited(stack: BosunStack) -> None:
    config = "limits:\n  budget_per_run_usd: 2\n"
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    run, pr = _ready_pr(stack, "Costly")
    comment = stack.emulator.comment(stack.repo, pr, "/budget +5 for the larger refactor", "bob")
    stack.wait_for(lambda: _audit_rows(stack), 30, "the audit row")
    (row,) = _audit_rows(stack)
    assert (row["actor"], row["command"], row["outcome"], row["permission"]) == (
        "bob",
        "budget",
        "accepted",
        "write",
    )
    assert row["comment_id"] == comment
    stack.wait_for(
        lambda: any("Budget raised by $5.00" in b for b in _bot_replies(stack, pr)), 30, "reply"
    )
    assert any("to $7.00" in b for b in _bot_replies(stack, pr))
    assert stack.db("SELECT budget_usd FROM runs WHERE id=?", run["id"])[0][0] == 7.0

    def manifest_commands() -> list[dict[str, Any]]:
        path = stack.artifacts(run["id"])["manifest.json"]
        return list(json.loads(path.read_text()).get("commands") or [])

    (audited,) = stack.wait_for(manifest_commands, 30, "the command in manifest.json")
    assert audited["command"] == "budget" and audited["actor"] == "bob"
    assert audited["permission"] == "write" and audited["outcome"] == "accepted"
    assert audited["comment_id"] == comment and audited["delivery_id"]
    assert audited["sha"] == run["head_sha"]


def test_hold_blocks_the_merge_of_an_approval_until_unhold(stack: BosunStack) -> None:
    stack.emulator.push(
        stack.repo, "main", {".github/bosun.yml": "merge:\n  auto_merge: true\n"}, user="alice"
    )
    _run, pr = _ready_pr(stack, "Held")
    stack.emulator.comment(stack.repo, pr, "/hold waiting for the design review", "bob")
    stack.wait_for(lambda: stack.db("SELECT on_hold FROM runs")[0][0] == 1, 30, "the hold")
    stack.emulator.comment(stack.repo, pr, "/approve", "bob")
    stack.wait_run({"approved"}, timeout=30)
    stack.wait_for(
        lambda: any(b.startswith("Approved; the run is on hold") for b in _bot_replies(stack, pr)),
        30,
        "the held-approval reply",
    )
    time.sleep(2)  # a merge, were it coming, would have come by now
    assert stack.runs()[0]["state"] == "approved"
    assert not next(p for p in stack.state()["pulls"] if p["number"] == pr)["pull"]["merged"]
    assert not [r for r in stack.emulator.requests() if r["path"].endswith("/merge")]

    stack.emulator.comment(stack.repo, pr, "/unhold", "bob")
    stack.wait_run({"merged"}, timeout=60)
    assert next(p for p in stack.state()["pulls"] if p["number"] == pr)["pull"]["merged"]
    commands = [r[0] for r in stack.db("SELECT command FROM command_audit ORDER BY id")]
    assert commands == ["hold", "approve", "unhold"]


def _containers(run_id: str) -> list[Any]:
    """The run's containers, stopped ones included (one listing call: no per-container
    inspect that could race the removal)."""
    client = docker_client()
    try:
        return list(client.api.containers(all=True, filters={"label": f"bosun.run_id={run_id}"}))
    finally:
        client.close()


def test_cancel_by_comment_stops_the_running_agent(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Endless", "x", "alice")
    stack.label(number, "bosun:slow")
    (run,) = stack.wait_run({"running"}, timeout=60)
    stack.wait_for(
        lambda: any("started" in e["data"].get("line", "") for e in stack.events(run["id"], "log")),
        30,
        "the agent's first line",
    )
    assert _containers(run["id"]), "the agent container runs"
    stack.emulator.add_user("bob", stack.repo, "write")
    comment = stack.emulator.comment(stack.repo, number, "/cancel wrong issue", "bob")
    asked = time.monotonic()
    stack.wait_for(lambda: not _containers(run["id"]), 20, "the container to be gone")
    gone_after = time.monotonic() - asked
    (done,) = stack.wait_run({"cancelled", "failed", "review_ready"}, timeout=30)
    assert done["state"] == "cancelled" and "bob" in (done["reason"] or "")
    assert gone_after < 10, gone_after
    artifacts = stack.artifacts(run["id"])
    assert {"summary", "manifest.json", "transcript"} <= set(artifacts)
    assert "started" in artifacts["transcript"].read_text()  # what the agent said is kept
    manifest = json.loads(artifacts["manifest.json"].read_text())
    assert manifest["state"] == "cancelled"
    assert [(c["actor"], c["command"]) for c in manifest["commands"]] == [("bob", "cancel")]
    (row,) = _audit_rows(stack)
    assert (row["actor"], row["command"], row["outcome"]) == ("bob", "cancel", "accepted")
    assert row["comment_id"] == comment
    statuses = [e["data"]["to"] for e in stack.events(run["id"], "status")]
    assert statuses[-1] == "cancelled" and statuses.count("cancelled") == 1
    # From the cancel being recorded to the run ending cancelled (container stopped and
    # removed, artifacts written): SPEC §6 asks for the container to stop within seconds.
    (recorded,) = stack.db(
        "SELECT created_at FROM run_events WHERE run_id=? AND kind='command'", run["id"]
    )
    ended = stack.db(
        "SELECT created_at FROM run_events WHERE run_id=? AND kind='status' ORDER BY seq DESC",
        run["id"],
    )[0]
    took = (datetime.fromisoformat(ended[0]) - datetime.fromisoformat(recorded[0])).total_seconds()
    print(f"cancel recorded -> run cancelled: {took:.2f} s")
    assert took < 2, took  # issue 7: within 2 s; measured 0.17 to 0.38 s
