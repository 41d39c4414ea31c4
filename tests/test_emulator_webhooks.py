"""Webhooks from the emulator: GitHub's headers and signatures, payloads that validate against
``@octokit/webhooks-schemas`` and parse with githubkit, a sender that never blocks the request
that caused the event, and redeliveries that keep their guid."""

from __future__ import annotations

import hashlib
import hmac
import time

from githubkit import GitHubModel
from githubkit_schemas.latest import models

from tests.emulator import schemas
from tests.emulator.world import World, make_source_repo

pytest_plugins = ["tests.emulator.fixtures"]

REQUIRED = {
    ("installation", "created"),
    ("installation_repositories", "added"),
    ("issues", "opened"),
    ("issues", "labeled"),
    ("issues", "unlabeled"),
    ("issues", "edited"),
    ("issues", "closed"),
    ("issue_comment", "created"),
    ("issue_comment", "edited"),
    ("issue_comment", "deleted"),
    ("pull_request", "opened"),
    ("pull_request", "synchronize"),
    ("pull_request", "closed"),
    ("pull_request_review", "submitted"),
    ("pull_request_review_comment", "created"),
    ("check_run", "created"),
    ("check_run", "completed"),
    ("check_run", "requested_action"),
    ("check_run", "rerequested"),
    ("push", None),
    ("pull_request", "edited"),
    ("pull_request", "labeled"),
    ("issues", "assigned"),
    ("status", None),
    ("check_suite", "completed"),
}


def typed_model(event: str, action: str | None) -> type[GitHubModel]:
    """githubkit's model for one event and action (what ``githubkit.webhooks.parse`` picks,
    without building the models of every other action of the event)."""
    words = event.split("_") + (action.split("_") if action else [])
    return getattr(models, "Webhook" + "".join(w.capitalize() for w in words))  # type: ignore[no-any-return]


def drive_every_event(world: World) -> None:
    em, repo = world.emulator, "octo/hello"
    em.create_repo("octo", "second", str(world.source))  # installation_repositories.added
    number = em.create_issue(repo, "Crash", "It crashes", user="alice")
    em.add_labels(repo, number, ["bosun"], user="alice")
    em.remove_label(repo, number, "bosun", user="alice")
    em.edit_issue(repo, number, user="alice", title="Crash on start")
    comment = em.comment(repo, number, "/bosun run", user="alice")
    em.edit_comment(repo, comment, "/bosun run fast")
    em.delete_comment(repo, comment)
    em.push(repo, "feature", {"f.txt": "1\n"}, user="alice")
    pr = em.open_pull(repo, "Feature", head="feature", user="alice")
    em.push(repo, "feature", {"f.txt": "2\n"}, user="alice")  # synchronize
    em.edit_issue(repo, pr, user="alice", title="Feature!")  # pull_request.edited
    em.add_labels(repo, pr, ["bosun"], user="alice")  # pull_request.labeled
    em.review(repo, pr, "APPROVED", user="alice", body="ok")
    em.review(
        repo,
        pr,
        "CHANGES_REQUESTED",
        user="alice",
        body="no",
        comments=[{"path": "f.txt", "line": 1, "body": "why?"}],
    )
    gh = world.installation_github()
    head = em.state("octo", "hello")["branches"]["feature"]
    run = gh.rest.checks.create(
        "octo",
        "hello",
        name="bosun",
        head_sha=head,
        status="in_progress",
        actions=[{"label": "Approve", "description": "Approve the run", "identifier": "approve"}],
    ).parsed_data
    gh.rest.checks.update(
        "octo",
        "hello",
        run.id,
        conclusion="action_required",
        output={"title": "Waiting", "summary": "Review it"},
    )
    em.click_action(run.id, "approve", user="alice")
    em.rerequest(run.id, user="alice")
    em.assign(repo, number, [world.app.bot_login], user="alice")  # issues.assigned
    feature = em.state("octo", "hello")["branches"]["feature"]
    em.commit_status(repo, feature, "ci/lint", "success", user="alice")  # status
    em.ci_check(repo, feature, "test", None, status="in_progress")  # another App's check run
    em.ci_check(repo, feature, "test", "failure")  # check_run.completed, check_suite.completed
    em.review_comment(repo, pr, "nit", user="alice", path="f.txt")
    gh.rest.pulls.merge("octo", "hello", pr)
    em.edit_issue(repo, number, user="alice", state="closed")


def test_every_delivery_is_signed_valid_and_parses(github_world: World) -> None:
    drive_every_event(github_world)
    deliveries = github_world.emulator.deliveries()
    seen = {(d["event"], d["action"]) for d in deliveries}
    assert seen >= REQUIRED, REQUIRED - seen
    assert all(d["attempts"][0]["status_code"] == 202 for d in deliveries)

    received = github_world.receiver.received
    assert [r.headers["x-github-delivery"] for r in received] == [d["guid"] for d in deliveries]
    secret = b"webhook-secret"
    for item in received:
        h = item.headers
        assert (
            h["x-hub-signature-256"]
            == "sha256=" + hmac.new(secret, item.body, hashlib.sha256).hexdigest()
        )
        assert (
            h["x-hub-signature"] == "sha1=" + hmac.new(secret, item.body, hashlib.sha1).hexdigest()
        )
        assert h["user-agent"].startswith("GitHub-Hookshot/")
        assert h["x-github-hook-installation-target-type"] == "integration"
        assert h["x-github-hook-installation-target-id"] == str(github_world.app.app_id)
        assert h["x-github-hook-id"].isdigit()
        assert h["content-type"] == "application/json"
        payload = item.payload
        assert schemas.webhook_errors(item.event, payload) == [], item.event
        typed_model(item.event, payload.get("action")).model_validate_json(item.body)
        if item.event not in {"installation", "installation_repositories"}:
            assert payload["installation"] == {
                "id": github_world.repo.installation_id,
                "node_id": payload["installation"]["node_id"],
            }
            assert payload["repository"]["full_name"] in {"octo/hello", "octo/second"}


def test_event_details_match_what_happened(github_world: World) -> None:
    drive_every_event(github_world)
    by_key = {}
    for d in github_world.emulator.deliveries():
        by_key.setdefault((d["event"], d["action"]), d["payload"])
    merged = [
        d["payload"]
        for d in github_world.emulator.deliveries()
        if (d["event"], d["action"]) == ("pull_request", "closed")
    ][-1]
    assert merged["pull_request"]["merged"] is True
    sync = by_key[("pull_request", "synchronize")]
    assert sync["before"] != sync["after"]
    assert sync["pull_request"]["head"]["sha"] == sync["after"]
    assert by_key[("issues", "labeled")]["label"]["name"] == "bosun"
    assert by_key[("issues", "edited")]["changes"] == {"title": {"from": "Crash"}}
    assert by_key[("issue_comment", "edited")]["changes"] == {"body": {"from": "/bosun run"}}
    action = by_key[("check_run", "requested_action")]
    assert action["requested_action"] == {"identifier": "approve"}
    assert action["sender"]["login"] == "alice"
    created = by_key[("check_run", "created")]
    assert created["sender"]["login"] == github_world.app.bot_login
    assert created["check_run"]["pull_requests"][0]["number"] == sync["number"]
    review = by_key[("pull_request_review", "submitted")]
    assert review["review"]["state"] == "approved"
    assigned = by_key[("issues", "assigned")]
    assert assigned["assignee"]["login"] == github_world.app.bot_login
    assert assigned["issue"]["assignees"][0]["login"] == github_world.app.bot_login
    status = by_key[("status", None)]
    assert (status["context"], status["state"], status["sender"]["login"]) == (
        "ci/lint",
        "success",
        "alice",
    )
    suite = by_key[("check_suite", "completed")]["check_suite"]
    assert (suite["conclusion"], suite["app"]["slug"]) == ("failure", "ci")
    assert suite["app"]["id"] != github_world.app.app_id


def test_sender_does_not_block_the_request(github_world: World) -> None:
    github_world.receiver.delay = 1.0
    started = time.monotonic()
    github_world.emulator.create_issue("octo/hello", "Slow receiver", user="alice")
    assert time.monotonic() - started < 0.5
    delivery = github_world.emulator.deliveries()[-1]
    assert delivery["attempts"][0]["duration"] >= 1.0


def test_failed_delivery_is_recorded_and_redelivered_with_same_guid(github_world: World) -> None:
    receiver = github_world.receiver
    receiver.status = 500
    github_world.emulator.create_issue("octo/hello", "Lost?", user="alice")
    failed = github_world.emulator.deliveries()[-1]
    assert [a["status_code"] for a in failed["attempts"]] == [500]

    receiver.status = 202
    github_world.emulator.redeliver(failed["guid"])
    again = next(d for d in github_world.emulator.deliveries() if d["guid"] == failed["guid"])
    assert [(a["status_code"], a["redelivery"]) for a in again["attempts"]] == [
        (500, False),
        (202, True),
    ]
    guids = [r.headers["x-github-delivery"] for r in receiver.received]
    assert guids[-2:] == [failed["guid"], failed["guid"]]
    assert receiver.received[-1].body == receiver.received[-2].body

    gh = github_world.app_github()
    items = gh.rest.apps.list_webhook_deliveries().parsed_data
    mine = [i for i in items if i.guid == failed["guid"]]
    assert [(i.status_code, i.redelivery) for i in mine] == [(202, True), (500, False)]


def test_unreachable_receiver_is_a_failed_attempt(emulator, source_repo) -> None:  # type: ignore[no-untyped-def]
    emulator.create_app("http://127.0.0.1:9/unreachable", "s")
    emulator.create_repo("octo", "hello", str(source_repo))
    delivery = emulator.deliveries()[0]
    assert delivery["event"] == "installation"
    assert delivery["attempts"][0]["status_code"] == 0


def test_second_owner_gets_its_own_installation(github_world: World, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = make_source_repo(tmp_path / "other")
    info = github_world.emulator.create_repo("acme", "tool", str(other), owner_type="Organization")
    assert info.installation_id != github_world.repo.installation_id
    github_world.emulator.create_issue("acme/tool", "Org issue", user="alice")
    payload = github_world.emulator.deliveries()[-1]["payload"]
    assert payload["organization"]["login"] == "acme"
    assert schemas.webhook_errors("issues", payload) == []
