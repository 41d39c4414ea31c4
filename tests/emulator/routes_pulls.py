"""Pull request and check run routes (installation tokens)."""

from __future__ import annotations

from . import actions_checks, actions_code, actions_issues, render_pulls
from .context import Context
from .http import HttpError, Request, Response, Router, not_found
from .state import Repo


def register(router: Router, ctx: Context) -> None:
    s = ctx.store

    def create_pull(request: Request) -> Response:
        r: Repo = request.auth.repo
        body = request.json()
        for key in ("head", "base"):
            if not body.get(key):
                raise HttpError(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "PullRequest", "field": key, "code": "missing_field"}],
                )
        issue = actions_code.open_pull(
            ctx,
            r,
            body.get("title", ""),
            body.get("body"),
            body["head"],
            body["base"],
            ctx.bot(),
            bool(body.get("draft", False)),
        )
        if issue.pull is not None:
            issue.pull.maintainer_can_modify = bool(body.get("maintainer_can_modify", False))
        return Response(201, render_pulls.pull(s, r, issue))

    def list_pulls(request: Request) -> Response:
        r: Repo = request.auth.repo
        state = request.arg("state", "open")
        head = request.arg("head")
        base = request.arg("base")
        items = []
        for issue in s.pulls(r):
            p = issue.pull
            assert p is not None
            if state != "all" and issue.state != state:
                continue
            if head and f"{r.owner.login}:{p.head}".lower() != head.lower() and head != p.head:
                continue
            if base and p.base != base:
                continue
            items.append(render_pulls.pull(s, r, issue, simple=True))
        items.sort(key=lambda x: x["number"], reverse=request.arg("direction", "desc") == "desc")
        return Response(200, items)

    def get_pull(request: Request) -> Response:
        r: Repo = request.auth.repo
        return Response(200, render_pulls.pull(s, r, ctx.pull(r, request.params["number"])))

    def update_pull(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.pull(r, request.params["number"])
        body = request.json()
        if issue.pull and issue.pull.merged and body.get("state") == "open":
            raise HttpError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": "state cannot be changed. The pull request has been merged.",
                    }
                ],
            )
        if "base" in body and issue.pull is not None:
            issue.pull.base = body["base"]
        actions_issues.edit_issue(ctx, r, issue, body, ctx.bot())
        return Response(200, render_pulls.pull(s, r, issue))

    def merge_pull(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.pull(r, request.params["number"])
        body = request.json()
        sha = actions_code.merge_pull(
            ctx,
            r,
            issue,
            ctx.bot(),
            body.get("merge_method", "merge"),
            body.get("sha"),
            body.get("commit_title"),
            body.get("commit_message"),
        )
        return Response(
            200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
        )

    def list_reviews(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.pull(r, request.params["number"])
        assert issue.pull is not None
        return Response(200, [render_pulls.review(s, r, issue, v) for v in issue.pull.reviews])

    def create_check(request: Request) -> Response:
        r: Repo = request.auth.repo
        check = actions_checks.create(ctx, r, request.json())
        return Response(201, render_pulls.check_run(s, r, check))

    def find_check(request: Request) -> actions_checks.CheckRun:
        r: Repo = request.auth.repo
        try:
            check = s.check_runs.get(int(request.params["check_run_id"]))
        except ValueError:
            check = None
        if check is None or check.repo_id != r.id:
            raise not_found()
        return check

    def get_check(request: Request) -> Response:
        check = find_check(request)
        return Response(200, render_pulls.check_run(s, request.auth.repo, check))

    def update_check(request: Request) -> Response:
        r: Repo = request.auth.repo
        check = find_check(request)
        actions_checks.update(ctx, r, check, request.json())
        return Response(200, render_pulls.check_run(s, r, check))

    def checks_for_ref(request: Request) -> Response:
        r: Repo = request.auth.repo
        from . import gitrepo

        sha = gitrepo.resolve(r.path, request.params["ref"])
        if sha is None:
            raise HttpError(422, f"No commit found for SHA: {request.params['ref']}")
        name = request.arg("check_name")
        status = request.arg("status")
        runs = [
            c
            for c in s.check_runs.values()
            if c.repo_id == r.id
            and c.head_sha == sha
            and (not name or c.name == name)
            and (not status or c.status == status)
        ]
        if request.arg("filter", "latest") == "latest":
            latest: dict[str, actions_checks.CheckRun] = {}
            for c in runs:
                latest[c.name] = c
            runs = list(latest.values())
        runs.sort(key=lambda c: c.id, reverse=True)
        return Response(
            200,
            {
                "total_count": len(runs),
                "check_runs": [render_pulls.check_run(s, r, c) for c in runs],
            },
        )

    base = "/repos/{owner}/{repo}"
    pr_read, pr_write = ("pull_requests", "read"), ("pull_requests", "write")
    router.add("GET", f"{base}/pulls", list_pulls, "token", pr_read)
    router.add("POST", f"{base}/pulls", create_pull, "token", pr_write)
    router.add("GET", f"{base}/pulls/{{number}}", get_pull, "token", pr_read)
    router.add("PATCH", f"{base}/pulls/{{number}}", update_pull, "token", pr_write)
    router.add("PUT", f"{base}/pulls/{{number}}/merge", merge_pull, "token", ("contents", "write"))
    router.add("GET", f"{base}/pulls/{{number}}/reviews", list_reviews, "token", pr_read)
    router.add("POST", f"{base}/check-runs", create_check, "token", ("checks", "write"))
    router.add("GET", f"{base}/check-runs/{{check_run_id}}", get_check, "token", ("checks", "read"))
    router.add(
        "PATCH", f"{base}/check-runs/{{check_run_id}}", update_check, "token", ("checks", "write")
    )
    router.add(
        "GET",
        f"{base}/commits/{{ref:path}}/check-runs",
        checks_for_ref,
        "token",
        ("checks", "read"),
    )
