"""Issue routes: issues, comments, labels and reactions (installation tokens)."""

from __future__ import annotations

from . import actions_issues as acts
from . import render
from .context import Context
from .http import HttpError, Request, Response, Router
from .state import Repo


def register(router: Router, ctx: Context) -> None:
    s = ctx.store

    def create_issue(request: Request) -> Response:
        r: Repo = request.auth.repo
        body = request.json()
        issue = acts.open_issue(
            ctx, r, body.get("title", ""), body.get("body"), ctx.bot(), body.get("labels")
        )
        return Response(201, render.issue(s, r, issue))

    def get_issue(request: Request) -> Response:
        r: Repo = request.auth.repo
        return Response(200, render.issue(s, r, ctx.issue(r, request.params["number"])))

    def update_issue(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.issue(r, request.params["number"])
        body = request.json()
        acts.edit_issue(ctx, r, issue, body, ctx.bot())
        if "labels" in body:
            for name in [n for n in issue.labels if n not in body["labels"]]:
                acts.remove_label(ctx, r, issue, name, ctx.bot())
            acts.add_labels(ctx, r, issue, list(body["labels"]), ctx.bot())
        return Response(200, render.issue(s, r, issue))

    def list_comments(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.issue(r, request.params["number"])
        per_page = min(int(request.arg("per_page", "30") or 30), 100)
        page = max(int(request.arg("page", "1") or 1), 1)
        ids = issue.comment_ids[(page - 1) * per_page : page * per_page]
        items = [render.comment(s, r, s.comments[i]) for i in ids]
        headers = {}
        if len(issue.comment_ids) > page * per_page:
            url = f"{s.base_url}/repos/{r.full_name}/issues/{issue.number}/comments"
            headers["link"] = f'<{url}?per_page={per_page}&page={page + 1}>; rel="next"'
        return Response(200, items, headers)

    def create_comment(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.issue(r, request.params["number"])
        body = request.json().get("body", "")
        comment = acts.add_comment(ctx, r, issue, body, ctx.bot(), via_app=True)
        return Response(201, render.comment(s, r, comment))

    def get_comment(request: Request) -> Response:
        r: Repo = request.auth.repo
        return Response(200, render.comment(s, r, ctx.comment(r, request.params["comment_id"])))

    def update_comment(request: Request) -> Response:
        r: Repo = request.auth.repo
        comment = ctx.comment(r, request.params["comment_id"])
        acts.edit_comment(ctx, r, comment, request.json().get("body", ""), ctx.bot())
        return Response(200, render.comment(s, r, comment))

    def delete_comment(request: Request) -> Response:
        r: Repo = request.auth.repo
        acts.delete_comment(ctx, r, ctx.comment(r, request.params["comment_id"]), ctx.bot())
        return Response(204)

    def add_labels(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.issue(r, request.params["number"])
        body = request.json()
        labels = body.get("labels", []) if isinstance(body, dict) else body
        labels = [x["name"] if isinstance(x, dict) else x for x in labels]
        if not labels:
            raise HttpError(422, 'Invalid request.\n\nNo subschema in "anyOf" matched.')
        acts.add_labels(ctx, r, issue, labels, ctx.bot())
        return Response(200, [render.label(s, r, n) for n in issue.labels])

    def remove_label(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.issue(r, request.params["number"])
        acts.remove_label(ctx, r, issue, request.params["name"], ctx.bot())
        return Response(200, [render.label(s, r, n) for n in issue.labels])

    def react_issue(request: Request) -> Response:
        r: Repo = request.auth.repo
        issue = ctx.issue(r, request.params["number"])
        reaction, created = acts.react(ctx, issue, request.json().get("content", ""), ctx.bot())
        return Response(201 if created else 200, render.reaction(s, reaction))

    def react_comment(request: Request) -> Response:
        r: Repo = request.auth.repo
        comment = ctx.comment(r, request.params["comment_id"])
        reaction, created = acts.react(ctx, comment, request.json().get("content", ""), ctx.bot())
        return Response(201 if created else 200, render.reaction(s, reaction))

    base = "/repos/{owner}/{repo}/issues"
    read, write = ("issues", "read"), ("issues", "write")
    router.add("POST", base, create_issue, "token", write)
    router.add("GET", f"{base}/comments/{{comment_id}}", get_comment, "token", read)
    router.add("PATCH", f"{base}/comments/{{comment_id}}", update_comment, "token", write)
    router.add("DELETE", f"{base}/comments/{{comment_id}}", delete_comment, "token", write)
    router.add("POST", f"{base}/comments/{{comment_id}}/reactions", react_comment, "token", write)
    router.add("GET", f"{base}/{{number}}", get_issue, "token", read)
    router.add("PATCH", f"{base}/{{number}}", update_issue, "token", write)
    router.add("GET", f"{base}/{{number}}/comments", list_comments, "token", read)
    router.add("POST", f"{base}/{{number}}/comments", create_comment, "token", write)
    router.add("POST", f"{base}/{{number}}/labels", add_labels, "token", write)
    router.add("DELETE", f"{base}/{{number}}/labels/{{name}}", remove_label, "token", write)
    router.add("POST", f"{base}/{{number}}/reactions", react_issue, "token", write)
