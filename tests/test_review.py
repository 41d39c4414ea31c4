"""Review-loop decisions (SPEC §8, §3.3 buttons): permissions, state rules, approvals."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.domain.commands import Command, parse_commands
from bot.domain.payloads import ParsedEvent, parse_event
from bot.domain.repoconfig import RepoConfig, parse_repo_config
from bot.domain.review import (
    REVIEW_END,
    REVIEW_START,
    ApprovalSnapshot,
    Approve,
    Cancel,
    FoldFeedback,
    Hold,
    IgnoreCommand,
    RaiseBudget,
    RefuseCommand,
    Reject,
    ReplyHelp,
    ReplyStatus,
    Resume,
    RetryRun,
    ReviewDecision,
    RevokeApproval,
    RunSnapshot,
    Unhold,
    approval_status,
    authorize,
    button_command,
    decide_command,
    decide_push,
    decide_review,
    head_when_written,
    invalidate_on_push,
    merge_refusal,
    partial_paths,
    review_section,
    with_review_section,
)
from bot.domain.states import RunState

S = RunState
HEAD = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
OLD = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d"
DEFAULT = RepoConfig()
CHANGED = ("src/app.py", "src/util.py", "docs/guide.md", "tests/test_app.py")
WEBHOOKS = Path(__file__).parent / "fixtures" / "webhooks"


def snapshot(state: RunState = S.REVIEW_READY, **changes: Any) -> RunSnapshot:
    run = RunSnapshot(
        run_id="r18f0c0ffee",
        state=state,
        requester="alice",
        head_sha=HEAD,
        pr_number=12,
        changed_paths=CHANGED,
        budget_usd=5.0,
        cost_usd=1.25,
    )
    return replace(run, **changes)


def cmd(text: str) -> Command:
    parsed = parse_commands(text)
    command = parsed.action or (parsed.queries[0] if parsed.queries else None)
    assert command is not None, parsed
    return command


def decide(
    text: str,
    run: RunSnapshot | None = None,
    *,
    actor: str = "bob",
    permission: str | None = "write",
    config: RepoConfig = DEFAULT,
    now_sha: str | None = HEAD,
    actor_type: str = "User",
) -> ReviewDecision:
    return decide_command(
        cmd(text),
        run or snapshot(),
        actor,
        permission,
        config,
        now_sha=now_sha,
        actor_type=actor_type,
    )


def approval(actor: str, sha: str = HEAD, **changes: Any) -> ApprovalSnapshot:
    return replace(ApprovalSnapshot(actor=actor, sha=sha), **changes)


# --- every verb: success, and refusal for an under-privileged user -------------------------

CASES: list[tuple[str, RunState, type]] = [
    ("/approve", S.REVIEW_READY, Approve),
    ("/reject too broad", S.REVIEW_READY, Reject),
    ("/retry add a test", S.FAILED, RetryRun),
    ("/cancel", S.RUNNING, Cancel),
    ("/resume", S.TIMED_OUT, Resume),
    ("/hold", S.QUEUED, Hold),
    ("/budget +5", S.RUNNING, RaiseBudget),
    ("/status", S.RUNNING, ReplyStatus),
    ("/help", S.RUNNING, ReplyHelp),
]


@pytest.mark.parametrize(("text", "state", "kind"), CASES, ids=[c[0] for c in CASES])
def test_writer_may_use_every_verb(text: str, state: RunState, kind: type) -> None:
    decision = decide(text, snapshot(state))
    assert isinstance(decision, kind), decision
    assert decision.outcome == "accepted"
    assert decision.rule


def test_unhold_by_writer() -> None:
    assert isinstance(decide("/unhold", snapshot(S.QUEUED, on_hold=True)), Unhold)


@pytest.mark.parametrize(
    ("text", "state", "needs"),
    [
        ("/approve", S.REVIEW_READY, "people with write access"),
        ("/reject no", S.REVIEW_READY, "people with write access"),
        ("/retry again", S.FAILED, "requester (@alice) or people with write access"),
        ("/cancel", S.RUNNING, "requester (@alice) or people with write access"),
        ("/resume", S.TIMED_OUT, "requester (@alice) or people with write access"),
        ("/hold", S.QUEUED, "needs write access"),
        ("/unhold", S.QUEUED, "needs write access"),
        ("/budget +5", S.RUNNING, "needs write access"),
    ],
)
def test_reader_is_refused_with_the_requirement(text: str, state: RunState, needs: str) -> None:
    run = snapshot(state, on_hold=text == "/unhold")
    decision = decide(text, run, actor="mallory", permission="read")
    assert isinstance(decision, RefuseCommand)
    assert decision.outcome == "refused"
    assert decision.reply.startswith("@mallory, ")
    assert needs in decision.reply
    assert "you have read" in decision.reply
    assert decision.reply.count(".") >= 1 and decision.reply.endswith(".")


@pytest.mark.parametrize("text", ["/status", "/help"])
def test_anyone_may_ask_for_status_and_help(text: str) -> None:
    decision = decide(text, actor="mallory", permission="none")
    assert isinstance(decision, ReplyStatus | ReplyHelp)


def test_unknown_permission_is_said_so() -> None:
    decision = decide("/hold", snapshot(S.QUEUED), actor="mallory", permission=None)
    assert isinstance(decision, RefuseCommand)
    assert "your permission could not be checked" in decision.reply


@pytest.mark.parametrize("text", ["/retry try again", "/cancel", "/resume"])
def test_requester_without_write_may_retry_cancel_resume(text: str) -> None:
    state = {"/cancel": S.RUNNING, "/resume": S.TIMED_OUT}.get(text, S.FAILED)
    decision = decide(text, snapshot(state), actor="Alice", permission="read")
    assert isinstance(decision, RetryRun | Cancel | Resume)
    assert decision.rule == "command.requester"


@pytest.mark.parametrize(
    ("actor", "actor_type"),
    [("bosun[bot]", "Bot"), ("renovate[bot]", "Bot"), ("ci-robot", "Bot")],
)
def test_bots_are_ignored_whatever_their_permission(actor: str, actor_type: str) -> None:
    for text in ("/approve", "/status", "/cancel"):
        decision = decide(text, actor=actor, permission="admin", actor_type=actor_type)
        assert isinstance(decision, IgnoreCommand)
        assert decision.rule == "command.bots_ignored"


def test_no_run_is_ignored() -> None:
    decision = decide_command(cmd("/approve"), None, "bob", "write", DEFAULT, now_sha=HEAD)
    assert isinstance(decision, IgnoreCommand)


# --- approve rules ------------------------------------------------------------------------


def test_approval_is_bound_to_the_head_at_comment_time() -> None:
    decision = decide("/approve")
    assert isinstance(decision, Approve)
    assert decision.sha == HEAD
    assert decision.actor == "bob"
    assert decision.general


def test_approve_names_a_sha_that_is_no_longer_the_head() -> None:
    decision = decide(f"/approve {OLD[:7]}")
    assert isinstance(decision, RefuseCommand)
    assert decision.rule == "approval.sha_bound"
    assert f"the PR head is now `{HEAD[:12]}`" in decision.reply
    assert isinstance(decide(f"/approve {HEAD[:9].upper()}"), Approve)


def test_self_approval_is_refused_by_default() -> None:
    decision = decide("/approve", actor="alice", permission="admin")
    assert isinstance(decision, RefuseCommand)
    assert decision.rule == "approval.allow_self_approval"
    assert "you requested this run" in decision.reply


def test_self_approval_allowed_by_config_counts() -> None:
    config = parse_repo_config("approval:\n  allow_self_approval: true\n")
    decision = decide("/approve", actor="alice", permission="write", config=config)
    assert isinstance(decision, Approve)
    run = snapshot(approvals=(decision.as_snapshot(),))
    assert approval_status(run, config).satisfied
    assert not approval_status(run, DEFAULT).satisfied


def test_approvers_list_is_exclusive() -> None:
    config = parse_repo_config("approval:\n  approvers: [carol, Dave]\n")
    refused = decide("/approve", actor="bob", permission="admin", config=config)
    assert isinstance(refused, RefuseCommand)
    assert "one of @carol, @Dave" in refused.reply
    allowed = decide("/approve", actor="dave", permission="read", config=config)
    assert isinstance(allowed, Approve)
    assert allowed.rule == "approval.approvers"


def test_approvers_minimum_permission() -> None:
    config = parse_repo_config("approval:\n  approvers: maintain\n")
    assert isinstance(decide("/approve", permission="write", config=config), RefuseCommand)
    assert isinstance(decide("/approve", permission="maintain", config=config), Approve)
    # /reject follows the same rule; /hold stays a write-access command.
    assert isinstance(decide("/reject no", permission="write", config=config), RefuseCommand)
    assert isinstance(decide("/hold", permission="write", config=config), Hold)


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (S.RUNNING, "works only once it is review-ready"),
        (S.GATES, "works only once it is review-ready"),
        (S.APPROVED, "needs no further approval"),
        (S.MERGED, "already merged; it needs no approval"),
    ],
)
def test_approve_only_in_review_ready(state: RunState, says: str) -> None:
    decision = decide("/approve", snapshot(state))
    assert isinstance(decision, RefuseCommand)
    assert says in decision.reply


def test_approve_cancel_withdraws_only_your_own_approval() -> None:
    run = snapshot(approvals=(approval("bob"),))
    assert isinstance(decide("/approve cancel", run), RevokeApproval)
    # Losing write access does not stop you withdrawing your approval.
    assert isinstance(decide("/approve cancel", run, permission="read"), RevokeApproval)
    refused = decide("/approve cancel", run, actor="carol")
    assert isinstance(refused, RefuseCommand)
    assert "no approval on this run" in refused.reply


def test_required_approvals_two() -> None:
    config = parse_repo_config("approval:\n  required_approvals: 2\n")
    run = snapshot(approvals=(approval("bob"),))
    status = approval_status(run, config)
    assert (status.satisfied, status.have, status.need) == (False, 1, 2)
    # The same person twice is still one approval.
    run = snapshot(approvals=(approval("bob"), approval("Bob")))
    assert approval_status(run, config).have == 1
    run = snapshot(approvals=(approval("bob"), approval("carol")))
    status = approval_status(run, config)
    assert status.satisfied and status.counted == ["bob", "carol"]


def test_requester_approval_never_counts_without_config() -> None:
    run = snapshot(approvals=(approval("alice"),))
    status = approval_status(run, DEFAULT)
    assert not status.satisfied and status.have == 0


# --- SHA binding and pushes ---------------------------------------------------------------


def test_tree_changing_push_invalidates_approvals() -> None:
    approvals = [approval("bob", OLD), approval("carol", OLD)]
    after = invalidate_on_push(approvals, HEAD, tree_changed=True)
    assert [a.valid for a in after] == [False, False]
    run = snapshot(approvals=tuple(after))
    assert not approval_status(run, DEFAULT).satisfied


def test_same_tree_push_keeps_approvals() -> None:
    approvals = [approval("bob", OLD)]
    after = invalidate_on_push(approvals, HEAD, tree_changed=False)
    assert after == [approval("bob", HEAD)]
    assert approval_status(snapshot(approvals=tuple(after)), DEFAULT).satisfied


def test_approval_on_an_old_sha_does_not_count() -> None:
    run = snapshot(approvals=(approval("bob", OLD),))
    assert not approval_status(run, DEFAULT).satisfied


# --- partial approvals and path approvers -------------------------------------------------


def test_partial_paths_split() -> None:
    keep, revert = partial_paths(CHANGED, ["src/**", "tests/"])
    assert keep == ("src/app.py", "src/util.py", "tests/test_app.py")
    assert revert == ("docs/guide.md",)


def test_partial_approval_reverts_the_rest() -> None:
    decision = decide("/approve src/** tests/test_app.py")
    assert isinstance(decision, Approve)
    assert decision.paths == ("src/**", "tests/test_app.py")
    assert decision.revert == ("docs/guide.md",)
    status = approval_status(snapshot(approvals=(decision.as_snapshot(),)), DEFAULT)
    assert status.satisfied
    assert status.keep == ("src/app.py", "src/util.py", "tests/test_app.py")
    assert status.revert == ("docs/guide.md",)


def test_partial_approval_of_nothing_changed_is_refused() -> None:
    decision = decide("/approve looks good")
    assert isinstance(decision, RefuseCommand)
    assert "`looks`, `good` match no changed file" in decision.reply


PATHS = parse_repo_config(
    "approval:\n  path_approvers:\n    'docs/**': [dana, alice]\n    'src/util.py': [erin]\n"
)


def test_path_approvers_are_required() -> None:
    run = snapshot(approvals=(approval("bob"),))
    status = approval_status(run, PATHS)
    assert not status.satisfied
    # The requester is listed for docs but cannot approve her own run.
    assert status.missing_path_approvers == {"docs/**": ["dana"], "src/util.py": ["erin"]}


def test_path_approver_may_approve_but_does_not_count_as_general() -> None:
    decision = decide("/approve", actor="dana", permission="read", config=PATHS)
    assert isinstance(decision, Approve)
    assert decision.rule == "approval.path_approvers" and not decision.general
    erin = decide("/approve", actor="erin", permission="read", config=PATHS)
    assert isinstance(erin, Approve)
    owners_only = snapshot(approvals=(decision.as_snapshot(), erin.as_snapshot()))
    status = approval_status(owners_only, PATHS)
    assert (status.have, status.missing_path_approvers, status.satisfied) == (0, {}, False)
    everyone = replace(owners_only, approvals=(*owners_only.approvals, approval("bob")))
    assert approval_status(everyone, PATHS).satisfied


def test_path_approver_of_an_unchanged_path_is_not_an_approver() -> None:
    run = snapshot(changed_paths=("src/app.py",))
    decision = decide("/approve", run, actor="dana", permission="read", config=PATHS)
    assert isinstance(decision, RefuseCommand)
    assert "`approval.path_approvers` of a changed path" in decision.reply


def test_partial_approval_spares_reverted_paths_their_owners() -> None:
    run = snapshot(approvals=(approval("bob", paths=("src/app.py", "tests/**")),))
    status = approval_status(run, PATHS)
    assert status.satisfied
    assert status.revert == ("src/util.py", "docs/guide.md")


def test_path_approver_partial_approval_covers_only_its_paths() -> None:
    config = parse_repo_config("approval:\n  path_approvers:\n    'src/**': [erin]\n")
    erin = approval("erin", paths=("src/app.py",), general=False)
    run = snapshot(approvals=(approval("bob"), erin))
    assert approval_status(run, config).missing_path_approvers == {"src/**": ["erin"]}


def test_only_the_requester_owns_a_path() -> None:
    config = parse_repo_config("approval:\n  path_approvers:\n    'docs/**': [alice]\n")
    run = snapshot(approvals=(approval("bob"), approval("alice")))
    assert approval_status(run, config).missing_path_approvers == {"docs/**": []}


# --- state rules --------------------------------------------------------------------------


REFUSALS: list[tuple[str, RunState, str]] = [
    ("/cancel", S.REVIEW_READY, "use `/reject <reason>`"),
    ("/cancel", S.APPROVED, "use `/reject <reason>`"),
    ("/cancel", S.CANCELLED, "already ended"),
    ("/cancel", S.MERGED, "already ended"),
    ("/cancel", S.FAILED, "already ended"),
    ("/retry again", S.APPROVED, "/approve cancel"),
    ("/retry again", S.REJECTED, "/bosun run"),
    ("/retry again", S.MERGED, "/bosun run"),
    ("/retry", S.RUNNING, "fold it into the next run"),
    ("/reject nope", S.RUNNING, "use `/cancel`"),
    ("/reject nope", S.FAILED, "nothing to reject"),
    ("/hold", S.MERGED, "already ended"),
    ("/budget +5", S.CANCELLED, "only matters for a run that goes on"),
] + [("/resume", s, "only a timed-out run can be resumed") for s in S if s is not S.TIMED_OUT]


@pytest.mark.parametrize(("text", "state", "says"), REFUSALS)
def test_state_rules_refuse_politely(text: str, state: RunState, says: str) -> None:
    decision = decide(text, snapshot(state))
    assert isinstance(decision, RefuseCommand), decision
    assert decision.rule.startswith("state.")
    assert decision.reply.startswith(f"@bob, this run is {state.value.replace('_', ' ')}; ")
    assert says in decision.reply


@pytest.mark.parametrize("state", [S.QUEUED, S.PREPARING, S.RUNNING, S.GATES])
def test_cancel_before_review(state: RunState) -> None:
    decision = decide("/cancel duplicate of #3", snapshot(state))
    assert isinstance(decision, Cancel)
    assert decision.reason == "cancelled by @bob: duplicate of #3"


@pytest.mark.parametrize("state", [S.REVIEW_READY, S.FAILED, S.TIMED_OUT, S.CANCELLED])
def test_retry_states(state: RunState) -> None:
    decision = decide("/retry cover the empty case\nand the None case", snapshot(state))
    assert isinstance(decision, RetryRun)
    assert decision.feedback == "cover the empty case\nand the None case"


@pytest.mark.parametrize("state", [S.QUEUED, S.RUNNING, S.GATES])
def test_retry_while_running_folds_feedback(state: RunState) -> None:
    decision = decide("/retry also handle 404", snapshot(state))
    assert isinstance(decision, FoldFeedback)
    assert decision.feedback == "also handle 404"


def test_reject_in_review() -> None:
    decision = decide("/reject nope\nthe API must stay", snapshot(S.APPROVED))
    assert isinstance(decision, Reject) and decision.reason == "nope\nthe API must stay"


def test_hold_and_unhold() -> None:
    assert isinstance(decide("/hold", snapshot(S.REVIEW_READY)), Hold)
    held = decide("/hold", snapshot(S.REVIEW_READY, on_hold=True))
    assert isinstance(held, RefuseCommand) and "already on hold" in held.reply
    not_held = decide("/unhold", snapshot(S.RUNNING))
    assert isinstance(not_held, RefuseCommand) and "not on hold" in not_held.reply


def test_budget_raise() -> None:
    decision = decide("/budget +2.50", snapshot(S.RUNNING))
    assert isinstance(decision, RaiseBudget)
    assert (decision.amount, decision.new_budget_usd) == (2.5, 7.5)
    assert isinstance(decide("/budget +5", snapshot(S.TIMED_OUT)), RaiseBudget)


def test_approve_while_on_hold_is_recorded() -> None:
    assert isinstance(decide("/approve", snapshot(on_hold=True)), Approve)


# --- replies ------------------------------------------------------------------------------


def test_status_reply_lists_approvals_and_missing_owners() -> None:
    run = snapshot(approvals=(approval("bob"),), on_hold=True)
    decision = decide("/status", run, actor="mallory", permission="read", config=PATHS)
    assert isinstance(decision, ReplyStatus)
    assert "**review ready** and **on hold**" in decision.text
    assert "Approvals: 1 of 1 (@bob)" in decision.text
    assert "`docs/**` still needs an approval from @dana" in decision.text
    assert "$1.25 of $5.00" in decision.text


def test_help_reply_knows_the_approvers_list() -> None:
    config = parse_repo_config("approval:\n  approvers: [carol]\n")
    decision = decide("/help", actor="bob", permission="admin", config=config)
    assert isinstance(decision, ReplyHelp)
    approve_row = next(line for line in decision.text.splitlines() if "`/approve" in line)
    assert approve_row.endswith("— |")


def test_policy_event_payload() -> None:
    decision = decide("/approve src/**")
    event = decision.as_policy_event()
    assert event["decision"] == "approve"
    assert event["outcome"] == "accepted"
    assert event["rule"] == "approval.approvers>=write"
    assert event["sha"] == HEAD and event["paths"] == ("src/**",)
    json.dumps(event)  # JSON-safe for the run event


def test_authorize_alone() -> None:
    run = snapshot()
    allowed = authorize(cmd("/retry x"), "ALICE", "User", "none", run, DEFAULT)
    assert (allowed.allowed, allowed.rule, allowed.reason) == (True, "command.requester", "")
    refused = authorize(cmd("/budget +1"), "eve", "User", "triage", run, DEFAULT)
    assert not refused.allowed and "needs write access" in refused.reason


# --- buttons ------------------------------------------------------------------------------


def examples(event: str) -> list[ParsedEvent]:
    data = json.loads((WEBHOOKS / f"{event}.json").read_text())
    parsed = [parse_event(event, example["payload"]) for example in data["examples"]]
    return [p for p in parsed if isinstance(p, ParsedEvent)]


def test_buttons_map_to_commands() -> None:
    approve = button_command("approve", head_sha=HEAD)
    assert approve is not None and (approve.verb, approve.sha) == ("approve", HEAD)
    retry = button_command("retry", head_sha=HEAD)
    assert retry is not None and (retry.verb, retry.args, retry.sha) == ("retry", "", None)
    cancel = button_command("cancel")
    assert cancel is not None and cancel.verb == "cancel"
    assert button_command("lgtm|26764") is None


def test_real_check_run_events_map_to_buttons() -> None:
    verbs = []
    for event in examples("check_run"):
        check = event.check_run
        assert check is not None
        if event.action == "completed":  # a check reported: merge when green re-reads them
            assert event.checks_changed is not None
            assert event.checks_changed.sha == check.head_sha
            continue
        identifier = check.requested_action or event.action or ""
        command = button_command(identifier, head_sha=check.head_sha)
        verbs.append(command.verb if command else None)
    # The examples hold one click on a foreign button and two "Re-run" requests.
    assert sorted(verbs, key=str) == [None, "retry", "retry"]


def test_approve_button_is_permission_checked_and_bound_to_its_commit() -> None:
    button = button_command("approve", head_sha=OLD)
    assert button is not None
    stale = decide_command(button, snapshot(), "bob", "write", DEFAULT, now_sha=HEAD)
    assert isinstance(stale, RefuseCommand) and "the PR head is now" in stale.reply
    reader = decide_command(button, snapshot(), "eve", "read", DEFAULT, now_sha=OLD)
    assert isinstance(reader, RefuseCommand)
    fresh = button_command("approve", head_sha=HEAD)
    assert fresh is not None
    ok = decide_command(fresh, snapshot(), "bob", "write", DEFAULT, now_sha=HEAD)
    assert isinstance(ok, Approve) and ok.sha == HEAD


def test_rerun_link_retries_a_failed_run() -> None:
    button = button_command("rerequested")
    assert button is not None
    decision = decide_command(button, snapshot(S.FAILED), "alice", "read", DEFAULT, now_sha=HEAD)
    assert isinstance(decision, RetryRun) and decision.feedback == ""


# --- GitHub reviews -----------------------------------------------------------------------


def review_event(state: str) -> ParsedEvent:
    data = json.loads((WEBHOOKS / "pull_request_review.json").read_text())
    payload: dict[str, Any] = copy.deepcopy(data["examples"][0]["payload"])
    payload["review"]["state"] = state
    event = parse_event("pull_request_review", payload)
    assert isinstance(event, ParsedEvent)
    return event


def test_real_commented_reviews_are_recorded_only() -> None:
    for event in examples("pull_request_review"):
        assert event.review is not None and event.pull_request is not None
        decision = decide_review(
            event.review, snapshot(), "write", DEFAULT, now_sha=event.pull_request.head_sha
        )
        assert isinstance(decision, IgnoreCommand) and decision.rule == "review.commented"


def test_approved_review_counts_as_approve_bound_to_its_commit() -> None:
    event = review_event("APPROVED")
    assert event.review is not None and event.pull_request is not None
    head = event.pull_request.head_sha
    run = snapshot(head_sha=head)
    decision = decide_review(event.review, run, "write", DEFAULT, now_sha=head)
    assert isinstance(decision, Approve)
    assert (decision.actor, decision.sha) == (event.review.user.login, event.review.commit_id)
    newer = decide_review(event.review, run, "write", DEFAULT, now_sha=HEAD)
    assert isinstance(newer, RefuseCommand) and "the PR head is now" in newer.reply
    reader = decide_review(event.review, run, "read", DEFAULT, now_sha=head)
    assert isinstance(reader, RefuseCommand)


def test_changes_requested_review_is_a_retry_and_a_comment_review_is_recorded_only() -> None:
    event = review_event("CHANGES_REQUESTED")
    assert event.review is not None
    decision = decide_review(event.review, snapshot(), "write", DEFAULT, now_sha=HEAD)
    assert isinstance(decision, RetryRun)  # tests/test_triggers_expected.py has the details
    commented = review_event("COMMENTED")
    assert commented.review is not None
    recorded = decide_review(commented.review, snapshot(), "write", DEFAULT, now_sha=HEAD)
    assert isinstance(recorded, IgnoreCommand)
    assert recorded.rule == "review.commented"


# --- the status comment's review section --------------------------------------------------


def test_review_section_says_which_approvals_still_count() -> None:
    run = snapshot(
        S.APPROVED,
        on_hold=True,
        approvals=(
            ApprovalSnapshot("bob", HEAD),
            ApprovalSnapshot("carol", OLD),
            ApprovalSnapshot("dave", OLD, ("src/**",), valid=False),
        ),
    )
    section = review_section(run, "The branch moved; 1 approval(s) no longer count.")
    assert section.startswith(REVIEW_START) and section.endswith(REVIEW_END)
    assert "**approved** · on hold" in section
    assert f"@bob approved `{HEAD[:12]}`: counts" in section
    assert f"@carol approved `{OLD[:12]}`: on an earlier commit" in section
    assert "@dave approved" in section and "(only `src/**`): no longer counts" in section
    assert "> The branch moved; 1 approval(s) no longer count." in section
    assert "no approvals yet" in review_section(snapshot())


def test_review_section_is_edited_in_place() -> None:
    body = "<!-- bosun:status -->\n**Bosun** · run `r1` · **review ready**\n\n| Phase |\n"
    first = with_review_section(body, review_section(snapshot(), "first"))
    assert first.startswith(body.rstrip("\n")) and first.count(REVIEW_START) == 1
    second = with_review_section(first, review_section(snapshot(), "second"))
    assert second.count(REVIEW_START) == 1 and second.count(REVIEW_END) == 1
    assert "> second" in second and "> first" not in second
    assert second.startswith(body.rstrip("\n"))
    tail = first + "\n\nfooter kept"
    assert with_review_section(tail, "X").endswith("X\n\nfooter kept")


# --- decided on the run as it is now --------------------------------------------------------

SINCE = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_a_comment_is_about_the_head_only_if_written_after_it_arrived() -> None:
    run = snapshot(head_since=SINCE)
    assert head_when_written(run, SINCE + timedelta(milliseconds=1)) == HEAD
    assert head_when_written(run, SINCE - timedelta(milliseconds=1)) is None
    naive = snapshot(head_since=SINCE.replace(tzinfo=None))  # SQLite hands back naive UTC
    assert head_when_written(naive, SINCE + timedelta(seconds=1)) == HEAD
    assert head_when_written(snapshot(head_since=None), SINCE) == HEAD


def test_an_approval_is_never_bound_to_a_head_the_writer_may_not_have_seen() -> None:
    unknown = decide("/approve", now_sha=None)
    assert isinstance(unknown, RefuseCommand) and unknown.rule == "approval.head_moved"
    assert f"moved to `{HEAD[:12]}` after you wrote this" in unknown.reply
    stale = decide("/approve", now_sha=OLD)
    assert isinstance(stale, RefuseCommand) and stale.rule == "approval.head_moved"
    assert f"you approved `{OLD[:12]}`" in stale.reply
    named = decide(f"/approve {HEAD[:10]}", now_sha=None)  # naming the head is seeing it
    assert isinstance(named, Approve) and named.sha == HEAD


def test_a_merged_run_answers_with_its_merge_commit() -> None:
    merged = snapshot(S.MERGED, merged_sha=OLD)
    reject = decide("/reject too late", merged)
    assert isinstance(reject, RefuseCommand) and reject.rule == "state.merged"
    assert reject.reply == (
        f"@bob, this run was already merged at `{OLD[:12]}`; there is nothing to reject."
    )
    approve = decide("/approve", merged)
    assert isinstance(approve, RefuseCommand) and "already merged at" in approve.reply
    withdraw = decide("/approve cancel", merged)
    assert isinstance(withdraw, RefuseCommand) and "no approval to withdraw" in withdraw.reply


def test_a_push_rebinds_on_the_same_tree_and_invalidates_otherwise() -> None:
    approved = snapshot(S.APPROVED, approvals=(approval("bob", id=1), approval("carol", id=2)))
    same = decide_push(approved, OLD, same_tree=True)
    assert same.kind == "rebind" and not same.back_to_review
    assert [(a.actor, a.sha, a.valid) for a in same.approvals] == [
        ("bob", OLD, True),
        ("carol", OLD, True),
    ]
    changed = decide_push(approved, OLD, same_tree=False)
    assert changed.kind == "invalidate" and changed.back_to_review
    assert [a.valid for a in changed.approvals] == [False, False]
    in_review = decide_push(replace(approved, state=S.REVIEW_READY), OLD, same_tree=False)
    assert in_review.kind == "invalidate" and not in_review.back_to_review
    gone = approval("dave", valid=False, id=3)
    assert decide_push(snapshot(approvals=(gone,)), OLD, same_tree=False).approvals == ()
    merged = decide_push(snapshot(S.MERGED, merged_sha=OLD), "f" * 40, same_tree=False)
    assert merged.kind == "ignore" and merged.reason == f"the run was merged at {OLD[:12]}"
    assert decide_push(approved, HEAD, same_tree=False).kind == "ignore"


def test_the_merge_is_refused_unless_the_approvals_cover_exactly_that_head() -> None:
    ok = snapshot(S.APPROVED, approvals=(approval("bob"),))
    assert merge_refusal(ok, DEFAULT, HEAD) is None
    assert merge_refusal(replace(ok, state=S.REVIEW_READY), DEFAULT, HEAD) == (
        "the run is review ready"
    )
    assert merge_refusal(replace(ok, on_hold=True), DEFAULT, HEAD) == "the run is on hold"
    moved = merge_refusal(replace(ok, head_sha=OLD), DEFAULT, HEAD)
    assert moved == f"the head is `{OLD[:12]}`, not `{HEAD[:12]}`"
    stale = replace(ok, approvals=(approval("bob", sha=OLD),))
    assert (
        merge_refusal(stale, DEFAULT, HEAD)
        == f"the approvals on `{HEAD[:12]}` do not suffice (0 of 1)"
    )
    # Bosun's revert commit of a partial approval: approvals on the approved head count.
    reverted = replace(ok, head_sha=OLD)
    assert merge_refusal(reverted, DEFAULT, HEAD, merge_sha=OLD) is None


def test_the_review_section_stays_small_whatever_happened() -> None:
    many = tuple(
        approval(f"user{i}", paths=tuple(f"p{j}.py" for j in range(500))) for i in range(80)
    )
    section = review_section(snapshot(approvals=many), "x" * 100_000)
    assert len(section) < 12_000
    assert "60 earlier approval(s) not shown" in section and "and 490 more" in section


def test_the_review_section_is_found_in_a_status_comment() -> None:
    from bot.domain.review import review_section_of, with_review_section

    section = "<!-- bosun:review -->\n\n**Review** · **approved**\n<!-- /bosun:review -->"
    body = with_review_section("status line\n", section)
    assert review_section_of(body) == section
    assert review_section_of("status line\n") is None
    # The run's next status write keeps it.
    assert review_section_of(with_review_section("new status\n", section)) == section
