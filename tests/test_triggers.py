"""Trigger rules (SPEC §3.2): who starts and cancels runs, from which events."""

from __future__ import annotations

from typing import Any

import pytest

from bot.domain.payloads import ParsedEvent, parse_event
from bot.domain.repoconfig import RepoConfig, parse_repo_config
from bot.domain.triggers import (
    CancelRuns,
    Decision,
    IgnoreRequest,
    RefuseStart,
    StartRun,
    TriggerRequest,
    UnknownProfile,
    decide,
    parse_run_command,
    trigger_request,
)

BOT = "bosun[bot]"
PROFILES = frozenset({"default", "fast", "careful"})
DEFAULT = RepoConfig()
CONFIG = parse_repo_config(
    "trigger:\n"
    "  allowed_users: [Carol]\n"
    "  allowed_bots: ['renovate[bot]']\n"
    "  allowed_teams: [acme/platform]\n"
)


def user(login: str) -> dict[str, Any]:
    kind = "Bot" if login.endswith("[bot]") else "User"
    return {"login": login, "id": abs(hash(login)) % 10_000, "type": kind}


def payload(
    event: str,
    action: str,
    *,
    sender: str = "alice",
    label: str | None = None,
    body: str | None = None,
    is_pr: bool = False,
) -> ParsedEvent:
    issue: dict[str, Any] = {
        "number": 7,
        "title": "Fix the login redirect",
        "body": "It loops.",
        "labels": [{"name": label}] if label else [],
        "user": user("reporter"),
        "state": "closed" if action == "closed" else "open",
    }
    if is_pr:
        issue["pull_request"] = {"url": "https://api.github.com/repos/acme/app/pulls/7"}
    data: dict[str, Any] = {
        "action": action,
        "issue": issue,
        "repository": {
            "id": 1,
            "name": "app",
            "full_name": "acme/app",
            "owner": {"login": "acme"},
            "default_branch": "main",
        },
        "sender": user(sender),
        "installation": {"id": 99},
    }
    if label is not None:
        data["label"] = {"name": label}
    if body is not None:
        data["comment"] = {"id": 555, "body": body, "user": user(sender)}
    parsed = parse_event(event, data)
    assert isinstance(parsed, ParsedEvent)
    return parsed


def request(event: ParsedEvent, config: RepoConfig = DEFAULT) -> TriggerRequest | None:
    return trigger_request(event, config, BOT, known_profiles=PROFILES)


def run(
    event: ParsedEvent,
    permission: str | None,
    config: RepoConfig = DEFAULT,
    **kw: Any,
) -> Decision | None:
    req = request(event, config)
    if req is None:
        return None
    kw.setdefault("server_allowed_users", frozenset())
    kw.setdefault("known_profiles", PROFILES)
    return decide(req, config, permission, **kw)


# --- which events are requests at all ------------------------------------------------------


TABLE = [
    # (description, event, expected (kind, source, profile) or None)
    ("trigger label", payload("issues", "labeled", label="bosun"), ("start", "label", None)),
    ("label case", payload("issues", "labeled", label="Bosun"), ("start", "label", None)),
    ("other label", payload("issues", "labeled", label="bug"), None),
    ("profile label", payload("issues", "labeled", label="bosun:fast"), ("start", "label", "fast")),
    ("unlabel", payload("issues", "unlabeled", label="bosun"), ("cancel", "label", None)),
    (
        "unlabel profile",
        payload("issues", "unlabeled", label="bosun:fast"),
        ("cancel", "label", None),
    ),
    ("unlabel other", payload("issues", "unlabeled", label="bug"), None),
    ("closed", payload("issues", "closed"), ("cancel", "close", None)),
    ("issue edited", payload("issues", "edited"), None),
    ("label on a PR", payload("issues", "labeled", label="bosun", is_pr=True), None),
    (
        "comment run",
        payload("issue_comment", "created", body="/bosun run"),
        ("start", "comment", None),
    ),
    ("comment other", payload("issue_comment", "created", body="nice work"), None),
    ("comment on PR", payload("issue_comment", "created", body="/bosun run", is_pr=True), None),
    ("label by self", payload("issues", "labeled", label="bosun", sender=BOT), None),
    ("label by bot", payload("issues", "labeled", label="bosun", sender="stale[bot]"), None),
    ("comment by self", payload("issue_comment", "created", body="/bosun run", sender=BOT), None),
    (
        "comment by bot",
        payload("issue_comment", "created", body="/bosun run", sender="x[bot]"),
        None,
    ),
]


@pytest.mark.parametrize(("event", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_which_events_ask_for_something(
    event: ParsedEvent, expected: tuple[str, str, str | None] | None
) -> None:
    req = request(event)
    if expected is None:
        assert req is None
        return
    assert req is not None
    assert (req.kind, req.source, req.profile) == expected
    assert req.issue_number == 7
    assert req.repository == "acme/app"


def test_edited_and_deleted_comments_never_trigger() -> None:
    for action in ("edited", "deleted"):
        data = {
            "action": action,
            "issue": {"number": 1, "title": "t", "user": user("a"), "labels": []},
            "comment": {"id": 1, "body": "/bosun run", "user": user("alice")},
            "repository": {"id": 1, "name": "r", "full_name": "o/r"},
            "sender": user("alice"),
        }
        event = parse_event("issue_comment", data)
        assert request(event) is None  # type: ignore[arg-type]


def test_configured_labels_replace_the_default() -> None:
    config = parse_repo_config("trigger:\n  labels: [agent]\n")
    assert request(payload("issues", "labeled", label="bosun"), config) is None
    req = request(payload("issues", "labeled", label="agent:careful"), config)
    assert req is not None and req.profile == "careful"


def test_allow_listed_bot_triggers_by_exact_login_only() -> None:
    req = request(payload("issues", "labeled", label="bosun", sender="renovate[bot]"), CONFIG)
    assert req is not None and req.requester == "renovate[bot]"
    assert (
        request(payload("issues", "labeled", label="bosun", sender="Renovate[bot]"), CONFIG) is None
    )
    decision = run(
        payload("issues", "labeled", label="bosun", sender="renovate[bot]"), None, CONFIG
    )
    assert isinstance(decision, StartRun)
    assert decision.rule == "trigger.allowed_bots"


def test_bosun_itself_never_triggers_even_if_allow_listed() -> None:
    config = parse_repo_config(f"trigger:\n  allowed_bots: ['{BOT}']\n")
    assert request(payload("issues", "labeled", label="bosun", sender=BOT), config) is None


# --- the /bosun run command ---------------------------------------------------------------


COMMANDS = [
    ("/bosun run", (None, "")),
    ("/Bosun RUN fast", ("fast", "")),
    ("/bosun run fast make the button blue", ("fast", "make the button blue")),
    ("/bosun run make the button blue", (None, "make the button blue")),
    ("/bosun run\nplease also\nadd a test", (None, "please also\nadd a test")),
    ("Thanks!\n\n/bosun run careful keep it small", ("careful", "keep it small")),
    ("/bosun running late", None),
    ("/bosunrun", None),
    ("please /bosun run", None),
    ("```\n/bosun run\n```", None),
    ("~~~md\n/bosun run\n~~~", None),
    ("````\n```\n/bosun run\n```\n````", None),
    ("> /bosun run", None),
    ("    /bosun run", None),
    ("`/bosun run`", None),
    ("```\ncode\n```\n/bosun run after code", (None, "after code")),
]


@pytest.mark.parametrize(("body", "expected"), COMMANDS)
def test_run_command_grammar(body: str, expected: tuple[str | None, str] | None) -> None:
    assert parse_run_command(body, PROFILES) == expected


def test_comment_request_carries_instructions_and_comment_id() -> None:
    req = request(payload("issue_comment", "created", body="/bosun run fast use the new API"))
    assert req is not None
    assert (req.profile, req.instructions, req.comment_id) == ("fast", "use the new API", 555)


# --- decisions ----------------------------------------------------------------------------


LABEL = payload("issues", "labeled", label="bosun")


@pytest.mark.parametrize("permission", ["write", "maintain", "admin"])
def test_write_or_higher_starts_with_default_profile(permission: str) -> None:
    decision = run(LABEL, permission)
    assert isinstance(decision, StartRun)
    assert decision.profile == "default"
    assert decision.requester == "alice"
    assert decision.rule == "trigger.permission>=write"
    assert decision.as_policy_event()["decision"] == "start"


@pytest.mark.parametrize("permission", ["read", "triage", "none"])
def test_below_write_is_refused_with_one_reply(permission: str) -> None:
    decision = run(LABEL, permission)
    assert isinstance(decision, RefuseStart)
    assert decision.reply == (
        "@alice, only people with write access to acme/app can start Bosun runs "
        f"(you have {permission})."
    )
    assert decision.rule == "trigger.permission>=write"


def test_unknown_permission_is_refused_and_says_so() -> None:
    decision = run(LABEL, None)
    assert isinstance(decision, RefuseStart)
    assert "your permission could not be checked" in decision.reply


def test_allow_listed_user_with_read_is_accepted_case_insensitively() -> None:
    decision = run(payload("issues", "labeled", label="bosun", sender="carol"), "read", CONFIG)
    assert isinstance(decision, StartRun)
    assert decision.rule == "trigger.allowed_users"


def test_server_allow_list_and_teams_also_trust() -> None:
    event = payload("issues", "labeled", label="bosun", sender="dave")
    by_server = run(event, "read", CONFIG, server_allowed_users=frozenset({"dave"}))
    assert isinstance(by_server, StartRun) and by_server.rule == "server.allowed_users"
    by_team = run(event, "read", CONFIG, requester_teams=frozenset({"acme/platform"}))
    assert isinstance(by_team, StartRun) and by_team.rule == "trigger.allowed_teams"
    assert isinstance(
        run(event, "read", CONFIG, requester_teams=frozenset({"acme/x"})), RefuseStart
    )


def test_unlisted_bot_reaching_decide_is_ignored_without_reply() -> None:
    req = TriggerRequest("start", "label", "stale[bot]", "Bot", "acme/app", 7)
    decision = decide(
        req, DEFAULT, "admin", server_allowed_users=frozenset(), known_profiles=PROFILES
    )
    assert isinstance(decision, IgnoreRequest)
    assert decision.rule == "trigger.bots_ignored"


def test_profile_from_label_and_unknown_profile_lists_available() -> None:
    fast = run(payload("issues", "labeled", label="bosun:fast"), "write")
    assert isinstance(fast, StartRun) and fast.profile == "fast"
    unknown = run(payload("issues", "labeled", label="bosun:turbo"), "write")
    assert isinstance(unknown, UnknownProfile)
    assert unknown.profile == "turbo"
    assert unknown.available == ("careful", "default", "fast")
    assert "`careful`, `default`, `fast`" in unknown.reply
    assert unknown.reply.startswith("@alice, there is no Bosun profile `turbo`")


def test_repo_default_profile_is_used_and_checked() -> None:
    config = parse_repo_config("default_profile: careful\n")
    decision = run(LABEL, "write", config)
    assert isinstance(decision, StartRun) and decision.profile == "careful"
    broken = run(LABEL, "write", parse_repo_config("default_profile: gone\n"))
    assert isinstance(broken, UnknownProfile) and broken.rule == "config.default_profile"


def test_untrusted_requester_gets_refusal_before_profile_check() -> None:
    decision = run(payload("issues", "labeled", label="bosun:turbo"), "read")
    assert isinstance(decision, RefuseStart)


def test_unlabel_cancels_for_trusted_and_is_refused_for_others() -> None:
    event = payload("issues", "unlabeled", label="bosun")
    cancel = run(event, "write")
    assert isinstance(cancel, CancelRuns)
    assert cancel.rule == "trigger.label_removed"
    refused = run(event, "triage")
    assert isinstance(refused, RefuseStart)
    assert "can cancel Bosun runs (you have triage)" in refused.reply


def test_closing_the_issue_cancels_whoever_closes_it() -> None:
    for sender, permission in (("alice", "read"), ("stale[bot]", None)):
        decision = run(payload("issues", "closed", sender=sender), permission)
        assert isinstance(decision, CancelRuns)
        assert decision.rule == "trigger.issue_closed"
        assert decision.issue_number == 7


def test_comment_start_keeps_instructions() -> None:
    event = payload("issue_comment", "created", body="/bosun run handle the empty case")
    decision = run(event, "admin")
    assert isinstance(decision, StartRun)
    assert decision.profile == "default"
    assert decision.instructions == "handle the empty case"
    assert decision.source == "comment"
    assert decision.comment_id == 555
