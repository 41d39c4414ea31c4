"""Triggers people expect (assignment to the App, an @-mention, "Request changes", Prow's
`/hold cancel`), decided without I/O on real payload shapes from `@octokit/webhooks-examples`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bot.domain.commands import mention_retry, parse_commands, review_retry
from bot.domain.payloads import ParsedEvent, ReviewRef, parse_event
from bot.domain.repoconfig import RepoConfig
from bot.domain.review import RefuseCommand, RetryRun, RunSnapshot, Unhold, decide_command
from bot.domain.review.decide import decide_review
from bot.domain.states import RunState
from bot.domain.triggers import RefuseStart, StartRun, decide, parse_mention, trigger_request

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
BOT = "bosun[bot]"
PROFILES = frozenset({"default"})


def example(event: str, action: str | None) -> dict[str, Any]:
    data = json.loads((FIXTURES / f"{event}.json").read_text())
    for item in data["examples"]:
        if item["payload"].get("action") == action:
            return copy.deepcopy(item["payload"])
    raise AssertionError(f"no {event}.{action} example")


def assigned(assignee: str, assignee_type: str = "Bot", sender: str = "alice") -> ParsedEvent:
    payload = example("issues", "assigned")
    payload["assignee"] = {**payload["assignee"], "login": assignee, "type": assignee_type}
    payload["sender"] = {**payload["sender"], "login": sender, "type": "User"}
    parsed = parse_event("issues", payload)
    assert isinstance(parsed, ParsedEvent)
    return parsed


def commented(body: str, *, on_pr: bool = False, sender: str = "alice") -> ParsedEvent:
    payload = example("issue_comment", "created")
    payload["comment"]["body"] = body
    payload["comment"]["user"] = {**payload["comment"]["user"], "login": sender, "type": "User"}
    payload["sender"] = {**payload["sender"], "login": sender, "type": "User"}
    payload["issue"].pop("pull_request", None)
    if on_pr:
        payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/o/r/pulls/1"}
    parsed = parse_event("issue_comment", payload)
    assert isinstance(parsed, ParsedEvent)
    return parsed


def decided(event: ParsedEvent, permission: str) -> Any:
    request = trigger_request(event, RepoConfig(), BOT, known_profiles=PROFILES)
    assert request is not None
    return decide(
        request, RepoConfig(), permission, server_allowed_users=frozenset(), known_profiles=PROFILES
    )


def test_assigning_the_issue_to_the_apps_bot_user_starts_a_run() -> None:
    decision = decided(assigned(BOT), "write")
    assert isinstance(decision, StartRun)
    assert (decision.source, decision.requester, decision.profile) == ("assign", "alice", "default")


@pytest.mark.parametrize("assignee", ["alice", "bosun", "bosun-helper[bot]", "other[bot]"])
def test_assigning_anyone_else_asks_nothing(assignee: str) -> None:
    kind = "Bot" if assignee.endswith("[bot]") else "User"
    assert trigger_request(assigned(assignee, kind), RepoConfig(), BOT) is None


def test_assignment_by_an_untrusted_user_is_refused_with_one_reply() -> None:
    decision = decided(assigned(BOT, sender="mallory"), "read")
    assert isinstance(decision, RefuseStart)
    assert decision.reply.startswith("@mallory, only people with write access")


def test_assignment_by_a_bot_is_ignored() -> None:
    payload = example("issues", "assigned")
    payload["assignee"] = {**payload["assignee"], "login": BOT, "type": "Bot"}
    payload["sender"] = {**payload["sender"], "login": "renovate[bot]", "type": "Bot"}
    parsed = parse_event("issues", payload)
    assert trigger_request(parsed, RepoConfig(), BOT) is None


def test_every_vendored_assignment_example_parses_its_assignee() -> None:
    data = json.loads((FIXTURES / "issues.json").read_text())
    found = [e["payload"] for e in data["examples"] if e["payload"]["action"] == "assigned"]
    assert found
    for payload in found:
        parsed = parse_event("issues", payload)
        assert isinstance(parsed, ParsedEvent) and parsed.assignee is not None
        assert parsed.assignee.login == payload["assignee"]["login"]


@pytest.mark.parametrize(
    ("body", "instructions"),
    [
        ("@bosun please add a regression test", "please add a regression test"),
        ("Hey @Bosun, can you fix the redirect?", "Hey, can you fix the redirect?"),
        ("@bosun[bot] fix it\n\nand keep the API", "fix it\n\nand keep the API"),
        ("@bosun", ""),
    ],
)
def test_a_mention_on_an_issue_starts_a_run_with_its_text(body: str, instructions: str) -> None:
    decision = decided(commented(body), "write")
    assert isinstance(decision, StartRun)
    assert (decision.source, decision.instructions) == ("mention", instructions)


@pytest.mark.parametrize(
    "body",
    [
        "ping @bosun-helper about it",
        "mail me at me@bosun.dev",
        "> @bosun do it\n\nquoted only",
        "```\n@bosun do it\n```",
        "    @bosun indented code",
        "<!-- @bosun hidden -->visible",
        "see github.com/@bosun",
    ],
)
def test_what_is_not_a_mention(body: str) -> None:
    assert parse_mention(body, BOT) is None
    assert trigger_request(commented(body), RepoConfig(), BOT) is None


def test_a_mention_by_an_untrusted_user_is_refused() -> None:
    decision = decided(commented("@bosun delete everything", sender="mallory"), "read")
    assert isinstance(decision, RefuseStart)


def test_a_mention_on_a_pull_request_starts_nothing_there() -> None:
    assert trigger_request(commented("@bosun again", on_pr=True), RepoConfig(), BOT) is None


def test_a_mention_on_a_bosun_pr_is_a_retry_with_its_text() -> None:
    command = mention_retry("@bosun please also cover the empty list", BOT)
    assert command is not None
    assert (command.verb, command.args) == ("retry", "please also cover the empty list")
    assert mention_retry("@bosun", BOT) is None  # nothing to say: no retry
    assert mention_retry("@bosun\n/approve", BOT) is None  # the command grammar wins
    assert mention_retry("thanks!", BOT) is None


SHOT = RunSnapshot(
    run_id="r1",
    state=RunState.REVIEW_READY,
    requester="alice",
    head_sha="a" * 40,
    on_hold=True,
    pr_number=5,
    changed_paths=("src/app.py",),
)


def test_hold_cancel_lifts_a_hold_as_in_prow() -> None:
    for body in ("/hold cancel", "/HOLD Cancel", "/hold `cancel`"):
        action = parse_commands(body).action
        assert action is not None and action.verb == "unhold", body
        decision = decide_command(action, SHOT, "bob", "write", RepoConfig(), now_sha="a" * 40)
        assert isinstance(decision, Unhold)
    held = parse_commands("/hold").action
    assert held is not None and held.verb == "hold"
    refused = decide_command(
        parse_commands("/hold cancel").action,  # type: ignore[arg-type]
        SHOT,
        "mallory",
        "read",
        RepoConfig(),
        now_sha="a" * 40,
    )
    assert isinstance(refused, RefuseCommand)


def review(state: str, login: str = "bob", body: str = "Please rename it") -> ReviewRef:
    payload = example("pull_request_review", "submitted")
    raw = payload["review"]
    user = {"login": login, "type": "User"}
    parsed = parse_event(
        "pull_request_review",
        {
            **payload,
            "review": {**raw, "state": state, "user": {**raw["user"], **user}, "body": body},
        },
    )
    assert isinstance(parsed, ParsedEvent) and parsed.review is not None
    return parsed.review


def test_request_changes_is_a_retry_carrying_the_review_and_its_line_comments() -> None:
    lines = [("src/app.py", 3, "Off by one here"), ("README.md", None, "Mention it")]
    decision = decide_review(
        review("CHANGES_REQUESTED"),
        SHOT,
        "write",
        RepoConfig(),
        now_sha="a" * 40,
        line_comments=lines,
    )
    assert isinstance(decision, RetryRun)
    assert decision.feedback == (
        "Please rename it\nReview comments on the code:\n"
        "- `src/app.py:3`: Off by one here\n- `README.md`: Mention it"
    )


def test_request_changes_by_an_untrusted_reviewer_is_refused() -> None:
    decision = decide_review(
        review("changes_requested", login="mallory"), SHOT, "read", RepoConfig(), now_sha=None
    )
    assert isinstance(decision, RefuseCommand)
    assert "@mallory" in decision.reply


def test_review_feedback_is_bounded() -> None:
    command = review_retry("x" * 40_000, [("a.py", 1, "y" * 40_000)])
    assert len(command.args) <= 30_000
    assert review_retry("", []).args == "Changes were requested in a review."
