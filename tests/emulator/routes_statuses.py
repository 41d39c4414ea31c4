"""What a merge waits for: branch protection's required status checks, commit statuses (the
REST API and its ``status`` webhook) and check runs reported by another App (a CI), with
their ``check_run`` and ``check_suite`` webhooks.

REST: ``GET /repos/{o}/{r}/rules/branches/{branch}`` (a ruleset's required status checks),
``GET /repos/{o}/{r}/commits/{ref}/status`` (combined status), ``POST
/repos/{o}/{r}/statuses/{sha}``, ``GET /repos/{o}/{r}/branches/{branch}/protection/
required_status_checks`` (needs ``administration: read``, which Bosun's App does not ask for:
it reads the same list from ``GET /branches/{branch}``) and ``GET
/repos/{o}/{r}/pulls/{n}/reviews/{id}/comments``. Scenario: protect a branch, post a commit
status as a user, report a CI check run (``/_emulator/...``, in ``register_scenario``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from . import gitrepo, render
from . import payloads as wh
from .actions_checks import CONCLUSIONS, STATUSES
from .context import Context
from .http import HttpError, Request, Response, Router, not_found
from .state import App, CheckRun, CommitStatus, Repo, Store, User

STATUS_STATES = ("error", "failure", "pending", "success")
META = ("metadata", "read")
STATUS_DOCS = "https://docs.github.com/rest/commits/statuses#create-a-commit-status"


def status_json(s: Store, r: Repo, c: CommitStatus) -> dict[str, Any]:
    """The ``status`` schema (REST, and the webhook's fields)."""
    return {
        "url": f"{s.base_url}/repos/{r.full_name}/statuses/{c.sha}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{c.creator.id}?v=4",
        "id": c.id,
        "node_id": render.node_id("StatusContext", c.id),
        "state": c.state,
        "description": c.description,
        "target_url": c.target_url,
        "context": c.context,
        "created_at": render.iso(c.created),
        "updated_at": render.iso(c.created),
        "creator": render.user(s, c.creator),
    }


def latest_statuses(s: Store, r: Repo, sha: str) -> list[CommitStatus]:
    """The newest status of each context on ``sha``, newest first."""
    latest: dict[str, CommitStatus] = {}
    for c in s.statuses:
        if c.repo_id == r.id and c.sha == sha:
            latest[c.context] = c
    return sorted(latest.values(), key=lambda c: c.id, reverse=True)


def combined_state(statuses: list[CommitStatus]) -> str:
    states = {c.state for c in statuses}
    if states & {"error", "failure"}:
        return "failure"
    if not statuses or "pending" in states:
        return "pending"
    return "success"


def post_status(
    ctx: Context, r: Repo, sha: str, body: dict[str, Any], creator: User
) -> CommitStatus:
    state = body.get("state")
    if state not in STATUS_STATES:
        raise HttpError(
            422,
            "Validation Failed",
            errors=[
                {
                    "resource": "Status",
                    "field": "state",
                    "code": "custom",
                    "message": "state is not included in the list",
                }
            ],
            docs=STATUS_DOCS,
        )
    full = gitrepo.resolve(r.path, sha)
    if full is None or not full.startswith(sha.lower()):
        raise HttpError(422, f"No commit found for SHA: {sha}", docs=STATUS_DOCS)
    s = ctx.store
    with s.lock:
        status = CommitStatus(
            s.ids.next("status"),
            r.id,
            full,
            str(body.get("context") or "default")[:255],
            state,
            creator,
            body.get("description"),
            body.get("target_url"),
        )
        s.statuses.append(status)
    branches = [
        {
            "name": name,
            "commit": {"sha": head, "url": f"{s.base_url}/repos/{r.full_name}/commits/{head}"},
            "protected": (r.id, name) in s.protections,
        }
        for name, head in gitrepo.branches(r.path).items()
        if head == full
    ]
    from .routes_repos import commit_object

    payload = wh.envelope(
        s,
        r,
        creator,
        id=status.id,
        sha=full,
        name=r.full_name,
        target_url=status.target_url,
        avatar_url=None,
        context=status.context,
        description=status.description,
        state=status.state,
        commit=commit_object(s, r, full),
        branches=branches,
        created_at=render.iso(status.created),
        updated_at=render.iso(status.created),
    )
    ctx.hooks.emit("status", payload)
    return status


def ci_app(ctx: Context, slug: str) -> App:
    """Another App (a CI) that reports check runs, created on first use."""
    s = ctx.store
    with s.lock:
        found = s.ci_apps.get(slug)
        if found is None:
            owner = s.user(f"{slug}-owner")
            found = App(
                id=s.ids.next("app"),
                slug=slug,
                name=slug,
                owner=owner,
                private_key_pem="",
                public_key_pem="",
                webhook_url="",
                webhook_secret=secrets.token_hex(8),
                hook_id=s.ids.next("hook"),
                bot=s.user(f"{slug}[bot]", "Bot"),
            )
            s.ci_apps[slug] = found
        return found


def report_check(ctx: Context, r: Repo, body: dict[str, Any]) -> CheckRun:
    """A CI App creates or updates its check run ``name`` on ``head_sha``; GitHub sends
    ``check_run`` (created, completed) and, once every run of the suite completed,
    ``check_suite.completed`` to the installed Apps."""
    s = ctx.store
    app = ci_app(ctx, str(body.get("app") or "ci"))
    sha = gitrepo.resolve(r.path, str(body.get("head_sha") or ""))
    if sha is None:
        raise HttpError(422, f"No commit found for SHA: {body.get('head_sha')}")
    name = str(body.get("name") or "")
    status = str(body.get("status") or "completed")
    conclusion = body.get("conclusion")
    if not name or status not in STATUSES or (conclusion and conclusion not in CONCLUSIONS):
        raise HttpError(422, "name, status or conclusion invalid")
    if status == "completed" and not conclusion:
        raise HttpError(422, 'Missing required attribute "conclusion" when status is completed.')
    with s.lock:
        check = next(
            (
                c
                for c in s.check_runs.values()
                if c.repo_id == r.id
                and c.head_sha == sha
                and c.name == name
                and c.app_slug == app.slug
            ),
            None,
        )
        created = check is None
        if check is None:
            suite = next(
                (
                    c.suite_id
                    for c in s.check_runs.values()
                    if c.repo_id == r.id and c.head_sha == sha and c.app_slug == app.slug
                ),
                None,
            )
            check = CheckRun(
                s.ids.next("check_run"), suite or s.ids.next("check_suite"), r.id, name, sha
            )
            check.app_slug = app.slug
            s.check_runs[check.id] = check
        check.status = status
        check.conclusion = conclusion if status == "completed" else None
        check.details_url = body.get("details_url") or check.details_url
        check.completed = time.time() if status == "completed" else None
    sender = app.bot
    if created:
        _emit_check(ctx, r, check, "created", sender)
    if status == "completed":
        _emit_check(ctx, r, check, "completed", sender)
        suite_runs = [c for c in s.check_runs.values() if c.suite_id == check.suite_id]
        if all(c.status == "completed" for c in suite_runs):
            _emit_suite(ctx, r, check, suite_runs, app, sender)
    return check


def _emit_check(ctx: Context, r: Repo, c: CheckRun, action: str, sender: User) -> None:
    s = ctx.store
    payload = wh.envelope(s, r, sender, action=action, check_run=wh.check_run(s, r, c))
    ctx.hooks.emit("check_run", payload)


def _emit_suite(
    ctx: Context, r: Repo, c: CheckRun, runs: list[CheckRun], app: App, sender: User
) -> None:
    s = ctx.store
    run = wh.check_run(s, r, c)
    suite = dict(run["check_suite"])
    conclusions = [x.conclusion for x in runs]
    worst = next(
        (k for k in ("failure", "timed_out", "cancelled", "action_required") if k in conclusions),
        "success",
    )
    from .routes_repos import commit_object

    head = commit_object(s, r, c.head_sha)
    suite.update(
        {
            "status": "completed",
            "conclusion": worst,
            "latest_check_runs_count": len(runs),
            "check_runs_url": f"{suite['url']}/check-runs",
            "head_commit": {
                "id": c.head_sha,
                "tree_id": head["commit"]["tree"]["sha"],
                "message": head["commit"]["message"],
                "timestamp": head["commit"]["committer"]["date"],
                "author": {
                    "name": head["commit"]["author"]["name"],
                    "email": head["commit"]["author"]["email"],
                },
                "committer": {
                    "name": head["commit"]["committer"]["name"],
                    "email": head["commit"]["committer"]["email"],
                },
            },
            "app": run["app"],
        }
    )
    payload = wh.envelope(s, r, sender, action="completed", check_suite=suite)
    ctx.hooks.emit("check_suite", payload)


def protection_json(s: Store, r: Repo, branch: str) -> dict[str, Any]:
    """The ``status-check-policy`` of a protected branch."""
    api = f"{s.base_url}/repos/{r.full_name}/branches/{branch}/protection/required_status_checks"
    contexts = s.protections.get((r.id, branch), [])
    bound = s.protection_apps.get((r.id, branch), {})
    return {
        "url": api,
        "strict": False,
        "contexts": list(contexts),
        "checks": [
            {"context": c, "app_id": s.ci_apps[bound[c]].id if c in bound else None}
            for c in contexts
        ],
        "contexts_url": f"{api}/contexts",
        "enforcement_level": "non_admins",
    }


def register(router: Router, ctx: Context) -> None:
    s = ctx.store

    def combined_status(request: Request) -> Response:
        r: Repo = request.auth.repo
        sha = gitrepo.resolve(r.path, request.params["ref"])
        if sha is None:
            raise HttpError(422, f"No commit found for SHA: {request.params['ref']}")
        statuses = latest_statuses(s, r, sha)
        api = f"{s.base_url}/repos/{r.full_name}"
        return Response(
            200,
            {
                "state": combined_state(statuses),
                "statuses": [
                    {k: v for k, v in status_json(s, r, c).items() if k != "creator"}
                    for c in statuses
                ],
                "sha": sha,
                "total_count": len(statuses),
                "repository": render.repo(s, r),
                "commit_url": f"{api}/commits/{sha}",
                "url": f"{api}/commits/{sha}/status",
            },
        )

    def create_status(request: Request) -> Response:
        r: Repo = request.auth.repo
        status = post_status(ctx, r, request.params["sha"], request.json(), ctx.bot())
        return Response(201, status_json(s, r, status))

    def required_checks(request: Request) -> Response:
        r: Repo = request.auth.repo
        branch = request.params["branch"]
        if (r.id, branch) not in s.protections:
            raise HttpError(404, "Branch not protected")
        policy = protection_json(s, r, branch)
        policy.pop("enforcement_level")
        return Response(200, policy)

    def review_comments(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.pull(r, request.params["number"])
        assert issue.pull is not None
        try:
            review_id = int(request.params["review_id"])
        except ValueError:
            raise not_found() from None
        if not any(v.id == review_id for v in issue.pull.reviews):
            raise not_found()
        comments = [c for c in issue.pull.review_comments if c.review_id == review_id]
        page = max(1, int(request.arg("page", "1") or 1))
        per_page = min(100, max(1, int(request.arg("per_page", "30") or 30)))
        chunk = comments[(page - 1) * per_page : page * per_page]
        return Response(200, [wh.review_comment(s, r, issue, c) for c in chunk])

    def branch_rules(request: Request) -> Response:
        """The active rules for a branch: a ruleset's required status checks."""
        r: Repo = request.auth.repo
        checks = s.rulesets.get((r.id, request.params["branch"]), [])
        if not checks:
            return Response(200, [])
        required = []
        for context, slug in checks:
            item: dict[str, Any] = {"context": context}
            if slug is not None:
                item["integration_id"] = s.ci_apps[slug].id
            required.append(item)
        rule = {
            "type": "required_status_checks",
            "parameters": {
                "required_status_checks": required,
                "strict_required_status_checks_policy": False,
            },
            "ruleset_source_type": "Repository",
            "ruleset_source": r.full_name,
            "ruleset_id": 1000 + r.id % 1000,
        }
        return Response(200, [rule])

    base = "/repos/{owner}/{repo}"
    router.add("GET", f"{base}/rules/branches/{{branch:path}}", branch_rules, "token", META)
    router.add(
        "GET", f"{base}/commits/{{ref:path}}/status", combined_status, "token", ("statuses", "read")
    )
    router.add("POST", f"{base}/statuses/{{sha}}", create_status, "token", ("statuses", "write"))
    router.add(
        "GET",
        f"{base}/branches/{{branch}}/protection/required_status_checks",
        required_checks,
        "token",
        ("administration", "read"),
    )
    router.add(
        "GET",
        f"{base}/pulls/{{number}}/reviews/{{review_id}}/comments",
        review_comments,
        "token",
        ("pull_requests", "read"),
    )


def register_scenario(router: Router, ctx: Context) -> None:
    def repo_of(request: Request) -> Repo:
        return ctx.repo(request.params["owner"], request.params["name"])

    def post_protection(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        branch = str(body.get("branch") or r.default_branch)
        contexts = [str(c) for c in body.get("contexts") or []]
        apps = {str(k): str(v) for k, v in (body.get("apps") or {}).items()}  # context -> slug
        for slug in apps.values():
            ci_app(ctx, slug)
        with ctx.store.lock:
            if body.get("remove"):
                ctx.store.protections.pop((r.id, branch), None)
            else:
                ctx.store.protections[(r.id, branch)] = contexts
                ctx.store.protection_apps[(r.id, branch)] = apps
        return Response(200, {"branch": branch, "contexts": contexts})

    def post_commit_status(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        status = post_status(ctx, r, request.params["sha"], body, ctx.user(body.get("user")))
        return Response(201, {"id": status.id})

    def post_ci_check(request: Request) -> Response:
        r = repo_of(request)
        check = report_check(ctx, r, request.json())
        return Response(201, {"id": check.id, "suite_id": check.suite_id})

    def put_permissions(request: Request) -> Response:
        """The permissions the installation granted (an App whose new permission an owner
        has not accepted yet gets a 422 for a token asking for it)."""
        app = ctx.store.app
        if app is None:
            raise HttpError(422, "No app configured")
        app.permissions = {str(k): str(v) for k, v in request.json().items()}
        return Response(200, dict(app.permissions))

    def post_ruleset(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        branch = str(body.get("branch") or r.default_branch)
        apps = {str(k): str(v) for k, v in (body.get("apps") or {}).items()}
        for slug in apps.values():
            ci_app(ctx, slug)
        checks = [(str(c), apps.get(str(c))) for c in body.get("contexts") or []]
        with ctx.store.lock:
            ctx.store.rulesets[(r.id, branch)] = checks
        return Response(201, {"branch": branch})

    base = "/_emulator/repos/{owner}/{name}"
    router.add("POST", f"{base}/rulesets", post_ruleset, "scenario")
    router.add("PUT", "/_emulator/app/permissions", put_permissions, "scenario")
    router.add("POST", f"{base}/protection", post_protection, "scenario")
    router.add("POST", f"{base}/statuses/{{sha}}", post_commit_status, "scenario")
    router.add("POST", f"{base}/ci-check-runs", post_ci_check, "scenario")
