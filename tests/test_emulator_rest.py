"""The emulator's REST API, called through githubkit: every body validates against GitHub's
OpenAPI description and parses into githubkit's typed models."""

from __future__ import annotations

from typing import Any

import pytest
from githubkit.exception import RequestFailed

from tests.emulator import schemas
from tests.emulator.world import World

pytest_plugins = ["tests.emulator.fixtures"]

REPO = "/repos/{owner}/{repo}"


def valid(response: Any, method: str, template: str) -> Any:
    """Assert the body matches GitHub's schema for this operation and status; parse it."""
    body = response.json() if response.content else None
    assert schemas.rest_errors(method, template, response.status_code, body) == []
    for header in (
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-used",
        "x-ratelimit-resource",
        "x-github-request-id",
    ):
        assert header in response.headers, header
    if body is not None:
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        return response.parsed_data
    return None


def refused(call: Any, status: int, method: str, template: str) -> dict[str, Any]:
    with pytest.raises(RequestFailed) as info:
        call()
    response = info.value.response
    assert response.status_code == status
    body = response.json()
    assert schemas.rest_errors(method, template, status, body) == []
    assert body["documentation_url"].startswith("https://docs.github.com/")
    return dict(body)


def test_app_routes_with_jwt(github_world: World) -> None:
    gh = github_world.app_github()
    app = valid(gh.rest.apps.get_authenticated(), "get", "/app")
    assert app.id == github_world.app.app_id
    assert app.slug == github_world.app.slug
    installations = valid(gh.rest.apps.list_installations(), "get", "/app/installations")
    assert [i.id for i in installations] == [github_world.repo.installation_id]
    one = valid(
        gh.rest.apps.get_installation(github_world.repo.installation_id),
        "get",
        "/app/installations/{installation_id}",
    )
    assert one.account.login == "octo"
    via_repo = valid(
        gh.rest.apps.get_repo_installation("octo", "hello"), "get", f"{REPO}/installation"
    )
    assert via_repo.id == one.id
    token = valid(
        gh.rest.apps.create_installation_access_token(
            one.id, repositories=["hello"], permissions={"issues": "read"}
        ),
        "post",
        "/app/installations/{installation_id}/access_tokens",
    )
    assert token.token.startswith("ghs_")
    assert token.repository_selection == "selected"
    assert token.permissions.issues == "read"
    assert [r.full_name for r in token.repositories] == ["octo/hello"]
    installation = github_world.installation_github()
    limits = valid(installation.rest.rate_limit.get(), "get", "/rate_limit")
    assert limits.resources.core.limit == 5000


def test_repository_contents_refs_branches_permissions(github_world: World) -> None:
    gh = github_world.installation_github()
    repo = valid(gh.rest.repos.get("octo", "hello"), "get", REPO)
    assert (repo.full_name, repo.default_branch) == ("octo/hello", "main")
    readme = valid(
        gh.rest.repos.get_content("octo", "hello", "README.md"), "get", f"{REPO}/contents/{{path}}"
    )
    import base64

    assert base64.b64decode(readme.content) == b"# Hello\n"
    listing = valid(
        gh.rest.repos.get_content("octo", "hello", "src"), "get", f"{REPO}/contents/{{path}}"
    )
    assert [item.path for item in listing] == ["src/app.py"]
    refused(
        lambda: gh.rest.repos.get_content("octo", "hello", "missing.txt"),
        404,
        "get",
        f"{REPO}/contents/{{path}}",
    )

    main_sha = github_world.emulator.state("octo", "hello")["branches"]["main"]
    ref = valid(
        gh.rest.git.get_ref("octo", "hello", "heads/main"), "get", f"{REPO}/git/ref/{{ref}}"
    )
    assert ref.object_.sha == main_sha
    created = valid(
        gh.rest.git.create_ref("octo", "hello", ref="refs/heads/feature", sha=main_sha),
        "post",
        f"{REPO}/git/refs",
    )
    assert created.ref == "refs/heads/feature"
    refused(
        lambda: gh.rest.git.create_ref("octo", "hello", ref="refs/heads/feature", sha=main_sha),
        422,
        "post",
        f"{REPO}/git/refs",
    )
    branches = valid(gh.rest.repos.list_branches("octo", "hello"), "get", f"{REPO}/branches")
    assert sorted(b.name for b in branches) == ["feature", "main"]
    branch = valid(
        gh.rest.repos.get_branch("octo", "hello", "main"), "get", f"{REPO}/branches/{{branch}}"
    )
    assert branch.commit.sha == main_sha

    template = f"{REPO}/collaborators/{{username}}/permission"
    alice = valid(
        gh.rest.repos.get_collaborator_permission_level("octo", "hello", "alice"), "get", template
    )
    assert (alice.permission, alice.role_name) == ("write", "write")
    mallory = valid(
        gh.rest.repos.get_collaborator_permission_level("octo", "hello", "mallory"), "get", template
    )
    assert mallory.permission == "read"
    owner = valid(
        gh.rest.repos.get_collaborator_permission_level("octo", "hello", "octo"), "get", template
    )
    assert owner.permission == "admin"
    refused(
        lambda: gh.rest.repos.get_collaborator_permission_level("octo", "hello", "nobody"),
        404,
        "get",
        template,
    )


def test_issues_comments_labels_reactions(github_world: World) -> None:
    em = github_world.emulator
    number = em.create_issue("octo/hello", "Crash on start", "Steps...", user="alice")
    em.comment("octo/hello", number, "me too", user="mallory")
    gh = github_world.installation_github()
    issue_t = f"{REPO}/issues/{{issue_number}}"
    issue = valid(gh.rest.issues.get("octo", "hello", number), "get", issue_t)
    assert (issue.title, issue.user.login, issue.comments) == ("Crash on start", "alice", 1)

    comments_t = f"{issue_t}/comments"
    comment = valid(
        gh.rest.issues.create_comment("octo", "hello", number, body="On it"), "post", comments_t
    )
    assert comment.user.login == github_world.app.bot_login
    assert comment.user.type == "Bot"
    listed = valid(gh.rest.issues.list_comments("octo", "hello", number), "get", comments_t)
    assert [c.body for c in listed] == ["me too", "On it"]

    one_t = f"{REPO}/issues/comments/{{comment_id}}"
    edited = valid(
        gh.rest.issues.update_comment("octo", "hello", comment.id, body="Done"), "patch", one_t
    )
    assert edited.body == "Done"
    assert (
        valid(gh.rest.issues.get_comment("octo", "hello", comment.id), "get", one_t).body == "Done"
    )

    reaction = valid(
        gh.rest.reactions.create_for_issue_comment("octo", "hello", comment.id, content="eyes"),
        "post",
        f"{one_t}/reactions",
    )
    assert reaction.content == "eyes"
    valid(
        gh.rest.reactions.create_for_issue("octo", "hello", number, content="+1"),
        "post",
        f"{issue_t}/reactions",
    )

    labels = valid(
        gh.rest.issues.add_labels("octo", "hello", number, labels=["bosun"]),
        "post",
        f"{issue_t}/labels",
    )
    assert [label.name for label in labels] == ["bosun"]
    remaining = valid(
        gh.rest.issues.remove_label("octo", "hello", number, "bosun"),
        "delete",
        f"{issue_t}/labels/{{name}}",
    )
    assert remaining == []
    refused(
        lambda: gh.rest.issues.remove_label("octo", "hello", number, "bosun"),
        404,
        "delete",
        f"{issue_t}/labels/{{name}}",
    )

    response = gh.rest.issues.delete_comment("octo", "hello", comment.id)
    assert response.status_code == 204
    refused(lambda: gh.rest.issues.get_comment("octo", "hello", comment.id), 404, "get", one_t)

    closed = valid(gh.rest.issues.update("octo", "hello", number, state="closed"), "patch", issue_t)
    assert (closed.state, closed.state_reason) == ("closed", "completed")
    created = valid(
        gh.rest.issues.create("octo", "hello", title="Follow-up"), "post", f"{REPO}/issues"
    )
    assert created.number == number + 1

    state = em.state("octo", "hello")
    first = state["issues"][0]
    assert first["reactions"] == [{"content": "+1", "user": github_world.app.bot_login}]
    assert [c["body"] for c in first["comments"]] == ["me too"]


def test_pull_requests_merge_and_reviews(github_world: World) -> None:
    em = github_world.emulator
    em.push("octo/hello", "feature", {"feature.txt": "new\n"}, user="alice", message="Add")
    gh = github_world.installation_github()
    pulls_t = f"{REPO}/pulls"
    pr = valid(
        gh.rest.pulls.create(
            "octo",
            "hello",
            title="Add feature",
            head="feature",
            base="main",
            body="Closes #1",
            draft=True,
        ),
        "post",
        pulls_t,
    )
    assert (pr.head.ref, pr.base.ref, pr.draft, pr.mergeable) == ("feature", "main", True, True)
    refused(
        lambda: gh.rest.pulls.create("octo", "hello", title="again", head="feature", base="main"),
        422,
        "post",
        pulls_t,
    )
    listed = valid(
        gh.rest.pulls.list("octo", "hello", head="octo:feature", state="open"), "get", pulls_t
    )
    assert [p.number for p in listed] == [pr.number]
    assert valid(gh.rest.pulls.list("octo", "hello", base="other"), "get", pulls_t) == []
    one_t = f"{pulls_t}/{{pull_number}}"
    got = valid(gh.rest.pulls.get("octo", "hello", pr.number), "get", one_t)
    assert (got.commits, got.additions, got.changed_files) == (1, 1, 1)
    updated = valid(
        gh.rest.pulls.update("octo", "hello", pr.number, title="Add the feature"), "patch", one_t
    )
    assert updated.title == "Add the feature"

    em.review("octo/hello", pr.number, "APPROVED", user="alice", body="LGTM")
    reviews = valid(
        gh.rest.pulls.list_reviews("octo", "hello", pr.number), "get", f"{one_t}/reviews"
    )
    assert [(r.state, r.user.login, r.commit_id) for r in reviews] == [
        ("APPROVED", "alice", pr.head.sha)
    ]

    merge_t = f"{one_t}/merge"
    body = refused(
        lambda: gh.rest.pulls.merge("octo", "hello", pr.number, sha="0" * 40), 409, "put", merge_t
    )
    assert body["message"] == "Head branch was modified. Review and try the merge again."
    merged = valid(
        gh.rest.pulls.merge("octo", "hello", pr.number, sha=pr.head.sha, merge_method="squash"),
        "put",
        merge_t,
    )
    assert merged.merged is True
    assert em.state("octo", "hello")["branches"]["main"] == merged.sha
    body = refused(lambda: gh.rest.pulls.merge("octo", "hello", pr.number), 405, "put", merge_t)
    assert body["message"] == "Pull Request is not mergeable"
    after = valid(gh.rest.pulls.get("octo", "hello", pr.number), "get", one_t)
    assert (after.state, after.merged, after.merged_by.login) == (
        "closed",
        True,
        github_world.app.bot_login,
    )


def test_conflicting_pull_request_is_not_mergeable(github_world: World) -> None:
    em = github_world.emulator
    em.push("octo/hello", "left", {"README.md": "left\n"}, user="alice")
    em.push("octo/hello", "main", {"README.md": "main\n"}, user="alice")
    gh = github_world.installation_github()
    pr = gh.rest.pulls.create("octo", "hello", title="Left", head="left", base="main")
    got = valid(
        gh.rest.pulls.get("octo", "hello", pr.parsed_data.number),
        "get",
        f"{REPO}/pulls/{{pull_number}}",
    )
    assert (got.mergeable, got.mergeable_state) == (False, "dirty")
    body = refused(
        lambda: gh.rest.pulls.merge("octo", "hello", got.number),
        405,
        "put",
        f"{REPO}/pulls/{{pull_number}}/merge",
    )
    assert body["message"] == "Pull Request is not mergeable"


def test_check_runs_and_their_limits(github_world: World) -> None:
    gh = github_world.installation_github()
    sha = github_world.emulator.state("octo", "hello")["branches"]["main"]
    create_t = f"{REPO}/check-runs"
    run = valid(
        gh.rest.checks.create(
            "octo", "hello", name="bosun", head_sha=sha, status="queued", external_id="run-1"
        ),
        "post",
        create_t,
    )
    assert (run.status, run.conclusion, run.app.slug) == ("queued", None, github_world.app.slug)
    one_t = f"{create_t}/{{check_run_id}}"
    actions = [{"label": "Approve", "description": "Merge it", "identifier": "approve"}]
    updated = valid(
        gh.rest.checks.update(
            "octo",
            "hello",
            run.id,
            status="in_progress",
            output={
                "title": "Running",
                "summary": "phase 1",
                "annotations": [
                    {
                        "path": "README.md",
                        "start_line": 1,
                        "end_line": 1,
                        "annotation_level": "warning",
                        "message": "hm",
                    }
                ],
            },
            actions=actions,
        ),
        "patch",
        one_t,
    )
    assert (updated.status, updated.output.annotations_count) == ("in_progress", 1)
    done = valid(
        gh.rest.checks.update("octo", "hello", run.id, conclusion="success"), "patch", one_t
    )
    assert (done.status, done.conclusion) == ("completed", "success")
    assert done.completed_at is not None
    assert valid(gh.rest.checks.get("octo", "hello", run.id), "get", one_t).id == run.id
    listed = valid(
        gh.rest.checks.list_for_ref("octo", "hello", "main"),
        "get",
        f"{REPO}/commits/{{ref}}/check-runs",
    )
    assert [c.id for c in listed.check_runs] == [run.id]

    # githubkit checks these limits client-side too, so the raw requests go around it.
    url = f"/repos/octo/hello/check-runs/{run.id}"
    too_long = {"title": "t", "summary": "x" * 65536}
    body = refused(lambda: gh.request("PATCH", url, json={"output": too_long}), 422, "patch", one_t)
    assert "Only 65535 characters are allowed; 65536 were supplied." in body["message"]
    annotation = {
        "path": "a",
        "start_line": 1,
        "end_line": 1,
        "annotation_level": "notice",
        "message": "m",
    }
    many = {"title": "t", "summary": "s", "annotations": [annotation] * 51}
    body = refused(lambda: gh.request("PATCH", url, json={"output": many}), 422, "patch", one_t)
    assert "Only 50 annotations" in body["message"]
    four = [{"label": f"L{i}", "description": "d", "identifier": f"i{i}"} for i in range(4)]
    body = refused(
        lambda: gh.request(
            "POST",
            "/repos/octo/hello/check-runs",
            json={"name": "x", "head_sha": sha, "actions": four},
        ),
        422,
        "post",
        create_t,
    )
    assert "Only 3 actions" in body["message"]
    assert body["errors"][0]["field"] == "actions"
    valid(
        gh.rest.checks.update(
            "octo",
            "hello",
            run.id,
            output={"title": "t", "summary": "y" * 65535, "annotations": [annotation] * 50},
        ),
        "patch",
        one_t,
    )
    state = github_world.emulator.state("octo", "hello")["check_runs"]
    assert len(state) == 1
    assert len(state[0]["updates"]) == 4
    assert len(state[0]["annotations"]) == 51


def test_hook_deliveries_api(github_world: World) -> None:
    em = github_world.emulator
    em.create_issue("octo/hello", "Hi", user="alice")
    sent = em.deliveries()
    gh = github_world.app_github()
    items = valid(gh.rest.apps.list_webhook_deliveries(), "get", "/app/hook/deliveries")
    assert {i.guid for i in items} == {d["guid"] for d in sent}
    newest = items[0]
    assert (newest.event, newest.action, newest.status_code) == ("issues", "opened", 202)
    detail = valid(
        gh.rest.apps.get_webhook_delivery(newest.id), "get", "/app/hook/deliveries/{delivery_id}"
    )
    assert detail.event == "issues"
    raw = gh.rest.apps.get_webhook_delivery(newest.id).json()
    assert raw["request"]["payload"]["issue"]["title"] == "Hi"
    assert raw["request"]["headers"]["X-GitHub-Delivery"] == newest.guid
    accepted = gh.rest.apps.redeliver_webhook_delivery(newest.id)
    assert accepted.status_code == 202
    again = next(d for d in em.deliveries() if d["guid"] == newest.guid)
    assert [a["redelivery"] for a in again["attempts"]] == [False, True]


def test_manifest_conversion(emulator: Any) -> None:
    code = emulator.manifest_code(
        {
            "name": "Bosun Dev",
            "url": "http://127.0.0.1",
            "hook_attributes": {"url": "http://127.0.0.1:9/hook"},
        }
    )
    from githubkit import GitHub, UnauthAuthStrategy

    gh = GitHub(UnauthAuthStrategy(), base_url=emulator.base_url)
    template = "/app-manifests/{code}/conversions"
    app = valid(gh.rest.apps.create_from_manifest(code), "post", template)
    assert app.slug == "bosun-dev"
    assert "PRIVATE KEY" in app.pem
    refused(lambda: gh.rest.apps.create_from_manifest(code), 404, "post", template)


def test_standalone_server_prints_its_base_url(tmp_path: Any) -> None:
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.emulator",
            "serve",
            "--port",
            "0",
            "--data",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        answer = httpx.get(f"{base_url}/rate_limit", trust_env=False)
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-limit"] == "60"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_what_a_merge_waits_for(github_world: World) -> None:
    """Branch protection's required checks (on the branch, and the administration-only
    endpoint), commit statuses (latest per context), another App's check runs, and a
    review's line comments: every body as GitHub's schema says, parsed by githubkit."""
    em = github_world.emulator
    sha = em.push("octo/hello", "feature", {"f.txt": "1\n"}, user="alice", message="Add")
    gh = github_world.installation_github()
    branch_t = f"{REPO}/branches/{{branch}}"
    plain = valid(gh.rest.repos.get_branch("octo", "hello", "main"), "get", branch_t)
    assert plain.protected is False
    em.protect("octo/hello", "main", ["ci/lint", "test"])
    main = valid(gh.rest.repos.get_branch("octo", "hello", "main"), "get", branch_t)
    checks = main.protection.required_status_checks
    assert (main.protected, checks.contexts) == (True, ["ci/lint", "test"])
    assert [c.context for c in checks.checks] == ["ci/lint", "test"]
    refused(  # the App holds no administration permission
        lambda: gh.rest.repos.get_status_checks_protection("octo", "hello", "main"),
        403,
        "get",
        f"{branch_t}/protection/required_status_checks",
    )
    rules_t = f"{REPO}/rules/branches/{{branch}}"
    assert valid(gh.rest.repos.get_branch_rules("octo", "hello", "main"), "get", rules_t) == []
    em.ruleset("octo/hello", "main", ["build", "e2e"], apps={"e2e": "ci"})
    (rule,) = valid(gh.rest.repos.get_branch_rules("octo", "hello", "main"), "get", rules_t)
    checks = rule.parameters.required_status_checks
    assert rule.type == "required_status_checks"
    assert [(c.context, isinstance(c.integration_id, int)) for c in checks] == [
        ("build", False),
        ("e2e", True),
    ]

    status_t = f"{REPO}/commits/{{ref}}/status"
    empty = valid(gh.rest.repos.get_combined_status_for_ref("octo", "hello", sha), "get", status_t)
    assert (empty.state, empty.total_count) == ("pending", 0)
    em.commit_status("octo/hello", sha, "ci/lint", "pending", user="alice")
    em.commit_status(
        "octo/hello", sha, "ci/lint", "failure", user="alice", target_url="https://ci.example/1"
    )
    em.commit_status("octo/hello", sha, "ci/docs", "success", user="alice")
    combined = valid(
        gh.rest.repos.get_combined_status_for_ref("octo", "hello", "feature"), "get", status_t
    )
    assert combined.state == "failure" and combined.sha == sha
    assert sorted((s.context, s.state) for s in combined.statuses) == [
        ("ci/docs", "success"),
        ("ci/lint", "failure"),
    ]
    refused(  # statuses: read only
        lambda: gh.rest.repos.create_commit_status("octo", "hello", sha, state="success"),
        403,
        "post",
        f"{REPO}/statuses/{{sha}}",
    )

    em.ci_check("octo/hello", sha, "test", None, status="in_progress")
    em.ci_check("octo/hello", sha, "test", "success")
    runs = valid(
        gh.rest.checks.list_for_ref("octo", "hello", sha),
        "get",
        f"{REPO}/commits/{{ref}}/check-runs",
    )
    assert [(r.name, r.status, r.conclusion, r.app.slug) for r in runs.check_runs] == [
        ("test", "completed", "success", "ci")
    ]

    pr = gh.rest.pulls.create("octo", "hello", title="F", head="feature", base="main").parsed_data
    review_id = em.review(
        "octo/hello",
        pr.number,
        "CHANGES_REQUESTED",
        user="alice",
        body="Not yet",
        comments=[{"path": "f.txt", "line": 1, "body": "Use 2"}],
    )
    comments = valid(
        gh.rest.pulls.list_comments_for_review("octo", "hello", pr.number, review_id),
        "get",
        f"{REPO}/pulls/{{pull_number}}/reviews/{{review_id}}/comments",
    )
    assert [(c.path, c.line, c.body, c.user.login) for c in comments] == [
        ("f.txt", 1, "Use 2", "alice")
    ]
