"""The REST API end to end (issue 13): a real Bosun (web + worker), the GitHub emulator, tokens
made as an operator would. Reads of a real run; scopes and repositories enforced on every
route; actions decided exactly like the comment commands they mirror, audited with their
source; problems that name what is wrong."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.control.tokens import create_token
from bot.db.engine import create_engine, session_factory
from tests.stack import BosunStack

BOSUN = str(Path(sys.executable).parent / "bosun")

pytestmark = pytest.mark.docker


def make_token(
    stack: BosunStack,
    name: str,
    scope: str,
    repos: tuple[str, ...] = (),
    expires: timedelta | None = None,
) -> str:
    async def go() -> str:
        engine = create_engine(stack.settings.database.url)
        try:
            async with session_factory(engine).begin() as session:
                secret, _ = await create_token(session, name, scope, repos, expires)  # type: ignore[arg-type]
                return secret
        finally:
            await engine.dispose()

    return asyncio.run(go())


def client(stack: BosunStack, token: str | None, source: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if source:
        headers["X-Bosun-Client"] = source
    return httpx.Client(base_url=f"{stack.url}/api/v1", headers=headers, timeout=30)


def ready_run(stack: BosunStack, title: str) -> dict[str, Any]:
    stack.emulator.add_user("bob", stack.repo, "write")
    number = stack.emulator.create_issue(stack.repo, title, "Please change it.", "alice")
    stack.label(number)

    def mine() -> dict[str, Any] | None:
        for run in stack.runs():
            if str(run["branch"]).startswith(f"bosun/{number}-") and run["state"] in (
                "review_ready",
                "failed",
            ):
                return run
        return None

    run = stack.wait_for(mine, 120, f"issue #{number}'s run")
    assert run["state"] == "review_ready", run
    return run


@pytest.fixture
def api(stack: BosunStack) -> Iterator[tuple[BosunStack, dict[str, str]]]:
    tokens = {
        "read": make_token(stack, "reader", "read"),
        "operate": make_token(stack, "operator", "operate"),
        "other-repo": make_token(stack, "elsewhere", "operate", ("octo/other",)),
        "admin": make_token(stack, "admin", "admin"),
        "expired": make_token(stack, "old", "read", expires=timedelta(seconds=-1)),
    }
    yield stack, tokens


def test_reads_of_a_finished_run(api: tuple[BosunStack, dict[str, str]]) -> None:
    stack, tokens = api
    run = ready_run(stack, "Readable")
    with client(stack, tokens["read"]) as http:
        listed = http.get("/runs", params={"state": "review_ready", "repo": stack.repo}).json()
        assert [r["id"] for r in listed["items"]] == [run["id"]]
        assert listed["items"][0]["terminal"] is False
        detail = http.get(f"/runs/{run['id']}").json()
        assert detail["state"] == "review_ready" and detail["head_sha"] == run["head_sha"]
        assert detail["lineage"] == {"parent": None, "children": []}
        names = {a["name"] for a in detail["artifacts"]}
        assert {"diff", "transcript", "manifest.json", "summary"} <= names
        first = http.get(f"/runs/{run['id']}/events", params={"limit": 3}).json()
        assert [e["seq"] for e in first["items"]] == [1, 2, 3]
        rest = http.get(
            f"/runs/{run['id']}/events", params={"after_seq": first["next_after_seq"]}
        ).json()
        assert rest["items"][0]["seq"] == 4 and rest["items"][-1]["seq"] == detail["last_seq"]
        statuses = http.get(f"/runs/{run['id']}/events", params={"kind": "status"}).json()
        assert [e["data"]["to"] for e in statuses["items"]][-1] == "review_ready"
        diff = http.get(f"/runs/{run['id']}/diff").json()
        assert {f["path"] for f in diff["files"]} == {
            "README.md",
            "src/feature.py",
            "prompt-seen.txt",
        }
        assert "+Edited by the agent." in diff["unified"]
        transcript = http.get(f"/runs/{run['id']}/artifacts/transcript")
        assert transcript.status_code == 200 and b"agent: done" in transcript.content
        assert int(transcript.headers["content-length"]) == len(transcript.content)
        gate = http.get(f"/runs/{run['id']}/artifacts/gate:none")
        assert gate.status_code == 404
        assert gate.headers["content-type"] == "application/problem+json"
        assert gate.json()["type"] == "/api/v1/problems/not-found"
        assert http.get(f"/runs/{run['id']}/approvals").json() == []
        tasks = http.get("/tasks", params={"repo": stack.repo}).json()["items"]
        assert tasks[0]["last_run"]["id"] == run["id"]
        repos = http.get("/repositories").json()["items"]
        assert [r["full_name"] for r in repos] == [stack.repo]
        profiles = {p["name"]: p for p in http.get("/profiles").json()}
        assert profiles["default"]["runner"] == "script"
        assert profiles["default"]["capabilities"]["session_resume"] is False


def test_tokens_scopes_and_repositories_are_enforced(
    api: tuple[BosunStack, dict[str, str]],
) -> None:
    stack, tokens = api
    run = ready_run(stack, "Guarded")
    with client(stack, None) as anonymous:
        answer = anonymous.get("/runs")
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    for bad in ("bosun_not-a-token", tokens["expired"], "ghp_something"):
        with client(stack, bad) as http:
            assert http.get("/runs").status_code == 401
    with client(stack, tokens["read"]) as reader:
        refused = reader.post(f"/runs/{run['id']}/reject", json={"reason": "no"})
        assert refused.status_code == 403
        assert refused.json()["type"] == "/api/v1/problems/forbidden"
        assert "scope 'read'" in refused.json()["detail"]
        assert reader.get("/tokens").status_code == 403  # tokens are admin business
    with client(stack, tokens["other-repo"]) as elsewhere:
        refused = elsewhere.post(f"/runs/{run['id']}/cancel")
        assert refused.status_code == 403 and "octo/other" in refused.json()["detail"]
        assert elsewhere.get(f"/runs/{run['id']}").status_code == 403
        assert elsewhere.get("/runs").json()["items"] == []  # lists show its repositories only
    assert stack.db("SELECT count(*) FROM command_audit")[0][0] == 0  # nothing was decided
    with client(stack, tokens["admin"]) as admin:
        made = admin.post("/tokens", json={"name": "ci", "scope": "operate"}).json()
        assert made["token"].startswith("bosun_") and made["scope"] == "operate"
        listed = admin.get("/tokens").json()
        assert "token" not in listed[0] and {t["name"] for t in listed} >= {"ci", "reader"}
        assert admin.delete("/tokens/ci").json()["revoked"] is True
    with client(stack, made["token"]) as revoked:
        answer = revoked.get("/runs")
        assert answer.status_code == 401 and "revoked" in answer.json()["detail"]


def test_problems_name_what_is_wrong(api: tuple[BosunStack, dict[str, str]]) -> None:
    stack, tokens = api
    with client(stack, tokens["operate"]) as http:
        bad = http.get("/runs", params={"limit": 0, "state": "sleeping"})
        assert bad.status_code == 400
        fields = {e["field"] for e in bad.json()["errors"]}
        assert {"limit", "state"} <= fields, bad.json()
        assert http.get("/runs", params={"cursor": "!!"}).json()["type"].endswith("invalid-cursor")
        missing = http.get("/runs/r0000000000000/events")
        assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
        assert http.get("/nowhere").json()["type"] == "/api/v1/problems/not-found"
        assert http.post("/runs/r0/budget", json={"add_usd": -1}).status_code == 400
        explained = httpx.get(f"{stack.url}{bad.json()['type']}").json()
        assert explained["status"] == 400 and explained["meaning"]


def _audit_rows(stack: BosunStack, run_id: str) -> list[tuple[Any, ...]]:
    return stack.db(
        "SELECT actor, command, outcome, source, permission FROM command_audit WHERE run_id=?",
        run_id,
    )


@pytest.mark.parametrize("source", ["comment", "api", "cli"])
def test_the_same_decisions_from_a_comment_the_api_and_the_cli(
    api: tuple[BosunStack, dict[str, str]], source: str
) -> None:
    """Reject, approve (merge) and a refused approval, each decided by the same code and
    audited with its source: the outcome on GitHub and in Bosun is the same whichever way."""
    stack, tokens = api
    config = "merge:\n  auto_merge: true\n"
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    first = ready_run(stack, f"Reject via {source}")
    second = ready_run(stack, f"Approve via {source}")
    actor = "bob" if source == "comment" else "token:operator"

    def act(run: dict[str, Any], verb: str, body: dict[str, Any], text: str) -> int:
        if source == "comment":
            pr = stack.state()["pulls"]
            number = next(p["number"] for p in pr if p["pull"]["head"] == run["branch"])
            stack.emulator.comment(stack.repo, number, text, "bob")
            return 200
        if source == "cli":  # the installed `bosun`, as an operator types it
            flags = [
                flag
                for key in ("reason", "feedback")
                if key in body
                for flag in (f"--{key}", body[key])
            ]
            done = subprocess.run(
                [BOSUN, "runs", verb, run["id"], *flags],
                env={**os.environ, "BOSUN_URL": stack.url, "BOSUN_TOKEN": tokens["operate"]},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return {0: 200, 4: 409}.get(done.returncode, done.returncode)
        with client(stack, tokens["operate"], source) as http:
            return http.post(f"/runs/{run['id']}/{verb}", json=body).status_code

    assert act(first, "reject", {"reason": "not this way"}, "/reject not this way") == 200
    stack.wait_for(
        lambda: any(r["id"] == first["id"] and r["state"] == "rejected" for r in stack.runs()),
        30,
        "the rejection",
    )
    assert _audit_rows(stack, first["id"]) == [(actor, "reject", "accepted", source, "write")]
    assert act(second, "approve", {}, "/approve") == 200
    stack.wait_for(
        lambda: any(r["id"] == second["id"] and r["state"] == "merged" for r in stack.runs()),
        60,
        "the merge",
    )
    # A run that is over refuses, the same way everywhere.
    status = act(first, "approve", {}, "/approve")
    if source != "comment":
        assert status == 409
    rows = stack.wait_for(
        lambda: [r for r in _audit_rows(stack, first["id"]) if r[1] == "approve"],
        30,
        "the refused approval's audit row",
    )
    assert rows == [(actor, "approve", "refused", source, "write")]
    approvals = stack.db("SELECT actor, sha FROM approvals WHERE run_id=?", second["id"])
    assert approvals == [(actor, second["head_sha"])]
    # A retry with feedback: a follow-up run on the same branch whose prompt carries it.
    third = ready_run(stack, f"Retry via {source}")
    assert act(third, "retry", {"feedback": "use tabs"}, "/retry use tabs") == 200
    follow = stack.wait_for(
        lambda: stack.db("SELECT branch, prompt FROM runs WHERE parent_run_id=?", third["id"]),
        30,
        "the follow-up run",
    )
    assert follow[0][0] == third["branch"] and "use tabs" in follow[0][1]
    assert _audit_rows(stack, third["id"]) == [(actor, "retry", "accepted", source, "write")]


def test_a_forged_action_job_acts_on_nothing(api: tuple[BosunStack, dict[str, str]]) -> None:
    """Whoever can write to Redis can enqueue ``api_command``, but the job names a command the
    web process recorded (actor, permission, verb); a made-up id is never acted on."""
    from bot.jobids import API_COMMAND, command_job_id
    from bot.services import queue_client

    stack, _tokens = api
    run = ready_run(stack, "Forged")

    async def forge() -> None:
        redis = queue_client(stack.settings.redis)
        try:
            for forged in ("api-0000", run["id"]):
                await redis.enqueue_job(API_COMMAND, forged, _job_id=command_job_id(forged))
            # A job that names its own actor and permission, as if it were trusted.
            await redis.enqueue_job(
                API_COMMAND,
                command_id="api-1111",
                run_id=run["id"],
                verb="approve",
                args="",
                actor="bob",
                permission="admin",
                source="api",
                requested_at="2030-01-01T00:00:00+00:00",
                _job_id=command_job_id("api-1111"),
            )
        finally:
            await redis.aclose()
            await redis.connection_pool.disconnect()

    asyncio.run(forge())
    time.sleep(2)  # the worker polls every 50 ms: it has long taken both jobs
    assert _audit_rows(stack, run["id"]) == []
    assert [r["state"] for r in stack.runs() if r["id"] == run["id"]] == ["review_ready"]
    assert stack.db("SELECT count(*) FROM approvals")[0][0] == 0


def test_start_a_run_on_an_issue_and_follow_it(api: tuple[BosunStack, dict[str, str]]) -> None:
    """``POST /runs`` starts a run as a label would (same trigger rules), for the token's
    actor; a second start while it is active, an unknown issue, an unknown profile and an
    unknown repository are refused with a reason and start nothing."""
    stack, tokens = api
    number = stack.emulator.create_issue(stack.repo, "Started by the API", "Do it.", "alice")
    with client(stack, tokens["operate"], "cli") as http:
        started = http.post("/runs", json={"repository": stack.repo, "issue_number": number})
        assert started.status_code == 201, started.text
        run = started.json()
        assert run["requester"] == "token:operator" and run["trigger"] == "cli"
        assert run["issue_number"] == number and run["state"] in ("queued", "preparing", "running")
        again = http.post("/runs", json={"repository": stack.repo, "issue_number": number})
        assert again.status_code == 409 and "already active" in again.json()["detail"]
        missing_issue = http.post("/runs", json={"repository": stack.repo, "issue_number": 999})
        assert (
            missing_issue.status_code == 409 and "no issue #999" in missing_issue.json()["detail"]
        )
        profile = http.post(
            "/runs",
            json={"repository": stack.repo, "issue_number": number, "profile": "nope"},
        )
        assert profile.status_code == 409 and "nope" in profile.json()["detail"]
        unknown = http.post("/runs", json={"repository": "octo/absent", "issue_number": 1})
        assert unknown.status_code == 409 and "not installed" in unknown.json()["detail"]
        done = stack.wait_for(
            lambda: (
                (r := http.get(f"/runs/{run['id']}").json())["terminal"]
                or r["state"] == "review_ready"
            ),
            120,
            "the run to finish",
        )
        assert done
        detail = http.get(f"/runs/{run['id']}").json()
        assert detail["state"] == "review_ready", detail
    with client(stack, tokens["read"]) as reader:
        refused = reader.post("/runs", json={"repository": stack.repo, "issue_number": number})
        assert refused.status_code == 403
    assert len([r for r in stack.runs() if str(r["branch"]).startswith(f"bosun/{number}-")]) == 1
