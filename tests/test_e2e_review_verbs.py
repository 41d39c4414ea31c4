"""End to end: the verbs not covered elsewhere, each by a user allowed to use it — /status and
/help for anyone, /approve <sha> bound to the head, /approve cancel, /reject with a reason."""

from __future__ import annotations

from tests.stack import BosunStack
from tests.test_e2e_review import _audit, _comments, _ready_pr


def _replies_after(stack: BosunStack, pr: int, seen: int) -> list[str]:
    bot = stack.settings.github.bot_login
    return [c["body"] for c in _comments(stack, pr)[seen:] if c["user"] == bot]


def test_status_help_sha_bound_approval_approve_cancel_and_reject(stack: BosunStack) -> None:
    run, pr = _ready_pr(stack, "Verbs")
    seen = len(_comments(stack, pr))

    # Anyone may ask for the status and the help; help lists what the caller may use.
    stack.emulator.comment(stack.repo, pr, "/status", "mallory")
    stack.wait_for(lambda: _replies_after(stack, pr, seen), 30, "the /status reply")
    status = _replies_after(stack, pr, seen)[0]
    assert run["id"] in status and "review ready" in status.lower()
    seen = len(_comments(stack, pr))
    stack.emulator.comment(stack.repo, pr, "/help", "bob")
    stack.wait_for(lambda: _replies_after(stack, pr, seen), 30, "the /help reply")
    help_text = _replies_after(stack, pr, seen)[0]
    assert "/approve" in help_text and "/retry" in help_text and "/budget" in help_text

    # An approval names the head it saw: a stale SHA is refused, the head's SHA counts.
    stack.emulator.comment(stack.repo, pr, "/approve 0123456789ab", "bob")
    stack.wait_for(lambda: len(_audit(stack)) >= 3, 30, "the stale approval audited")
    assert _audit(stack)[-1][:3] == ("bob", "approve", "refused")
    stack.emulator.comment(stack.repo, pr, f"/approve {run['head_sha'][:12]}", "bob")
    stack.wait_for(lambda: stack.runs()[0]["state"] == "approved", 30, "the run approved")
    assert stack.db("SELECT actor, sha FROM approvals WHERE run_id=?", run["id"]) == [
        ("bob", run["head_sha"])
    ]

    # /approve cancel withdraws it: the run is back in review and the approval is void.
    stack.emulator.comment(stack.repo, pr, "/approve cancel", "bob")
    stack.wait_for(lambda: stack.runs()[0]["state"] == "review_ready", 30, "back in review")
    (valid,) = stack.db("SELECT invalidated_at IS NULL FROM approvals WHERE run_id=?", run["id"])
    assert valid == (0,)

    # /reject by a writer ends the run with the reason on record.
    stack.emulator.comment(stack.repo, pr, "/reject the approach is wrong", "bob")
    stack.wait_for(lambda: stack.runs()[0]["state"] == "rejected", 30, "the run rejected")
    statuses = [e["data"] for e in stack.events(run["id"], "status")]
    assert statuses[-1]["to"] == "rejected" and statuses[-1]["actor"] == "bob"
    assert "the approach is wrong" in statuses[-1]["reason"]
