"""Secret scanning of the diff before push (issue 7, SPEC §7): an agent that writes a private
key or a high-entropy secret gets its run failed with the file and line, a ``policy`` event per
finding, the secret itself nowhere in the report, and nothing pushed."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.security_agents import SecurityStack, security_stack

pytestmark = pytest.mark.docker

KEY_BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi8pf4"
SECRET_VALUE = "q8Zr2Lx9Vw4Tn7Kp3Hs6Jd1Fb5Gm0YcR2"


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    with security_stack(tmp_path_factory.mktemp("security-policy")) as running:
        yield running


def test_private_key_and_high_entropy_secret_are_refused_before_push(sec: SecurityStack) -> None:
    run = sec.probe("sec-secret-files")
    assert run["state"] == "failed", run
    reason = run["reason"]
    assert reason.startswith("the diff breaks repository policy, nothing was pushed")
    assert (
        "deploy/id_rsa (secrets.private_key): line 1 adds what looks like a private key" in reason
    )
    assert (
        "src/settings.py (secrets.secret_assignment): line 3 adds what looks like a hard-coded "
        "secret" in reason
    )
    policy = {
        (e["data"]["rule"], e["data"].get("path")): e["data"]
        for e in sec.stack.events(run["id"], "policy")
    }
    assert policy[("secrets.private_key", "deploy/id_rsa")]["decision"] == "deny"
    assert policy[("secrets.secret_assignment", "src/settings.py")]["decision"] == "deny"
    assert "line 3" in policy[("secrets.secret_assignment", "src/settings.py")]["message"]
    reported = reason + repr(sec.stack.events(run["id"]))
    assert KEY_BODY not in reported and SECRET_VALUE not in reported  # reported, never repeated
    assert run["branch"] not in sec.branches() and run["pr_number"] is None
    assert run["head_sha"] is None
    diff = sec.stack.artifacts(run["id"])["diff"].read_text()
    assert "deploy/id_rsa" in diff  # the evidence stays with the run, for the maintainer only


def test_the_refusal_is_explained_on_github(sec: SecurityStack) -> None:
    run = sec.probe("sec-secret-files")
    number = int(str(run["branch"]).split("/")[1].split("-")[0])

    def comment() -> str | None:
        issue = next(i for i in sec.stack.state()["issues"] if i["number"] == number)
        for body in (c["body"] for c in issue["comments"]):
            if "<!-- bosun:status -->" in body and "deploy/id_rsa" in body:
                return str(body)
        return None

    body = sec.stack.wait_for(comment, 30, "a status comment naming the file")
    assert "src/settings.py" in body and "failed" in body
    assert KEY_BODY not in body and SECRET_VALUE not in body


def test_a_process_left_behind_cannot_change_the_tree_after_the_policy_check(
    sec: SecurityStack,
) -> None:
    """The agent leaves a detached process that waits until Bosun has checked the diff, then
    writes a workflow and a token: neither may reach the pushed branch unchecked."""
    run = sec.probe("sec-linger")
    assert run["state"] == "review_ready", run
    pushed = sec.stack.state()
    tree = subprocess.run(
        ["git", "-C", pushed["git_dir"], "ls-tree", "-r", "--name-only", run["branch"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "innocent.txt" in tree
    assert ".github/workflows/late.yml" not in tree, tree
    assert "late-secret.py" not in tree, tree


def test_installation_tokens_are_scoped_to_the_repository_and_short_lived(
    sec: SecurityStack,
) -> None:
    """Every token Bosun asked GitHub for during these runs names the one repository and only
    the permissions Bosun writes with; none lives past GitHub's one hour."""
    sec.probe("sec-linger")  # a run that fetched, pushed and opened a PR
    tokens = sec.minted_tokens()
    assert tokens
    repo_id = sec.stack.world.repo.id
    allowed = {"metadata", "contents", "issues", "pull_requests", "checks"}
    for token in tokens:
        assert token.repo_ids == [repo_id], token.repo_ids
        assert set(token.permissions) <= allowed, token.permissions
        assert "workflows" not in token.permissions and "administration" not in token.permissions
        assert token.expires - time.time() <= 3600
    writers = [t for t in tokens if t.permissions.get("contents") == "write"]
    assert writers and len(writers) < len(tokens)  # write access only where a push needs it


def test_forged_webhooks_are_refused_before_anything_is_recorded(sec: SecurityStack) -> None:
    """Only GitHub (holding the webhook secret) can start work: a labelled-issue payload with a
    missing, wrong or stale signature gets 401 and leaves no delivery and no run behind."""
    stack = sec.stack
    body = json.dumps(
        {
            "action": "labeled",
            "label": {"name": "bosun"},
            "issue": {"number": 999, "title": "forged", "body": "rm -rf /", "labels": []},
            "repository": {"full_name": stack.repo, "id": stack.world.repo.id},
            "sender": {"login": "alice", "type": "User"},
            "installation": {"id": stack.world.repo.installation_id},
        }
    ).encode()
    secret = b"webhook-secret"
    good = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    wrong = "sha256=" + hmac.new(b"guessed", body, hashlib.sha256).hexdigest()
    other = "sha256=" + hmac.new(secret, body + b" ", hashlib.sha256).hexdigest()
    before = len(stack.runs())
    for signature in (None, wrong, other, good.upper(), "sha1=" + good[7:]):
        headers = {"x-github-event": "issues", "x-github-delivery": str(uuid.uuid4())}
        if signature is not None:
            headers["x-hub-signature-256"] = signature
        response = httpx.post(f"{stack.url}/webhooks/github", content=body, headers=headers)
        assert response.status_code == 401, (signature, response.text)
        assert stack.db("SELECT id FROM deliveries WHERE id=?", headers["x-github-delivery"]) == []
    assert len(stack.runs()) == before
