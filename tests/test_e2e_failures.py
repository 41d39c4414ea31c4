"""End to end: every failure path ends in exactly one terminal state, with its events and
artifacts and an explanation on GitHub (issue #4 §7), plus trust and idempotency rules."""

from __future__ import annotations

import json

from tests.stack import BosunStack


def _issue(stack: BosunStack, number: int) -> dict[str, object]:
    return next(i for i in stack.state()["issues"] if i["number"] == number)


def _status_comment(stack: BosunStack, number: int, contains: str) -> str:
    def find() -> str | None:
        for comment in _issue(stack, number)["comments"]:  # type: ignore[attr-defined]
            if "<!-- bosun:status -->" in comment["body"] and contains in comment["body"]:
                return str(comment["body"])
        return None

    return stack.wait_for(find, 30, f"a status comment containing {contains!r}")


def _single_terminal(stack: BosunStack, run_id: str) -> list[str]:
    states = [e["data"]["to"] for e in stack.events(run_id, "status")]
    terminal = {"failed", "cancelled", "timed_out", "rejected", "merged"}
    assert sum(s in terminal for s in states) == 1, states
    return states


def test_agent_exit_non_zero_fails_with_transcript(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Break", "x", "alice")
    stack.label(number, "bosun:fail")
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "failed"
    assert "exit code 3" in run["reason"]
    _single_terminal(stack, run["id"])
    artifacts = stack.artifacts(run["id"])
    assert b"boom" in artifacts["transcript"].read_bytes()
    assert json.loads(artifacts["manifest.json"].read_text())["state"] == "failed"
    assert "exit code 3" in _status_comment(stack, number, "· **failed**")
    assert stack.state()["pulls"] == []


def test_agent_that_changes_nothing_fails_clearly(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Nothing", "x", "alice")
    stack.label(number, "bosun:noop")
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "failed" and "changed nothing" in run["reason"]
    _single_terminal(stack, run["id"])
    _status_comment(stack, number, "changed nothing")
    assert run["branch"] not in stack.state()["branches"]


def test_failing_gate_still_review_ready_with_gate_marked_failed(stack: BosunStack) -> None:
    config = (
        "gates:\n"
        "  - name: unit\n"
        "    run: python3 -c 'print(\"1 failed\"); raise SystemExit(1)'\n"
        "  - name: lint\n"
        '    run: ["true"]\n'
    )
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    number = stack.emulator.create_issue(stack.repo, "Gated", "x", "alice")
    stack.label(number)
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "review_ready", run
    gates = {e["data"]["name"]: e["data"] for e in stack.events(run["id"], "gate_result")}
    assert gates["unit"]["passed"] is False and gates["unit"]["exit_code"] == 1
    assert gates["lint"]["passed"] is True
    artifacts = stack.artifacts(run["id"])
    assert b"1 failed" in artifacts["gate:unit"].read_bytes()
    pr = stack.wait_for(lambda: stack.state()["pulls"], 10, "a PR")[0]
    assert pr["pull"]["draft"] is True  # draft until gates pass
    assert "❌ failed" in pr["body"]

    def failed_check() -> bool:
        checks = [c for c in stack.state()["check_runs"] if c["head_sha"] == run["head_sha"]]
        return any(c["status"] == "completed" and c["conclusion"] == "failure" for c in checks)

    stack.wait_for(failed_check, 30, "a failed check run on the head")


def test_push_rejected_by_branch_protection_fails_with_diff_kept(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Protected", "x", "alice")
    stack.emulator.fault("protected_branch", repo=stack.repo, branch=f"bosun/{number}-protected")
    stack.label(number)
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "failed"
    assert "push was rejected" in run["reason"] and "GH006" in run["reason"]
    assert "x-access-token" not in run["reason"]
    _single_terminal(stack, run["id"])
    assert "src/feature.py" in stack.artifacts(run["id"])["diff"].read_text()
    _status_comment(stack, number, "push was rejected")


def test_transient_github_errors_are_retried(stack: BosunStack) -> None:
    stack.emulator.fault("error", status=502, method="POST", path="*/check-runs", count=2)
    stack.emulator.fault("error", status=503, method="POST", path="*/pulls", count=1)
    stack.emulator.fault("secondary_rate_limit", retry_after=0, path="*/comments", count=1)
    number = stack.emulator.create_issue(stack.repo, "Flaky GitHub", "x", "alice")
    stack.label(number)
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "review_ready", run
    assert len(stack.state()["pulls"]) == 1
    _status_comment(stack, number, "review ready")
    statuses = [r["status"] for r in stack.emulator.requests() if r["path"].endswith("/check-runs")]
    assert 502 in statuses and 201 in statuses


def test_container_start_failure(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Bad image", "x", "alice")
    stack.label(number, "bosun:badimage")
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "failed"
    assert "sandbox did not start" in run["reason"] and "bosun-absent:nope" in run["reason"]
    _single_terminal(stack, run["id"])
    _status_comment(stack, number, "sandbox did not start")


def test_workflow_change_is_denied_and_nothing_pushed(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Sneaky", "x", "alice")
    stack.label(number, "bosun:workflow")
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "failed"
    assert ".github/workflows/evil.yml" in run["reason"]
    assert run["branch"] not in stack.state()["branches"]
    assert "evil.yml" in stack.artifacts(run["id"])["diff"].read_text()
    policy = stack.events(run["id"], "policy")
    assert any(e["data"].get("decision") == "deny" for e in policy)
    _status_comment(stack, number, "evil.yml")


def test_secret_in_diff_is_rejected_with_file_and_line(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Leaky", "x", "alice")
    stack.label(number, "bosun:secret")
    (run,) = stack.wait_run({"failed", "review_ready"})
    assert run["state"] == "failed"
    assert "config.py" in run["reason"]
    assert "ghp_0123456789" not in run["reason"]
    assert run["branch"] not in stack.state()["branches"]


def test_untrusted_label_runs_nothing_and_gets_exactly_one_reply(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Please", "x", "mallory")
    stack.label(number, user="mallory")
    stack.emulator.remove_label(stack.repo, number, "bosun", "mallory")
    stack.label(number, user="mallory")

    def replies() -> list[str]:
        comments = _issue(stack, number)["comments"]  # type: ignore[attr-defined]
        return [c["body"] for c in comments if "write access" in c["body"]]

    stack.wait_for(replies, 20, "a refusal reply")
    stack.wait_for(
        lambda: len(stack.db("SELECT id FROM deliveries WHERE status != 'received'")) >= 4,
        20,
        "all deliveries processed",
    )
    assert len(replies()) == 1
    assert "@mallory" in replies()[0] and "you have read" in replies()[0]
    assert stack.runs() == []


def test_redelivery_creates_no_second_run(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Once", "x", "alice")
    stack.label(number)
    stack.wait_run({"review_ready", "failed"})
    labeled = [
        d
        for d in stack.emulator.deliveries()
        if d["event"] == "issues" and d["action"] == "labeled"
    ]
    guid = labeled[-1]["guid"]
    stack.emulator.redeliver(guid)
    stack.wait_for(
        lambda: stack.db("SELECT redeliveries FROM deliveries WHERE id=?", guid)[0][0] == 1,
        20,
        "the redelivery to be acknowledged",
    )
    assert len(stack.runs()) == 1


def test_unlabel_cancels_a_running_agent(stack: BosunStack) -> None:
    number = stack.emulator.create_issue(stack.repo, "Long", "x", "alice")
    stack.label(number, "bosun:slow")
    (run,) = stack.wait_run({"running"}, timeout=60)
    stack.wait_for(
        lambda: any("started" in e["data"].get("line", "") for e in stack.events(run["id"], "log")),
        30,
        "the agent's first line",
    )
    stack.emulator.remove_label(stack.repo, number, "bosun:slow", "alice")
    (done,) = stack.wait_run({"cancelled", "failed", "review_ready"}, timeout=30)
    assert done["state"] == "cancelled"
    assert "alice" in done["reason"]
    _single_terminal(stack, run["id"])
    assert "transcript" in stack.artifacts(run["id"])


def test_parallel_runs_never_share_a_worktree(stack: BosunStack) -> None:
    first = stack.emulator.create_issue(stack.repo, "First task", "alpha", "alice")
    second = stack.emulator.create_issue(stack.repo, "Second task", "beta", "alice")
    stack.label(first)
    stack.label(second)
    runs = stack.wait_run({"review_ready"}, timeout=120, count=2)
    assert len({r["branch"] for r in runs}) == 2
    diffs = {r["branch"]: stack.artifacts(r["id"])["diff"].read_text() for r in runs}
    for branch, diff in diffs.items():
        own, other = (
            ("alpha", "beta") if branch.startswith(f"bosun/{first}-") else ("beta", "alpha")
        )
        assert own in diff and other not in diff
    workspaces = {
        e["data"]["workspace"]
        for r in runs
        for e in stack.events(r["id"], "progress")
        if "workspace" in e["data"]
    }
    assert len(workspaces) == 2


def test_broken_repo_config_gets_one_comment_naming_the_key(stack: BosunStack) -> None:
    broken = "limits:\n  max_files_chnged: 3\ngates: nope\n"
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": broken}, user="alice")
    number = stack.emulator.create_issue(stack.repo, "Configured badly", "x", "alice")
    stack.label(number)

    def config_comments() -> list[str]:
        comments = _issue(stack, number)["comments"]  # type: ignore[attr-defined]
        return [c["body"] for c in comments if "bosun:config-error" in c["body"]]

    (body,) = stack.wait_for(config_comments, 30, "the config error comment")
    assert "limits.max_files_chnged" in body and "gates" in body
    assert "max_files_changed" in body  # the fix: did you mean
    assert stack.runs() == []
