"""``/app*`` routes (App JWT only), manifest conversion and ``/rate_limit``."""

from __future__ import annotations

import secrets
from typing import Any

from . import actions_app, auth, render
from .context import Context
from .http import HttpError, Request, Response, Router, not_found
from .state import Delivery, Installation, iso


def register(router: Router, ctx: Context) -> None:
    s = ctx.store

    def installation(request: Request) -> Installation:
        try:
            found = s.installations.get(int(request.params["installation_id"]))
        except ValueError:
            found = None
        if found is None:
            raise not_found()
        return found

    def get_app(request: Request) -> Response:
        assert s.app is not None
        return Response(200, render.app(s, s.app))

    def list_installations(request: Request) -> Response:
        return Response(200, [render.installation(s, i) for i in s.installations.values()])

    def get_installation(request: Request) -> Response:
        return Response(200, render.installation(s, installation(request)))

    def create_token(request: Request) -> Response:
        inst = installation(request)
        body = request.json()
        repo_ids: list[int] | None = None
        names = body.get("repositories")
        ids = body.get("repository_ids")
        if names is not None or ids is not None:
            repo_ids = []
            for name in names or []:
                repo = s.repo(inst.account.login, name)
                if repo is None or repo.id not in inst.repo_ids:
                    raise HttpError(
                        422,
                        "There is at least one repository that does not exist "
                        "or is not accessible to the parent installation.",
                    )
                repo_ids.append(repo.id)
            for repo_id in ids or []:
                if repo_id not in inst.repo_ids:
                    raise HttpError(
                        422,
                        "There is at least one repository that does not exist "
                        "or is not accessible to the parent installation.",
                    )
                repo_ids.append(int(repo_id))
        assert s.app is not None
        granted = dict(s.app.permissions)
        wanted = body.get("permissions")
        if wanted:
            for name, level in wanted.items():
                have = granted.get(name, "none")
                if auth.LEVELS.get(level, 99) > auth.LEVELS.get(have, 0):
                    raise HttpError(
                        422, "The permissions requested are not granted to this installation."
                    )
            granted = {name: level for name, level in wanted.items()}
            granted.setdefault("metadata", "read")
        token = auth.new_token(s, inst.id, repo_ids, granted)
        data: dict[str, Any] = {
            "token": token.token,
            "expires_at": iso(token.expires),
            "permissions": granted,
            "repository_selection": "selected" if repo_ids is not None else "all",
        }
        if repo_ids is not None:
            data["repositories"] = [render.repo(s, s.repos[i], full=False) for i in repo_ids]
        return Response(201, data)

    # GitHub's delivery cursors are opaque tokens handed out in the ``Link`` header
    # (``rel="next"``); so are these: a cursor built from an id seen gets a 422, as from GitHub.
    cursors: dict[str, int] = {}

    def list_deliveries(request: Request) -> Response:
        per_page = min(int(request.arg("per_page", "30") or 30), 100)
        token = request.arg("cursor")
        cursor: int | None = None
        if token:
            with s.lock:
                cursor = cursors.get(token)
            if cursor is None:
                raise HttpError(422, "Invalid cursor value")
        status_filter = request.arg("status")
        items = []
        with s.lock:
            for delivery in s.deliveries:
                for attempt in delivery.attempts:
                    items.append(_item(delivery, attempt))
        items.sort(key=lambda x: x["id"], reverse=True)
        if status_filter:
            ok = status_filter == "success"
            items = [x for x in items if (200 <= x["status_code"] < 300) == ok]
        if cursor is not None:
            items = [x for x in items if x["id"] < cursor]
        page = items[:per_page]
        headers = {}
        if len(items) > per_page:
            token = f"v1_{secrets.token_hex(8)}"
            with s.lock:
                cursors[token] = page[-1]["id"]
            nxt = f"{s.base_url}/app/hook/deliveries?per_page={per_page}&cursor={token}"
            headers["link"] = f'<{nxt}>; rel="next"'
        return Response(200, page, headers)

    def find_attempt(request: Request) -> tuple[Delivery, Any]:
        try:
            wanted = int(request.params["delivery_id"])
        except ValueError:
            raise not_found() from None
        with s.lock:
            for delivery in s.deliveries:
                for attempt in delivery.attempts:
                    if attempt.id == wanted:
                        return delivery, attempt
        raise not_found()

    def get_delivery(request: Request) -> Response:
        delivery, attempt = find_attempt(request)
        data = _item(delivery, attempt)
        data["url"] = s.app.webhook_url if s.app else ""
        data["request"] = {"headers": delivery.headers, "payload": delivery.payload}
        data["response"] = {"headers": attempt.response_headers, "payload": attempt.response_body}
        return Response(200, data)

    def redeliver(request: Request) -> Response:
        delivery, _ = find_attempt(request)
        ctx.hooks.redeliver(delivery)
        return Response(202, {})

    def manifest_conversion(request: Request) -> Response:
        code = request.params["code"]
        manifest = s.manifest_codes.pop(code, None)
        if manifest is None:
            raise not_found()
        hook = manifest.get("hook_attributes") or {}
        app = actions_app.create_app(ctx, hook.get("url", ""), None, manifest.get("name"))
        data = render.app(s, app)
        data.update(
            client_id=f"Iv1.{app.id:016x}",
            client_secret=f"{app.id:040x}",
            webhook_secret=app.webhook_secret,
            pem=app.private_key_pem,
        )
        return Response(201, data)

    def repo_installation(request: Request) -> Response:
        """GitHub's "Get a repository installation for the authenticated app"."""
        repo = s.repo(request.params["owner"], request.params["repo"])
        if repo is not None:
            for inst in s.installations.values():
                if repo.id in inst.repo_ids:
                    return Response(200, render.installation(s, inst))
        raise not_found()

    def rate_limit(request: Request) -> Response:
        key = request.auth.key if request.auth else "anonymous"
        return Response(200, ctx.rate.overview(key))

    router.add("GET", "/app", get_app, "jwt")
    router.add("GET", "/app/installations", list_installations, "jwt")
    router.add("GET", "/app/installations/{installation_id}", get_installation, "jwt")
    router.add("POST", "/app/installations/{installation_id}/access_tokens", create_token, "jwt")
    router.add("GET", "/repos/{owner}/{repo}/installation", repo_installation, "jwt")
    router.add("GET", "/app/hook/deliveries", list_deliveries, "jwt")
    router.add("GET", "/app/hook/deliveries/{delivery_id}", get_delivery, "jwt")
    router.add("POST", "/app/hook/deliveries/{delivery_id}/attempts", redeliver, "jwt")
    router.add("POST", "/app-manifests/{code}/conversions", manifest_conversion, "public")
    router.add("GET", "/rate_limit", rate_limit, "public")


def _item(delivery: Delivery, attempt: Any) -> dict[str, Any]:
    ok = 200 <= attempt.status_code < 300
    if ok:
        status = "OK"
    elif attempt.status_code:
        status = f"Invalid HTTP Response: {attempt.status_code}"
    else:
        status = "failed to connect to host"
    return {
        "id": attempt.id,
        "guid": delivery.guid,
        "delivered_at": iso(attempt.delivered),
        "redelivery": attempt.redelivery,
        "duration": attempt.duration,
        "status": status,
        "status_code": attempt.status_code,
        "event": delivery.event,
        "action": delivery.action,
        "installation_id": delivery.installation_id,
        "repository_id": delivery.repository_id,
        "throttled_at": None,
    }
