"""Every example GitHub publishes (``@octokit/webhooks-examples``, vendored in
tests/fixtures/webhooks by scripts/vendor_webhook_examples.py) for the events Bosun handles
parses, exposes the right fields, and routes to the right decision or is ignored."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bot.domain.payloads import (
    HANDLED_ACTIONS,
    EventParseError,
    IgnoredEvent,
    ParsedEvent,
    parse_event,
)
from bot.domain.repoconfig import RepoConfig, parse_repo_config
from bot.domain.triggers import CancelRuns, RefuseStart, StartRun, decide, trigger_request

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
BOT = "bosun[bot]"
PROFILES = frozenset({"default"})


def _load() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for event in sorted(HANDLED_ACTIONS):
        data = json.loads((FIXTURES / f"{event}.json").read_text())
        assert data["event"] == event
        for index, example in enumerate(data["examples"]):
            payload = example["payload"]
            cases.append(
                (event, f"{event}-{payload.get('action', '')}-{example['origin']}-{index}", payload)
            )
    return cases


CASES = _load()


def test_every_handled_event_has_vendored_examples() -> None:
    counts = {event: sum(1 for e, _, _ in CASES if e == event) for event in HANDLED_ACTIONS}
    assert all(count > 0 for count in counts.values()), counts
    assert len(CASES) >= 100
    keys = {(e, p.get("action")) for e, _, p in CASES}
    for needed in [
        ("issues", "labeled"),
        ("issues", "unlabeled"),
        ("issue_comment", "created"),
        ("pull_request", "closed"),
        ("pull_request", "synchronize"),
        ("pull_request_review", "submitted"),
        ("check_run", "requested_action"),
        ("check_run", "rerequested"),
        ("installation_repositories", "added"),
    ]:
        assert needed in keys


def _is_handled(event: str, action: str | None) -> bool:
    actions = HANDLED_ACTIONS[event]
    return actions is None or action in actions


def _config_for(payload: dict[str, Any]) -> RepoConfig:
    """A config whose trigger label is the example's label, so label events route to a run."""
    label = (payload.get("label") or {}).get("name")
    if not label:
        return RepoConfig()
    return parse_repo_config(f"trigger:\n  labels: [{json.dumps(label)}]\n")


@pytest.mark.parametrize(
    ("event", "payload"), [(e, p) for e, _, p in CASES], ids=[i for _, i, _ in CASES]
)
def test_example_parses_and_routes(event: str, payload: dict[str, Any]) -> None:
    parsed = parse_event(event, json.dumps(payload).encode())
    action = payload.get("action")
    if not _is_handled(event, action):
        assert isinstance(parsed, IgnoredEvent)
        assert parsed.action == action
        assert trigger_request(parsed, RepoConfig(), BOT) is None
        return
    assert isinstance(parsed, ParsedEvent)
    assert parsed.event == event and parsed.action == action
    if "installation" in payload:
        assert parsed.installation_id == payload["installation"]["id"]
    if "sender" in payload:
        assert parsed.sender is not None
        assert parsed.sender.login == payload["sender"]["login"]
    if "repository" in payload:
        assert parsed.repository is not None
        assert parsed.repository.full_name == payload["repository"]["full_name"]
        assert parsed.repository.owner == payload["repository"]["owner"]["login"]
    _check_fields(event, parsed, payload)
    _check_routing(event, parsed, payload)


def _check_fields(event: str, parsed: ParsedEvent, payload: dict[str, Any]) -> None:
    if event in {"issues", "issue_comment"}:
        assert parsed.issue is not None
        assert parsed.issue.number == payload["issue"]["number"]
        assert parsed.issue.is_pull_request == ("pull_request" in payload["issue"])
        assert parsed.issue.labels == tuple(lb["name"] for lb in payload["issue"].get("labels", []))
    if event == "issue_comment" or event == "pull_request_review_comment":
        assert parsed.comment is not None
        assert parsed.comment.id == payload["comment"]["id"]
        assert parsed.comment.body == (payload["comment"]["body"] or "")
    if event in {"pull_request", "pull_request_review", "pull_request_review_comment"}:
        pull = parsed.pull_request
        assert pull is not None
        assert pull.number == payload["pull_request"]["number"]
        assert pull.head_sha == payload["pull_request"]["head"]["sha"]
        assert pull.base_ref == payload["pull_request"]["base"]["ref"]
        if payload["action"] == "closed":
            assert pull.merged == bool(payload["pull_request"]["merged"])
    if event == "pull_request_review":
        assert parsed.review is not None
        assert parsed.review.state == payload["review"]["state"].lower()
        assert parsed.review.commit_id == payload["review"]["commit_id"]
        assert parsed.review.user.login == payload["review"]["user"]["login"]
    if event == "check_run":
        assert parsed.check_run is not None
        assert parsed.check_run.id == payload["check_run"]["id"]
        assert parsed.check_run.head_sha == payload["check_run"]["head_sha"]
        expected = (payload.get("requested_action") or {}).get("identifier")
        assert parsed.check_run.requested_action == expected
        if payload["action"] == "requested_action":
            assert expected
    if event == "check_suite":  # merge when green re-reads the checks of that commit
        changed = parsed.checks_changed
        assert changed is not None and changed.sha == payload["check_suite"]["head_sha"]
        assert changed.app_id == payload["check_suite"]["app"]["id"]
    if event == "status":
        changed = parsed.checks_changed
        assert changed is not None and changed.app_id is None
        assert (changed.sha, changed.name, changed.state) == (
            payload["sha"],
            payload["context"],
            payload["state"],
        )
    if event == "issues" and payload["action"] == "assigned":
        assert parsed.assignee is not None
        assert parsed.assignee.login == payload["assignee"]["login"]
    if event == "installation_repositories":
        assert [r.full_name for r in parsed.repositories_added] == [
            r["full_name"] for r in payload["repositories_added"]
        ]
        assert [r.full_name for r in parsed.repositories_removed] == [
            r["full_name"] for r in payload["repositories_removed"]
        ]
    if event == "installation":
        assert parsed.installation is not None
        assert parsed.installation.account is not None
        assert parsed.installation.account.login == payload["installation"]["account"]["login"]


def _check_routing(event: str, parsed: ParsedEvent, payload: dict[str, Any]) -> None:
    config = _config_for(payload)
    request = trigger_request(parsed, config, BOT, known_profiles=PROFILES)
    if event == "issues" and parsed.action in {"labeled", "unlabeled"}:
        sender_is_bot = payload["sender"]["type"] == "Bot"
        if sender_is_bot or parsed.issue is None or parsed.issue.is_pull_request:
            assert request is None
            return
        assert request is not None
        assert request.kind == ("start" if parsed.action == "labeled" else "cancel")
        decision = decide(
            request, config, "write", server_allowed_users=frozenset(), known_profiles=PROFILES
        )
        expected = StartRun if parsed.action == "labeled" else CancelRuns
        assert isinstance(decision, expected)
        refused = decide(
            request, config, "read", server_allowed_users=frozenset(), known_profiles=PROFILES
        )
        assert isinstance(refused, RefuseStart)
        assert refused.reply.startswith(f"@{payload['sender']['login']}, only people")
    elif event == "issues" and parsed.action == "closed":
        assert request is not None and request.kind == "cancel"
    elif event == "issue_comment":
        body = payload["comment"]["body"] or ""
        assert ("/bosun run" in body) or request is None
        _check_comment_command(payload)
    else:
        assert request is None


def _check_comment_command(payload: dict[str, Any]) -> None:
    """The same real delivery with `/bosun run` as its body starts a run (issues only)."""
    edited = copy.deepcopy(payload)
    edited["comment"]["body"] = "/bosun run please add a regression test"
    parsed = parse_event("issue_comment", edited)
    assert isinstance(parsed, ParsedEvent)
    request = trigger_request(parsed, RepoConfig(), BOT, known_profiles=PROFILES)
    if payload["issue"].get("pull_request") or payload["sender"]["type"] == "Bot":
        assert request is None
        return
    assert request is not None
    decision = decide(
        request, RepoConfig(), "admin", server_allowed_users=frozenset(), known_profiles=PROFILES
    )
    assert isinstance(decision, StartRun)
    assert decision.instructions == "please add a regression test"
    assert decision.comment_id == payload["comment"]["id"]


# --- malformed and unknown deliveries -----------------------------------------------------


def test_unknown_event_is_ignored_not_an_error() -> None:
    result = parse_event("star", b'{"action": "created", "installation": {"id": 5}}')
    assert isinstance(result, IgnoredEvent)
    assert (result.reason, result.installation_id) == ("event not handled", 5)


def test_unhandled_action_is_ignored_with_reason() -> None:
    result = parse_event("issue_comment", {"action": "edited"})
    assert isinstance(result, IgnoredEvent)
    assert result.reason == "comment edits and deletes never re-run"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "payload is not valid JSON"),
        (b"\xff\xfe", "payload is not valid JSON"),
        (b"[1, 2]", "payload must be a JSON object, got list"),
        (b'{"action": "labeled", "sender": {"login": "a"}}', "issues.labeled payload lacks issue"),
        (
            b'{"action": "labeled", "issue": {"number": "seven"}}',
            "issues.labeled payload: issue.number",
        ),
    ],
)
def test_malformed_payloads_raise_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(EventParseError) as caught:
        parse_event("issues", body)
    assert message in str(caught.value)
