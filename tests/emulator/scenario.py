"""The scenario API under ``/_emulator/``: what tests do as humans, and read-outs of state."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from . import actions_checks, actions_code, gitrepo, readouts, render
from . import actions_issues as acts
from .actions_app import create_app
from .context import Context
from .http import HttpError, Request, Response, Router, not_found
from .state import Repo

PERMISSIONS = {"read", "triage", "write", "maintain", "admin"}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise not_found() from None


def register(router: Router, ctx: Context) -> None:
    s = ctx.store

    def repo_of(request: Request) -> Repo:
        return ctx.repo(request.params["owner"], request.params["name"])

    def post_app(request: Request) -> Response:
        body = request.json()
        app = create_app(
            ctx, body.get("webhook_url", ""), body.get("webhook_secret"), body.get("name")
        )
        return Response(
            201,
            {
                "app_id": app.id,
                "private_key_pem": app.private_key_pem,
                "slug": app.slug,
                "webhook_secret": app.webhook_secret,
                "bot_login": app.bot.login,
            },
        )

    def post_repo(request: Request) -> Response:
        body = request.json()
        ctx.bot()
        for key in ("owner", "name", "source"):
            if not body.get(key):
                raise HttpError(422, f"'{key}' is required")
        r = actions_code.create_repo(
            ctx,
            body["owner"],
            body["name"],
            body["source"],
            body.get("default_branch", "main"),
            body.get("owner_type", "User"),
        )
        return Response(
            201,
            {
                "full_name": r.full_name,
                "id": r.id,
                "installation_id": r.installation_id,
                "clone_url": f"{s.base_url}/{r.full_name}.git",
            },
        )

    def post_user(request: Request) -> Response:
        body = request.json()
        login = body.get("login")
        if not login:
            raise HttpError(422, "'login' is required")
        user = s.user(login, body.get("type", "User"))
        if body.get("repo"):
            permission = body.get("permission", "read")
            if permission not in PERMISSIONS:
                raise HttpError(422, f"permission must be one of {sorted(PERMISSIONS)}")
            owner, _, name = body["repo"].partition("/")
            ctx.repo(owner, name).collaborators[login.lower()] = permission
        return Response(201, render.user(s, user))

    def post_issue(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = acts.open_issue(
            ctx,
            r,
            body.get("title", ""),
            body.get("body"),
            ctx.user(body.get("user")),
            body.get("labels"),
        )
        return Response(201, {"number": issue.number, "id": issue.id})

    def patch_issue(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.issue(r, request.params["number"])
        acts.edit_issue(ctx, r, issue, body, ctx.user(body.get("user")))
        return Response(200, {"number": issue.number})

    def post_labels(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.issue(r, request.params["number"])
        acts.add_labels(ctx, r, issue, list(body.get("labels", [])), ctx.user(body.get("user")))
        return Response(200, {"labels": issue.labels})

    def post_assignees(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.issue(r, request.params["number"])
        acts.assign(ctx, r, issue, list(body.get("assignees", [])), ctx.user(body.get("user")))
        return Response(201, {"assignees": [u.login for u in issue.assignees]})

    def delete_label(request: Request) -> Response:
        r = repo_of(request)
        issue = ctx.issue(r, request.params["number"])
        acts.remove_label(ctx, r, issue, request.params["label"], ctx.user(request.arg("user")))
        return Response(200, {"labels": issue.labels})

    def post_comment(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.issue(r, request.params["number"])
        comment = acts.add_comment(ctx, r, issue, body.get("body", ""), ctx.user(body.get("user")))
        return Response(201, {"id": comment.id})

    def patch_comment(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        comment = ctx.comment(r, request.params["comment_id"])
        sender = ctx.user(body.get("user") or comment.user.login)
        acts.edit_comment(ctx, r, comment, body.get("body", ""), sender)
        return Response(200, {"id": comment.id})

    def delete_comment(request: Request) -> Response:
        r = repo_of(request)
        comment = ctx.comment(r, request.params["comment_id"])
        acts.delete_comment(ctx, r, comment, ctx.user(request.arg("user") or comment.user.login))
        return Response(204)

    def post_pull(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = actions_code.open_pull(
            ctx,
            r,
            body.get("title", ""),
            body.get("body"),
            body.get("head", ""),
            body.get("base", r.default_branch),
            ctx.user(body.get("user")),
            bool(body.get("draft")),
        )
        return Response(201, {"number": issue.number})

    def post_review(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.pull(r, request.params["number"])
        review = actions_code.submit_review(
            ctx,
            r,
            issue,
            body.get("state", "COMMENTED"),
            body.get("body", ""),
            ctx.user(body.get("user")),
            body.get("comments") or [],
        )
        return Response(201, {"id": review.id})

    def post_review_comment(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.pull(r, request.params["number"])
        comment = actions_code.review_comment(
            ctx,
            r,
            issue,
            body.get("body", ""),
            body.get("path", "README.md"),
            int(body.get("line", 1)),
            ctx.user(body.get("user")),
        )
        return Response(201, {"id": comment.id})

    def post_merge(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        issue = ctx.pull(r, request.params["number"])
        sha = actions_code.merge_pull(
            ctx,
            r,
            issue,
            ctx.user(body.get("user")),
            body.get("merge_method", "merge"),
            body.get("sha"),
            None,
            None,
        )
        return Response(200, {"sha": sha})

    def check_of(request: Request) -> tuple[Repo, Any]:
        try:
            check = s.check_runs.get(int(request.params["check_id"]))
        except ValueError:
            check = None
        if check is None:
            raise not_found()
        return s.repos[check.repo_id], check

    def post_action(request: Request) -> Response:
        r, check = check_of(request)
        actions_checks.requested_action(
            ctx, r, check, request.params["identifier"], ctx.user(request.json().get("user"))
        )
        return Response(202, {})

    def post_rerequest(request: Request) -> Response:
        r, check = check_of(request)
        actions_checks.rerequest(ctx, r, check, ctx.user(request.json().get("user")))
        return Response(202, {})

    def post_push(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        if not body.get("branch") or not isinstance(body.get("files"), dict):
            raise HttpError(422, "'branch' and 'files' are required")
        sha = actions_code.push_files(
            ctx,
            r,
            body["branch"],
            body["files"],
            ctx.user(body.get("user")),
            body.get("message") or "Update files",
        )
        return Response(201, {"sha": sha})

    async def get_deliveries(request: Request) -> Response:
        if request.arg("wait", "1") != "0":
            await asyncio.to_thread(ctx.hooks.wait_idle, float(request.arg("timeout", "10")))
        since = int(request.arg("since", "0") or 0)
        with s.lock:
            items = [readouts.delivery(d) for d in s.deliveries[since:]]
        return Response(200, items)

    def post_redeliver(request: Request) -> Response:
        guid = request.params["guid"]
        delivery = next((d for d in s.deliveries if d.guid == guid), None)
        if delivery is None:
            raise not_found()
        ctx.hooks.redeliver(delivery)
        return Response(202, {})

    def post_fault(request: Request) -> Response:
        body = request.json()
        kind = body.get("kind")
        if kind == "expire_tokens":
            with s.lock:
                for token in s.tokens.values():
                    token.expires = min(token.expires, time.time() - 1)
            return Response(201, {"kind": kind, "expired": len(s.tokens)})
        if kind == "token_lifetime":
            s.token_lifetime = float(body.get("seconds", 3600))
            return Response(201, {"kind": kind, "seconds": s.token_lifetime})
        return Response(201, ctx.faults.add(body).describe())

    def get_faults(request: Request) -> Response:
        return Response(200, ctx.faults.list())

    def get_fault(request: Request) -> Response:
        return Response(200, ctx.faults.get(_int(request.params["fault_id"])).describe())

    def post_release(request: Request) -> Response:
        return Response(200, ctx.faults.release(_int(request.params["fault_id"])).describe())

    def delete_faults(request: Request) -> Response:
        ctx.faults.clear()
        s.token_lifetime = 3600.0
        return Response(204)

    def get_state(request: Request) -> Response:
        return Response(200, readouts.repo_state(s, repo_of(request)))

    def get_requests(request: Request) -> Response:
        with s.lock:
            return Response(200, list(s.request_log))

    def delete_requests(request: Request) -> Response:
        with s.lock:
            s.request_log.clear()
        return Response(204)

    def post_manifest_code(request: Request) -> Response:
        code = secrets.token_hex(10)
        s.manifest_codes[code] = request.json().get("manifest", {})
        return Response(201, {"code": code})

    def post_branch(request: Request) -> Response:
        body = request.json()
        r = repo_of(request)
        sha = gitrepo.resolve(r.path, body.get("from", r.default_branch))
        if sha is None:
            raise not_found()
        before = gitrepo.branches(r.path)
        gitrepo.update_ref(r.path, body["branch"], sha)
        actions_code.refs_changed(ctx, r, before, ctx.user(body.get("user") or r.owner.login))
        return Response(201, {"sha": sha})

    repo = "/_emulator/repos/{owner}/{name}"
    table: list[tuple[str, str, Any]] = [
        ("POST", "/_emulator/app", post_app),
        ("POST", "/_emulator/app-manifests", post_manifest_code),
        ("POST", "/_emulator/repos", post_repo),
        ("POST", "/_emulator/users", post_user),
        ("POST", f"{repo}/issues", post_issue),
        ("PATCH", f"{repo}/issues/{{number}}", patch_issue),
        ("POST", f"{repo}/issues/{{number}}/labels", post_labels),
        ("DELETE", f"{repo}/issues/{{number}}/labels/{{label}}", delete_label),
        ("POST", f"{repo}/issues/{{number}}/assignees", post_assignees),
        ("POST", f"{repo}/issues/{{number}}/comments", post_comment),
        ("PATCH", f"{repo}/issues/comments/{{comment_id}}", patch_comment),
        ("DELETE", f"{repo}/issues/comments/{{comment_id}}", delete_comment),
        ("POST", f"{repo}/pulls", post_pull),
        ("POST", f"{repo}/pulls/{{number}}/reviews", post_review),
        ("POST", f"{repo}/pulls/{{number}}/comments", post_review_comment),
        ("POST", f"{repo}/pulls/{{number}}/merge", post_merge),
        ("POST", f"{repo}/push", post_push),
        ("POST", f"{repo}/branches", post_branch),
        ("GET", f"{repo}/state", get_state),
        ("POST", "/_emulator/check-runs/{check_id}/actions/{identifier}", post_action),
        ("POST", "/_emulator/check-runs/{check_id}/rerequest", post_rerequest),
        ("GET", "/_emulator/deliveries", get_deliveries),
        ("POST", "/_emulator/deliveries/{guid}/redeliver", post_redeliver),
        ("POST", "/_emulator/faults", post_fault),
        ("GET", "/_emulator/faults", get_faults),
        ("DELETE", "/_emulator/faults", delete_faults),
        ("GET", "/_emulator/faults/{fault_id}", get_fault),
        ("POST", "/_emulator/faults/{fault_id}/release", post_release),
        ("GET", "/_emulator/requests", get_requests),
        ("DELETE", "/_emulator/requests", delete_requests),
    ]
    for method, path, handler in table:
        router.add(method, path, handler, "scenario")
