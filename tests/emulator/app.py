"""The ASGI application: routing, credentials, faults, GitHub's headers and the request log."""

from __future__ import annotations

import asyncio
import secrets
import time
import traceback
from pathlib import Path
from typing import Any

from . import (
    auth,
    git_http,
    routes_app,
    routes_issues,
    routes_oauth,
    routes_pulls,
    routes_repos,
    routes_statuses,
    scenario,
)
from .context import Context
from .faults import SECONDARY, Fault
from .gitrepo import GitError
from .http import HttpError, Request, Response, Router, read_request, send_response

RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
ERROR_MESSAGES = {
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
    504: "We couldn't respond to your request in time. Sorry about that.",
}


def _request_id() -> str:
    return ":".join(secrets.token_hex(n).upper() for n in (2, 3, 3, 4, 4))


class EmulatorApp:
    def __init__(self, data_dir: Path, base_url: str = "") -> None:
        self.ctx = Context.create(data_dir)
        self.ctx.store.base_url = base_url
        self.rest = Router()
        routes_app.register(self.rest, self.ctx)
        routes_statuses.register(self.rest, self.ctx)  # before `branches/{branch:path}`
        routes_repos.register(self.rest, self.ctx)
        routes_issues.register(self.rest, self.ctx)
        routes_pulls.register(self.rest, self.ctx)
        routes_oauth.register(self.rest, self.ctx)
        self.scenario = Router()
        scenario.register(self.scenario, self.ctx)
        routes_statuses.register_scenario(self.scenario, self.ctx)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.ctx.hooks.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = await read_request(scope, receive)
        if request.path.startswith("/_emulator/"):
            response = await self._dispatch(self.scenario, request, scenario_route=True)
        else:
            response = await self._github(request)
        await send_response(send, response)

    async def _dispatch(self, router: Router, request: Request, scenario_route: bool) -> Response:
        try:
            found = router.match(request.method, request.path)
            if found is None:
                raise HttpError(404, "Not Found")
            route, request.params = found
            result = route.handler(request)
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]
        except HttpError as exc:
            return exc.response()
        except GitError as exc:
            return HttpError(500, f"git failed: {exc}").response()
        except Exception:  # noqa: BLE001 - an emulator bug answers 500 with its traceback
            return HttpError(500, "Server Error: " + traceback.format_exc()).response()

    async def _github(self, request: Request) -> Response:
        ctx = self.ctx
        started = time.monotonic()
        faults = {f.kind: f for f in ctx.faults.take(request.method, request.path)}
        if "slow" in faults:
            await asyncio.sleep(faults["slow"].delay_ms / 1000)
        hold = faults.get("hold")
        if hold is not None and hold.phase == "request":
            await ctx.faults.wait(hold)
        request_id = _request_id()
        git = git_http.GIT_PATH.match(request.path) is not None
        cred: auth.Credential | None = None
        numbers: dict[str, int] | None = None
        try:
            fault_response = self._fault_response(faults, request_id)
            if fault_response is not None:
                response = fault_response
            elif git:
                response = (
                    await git_http.handle(ctx, request) or HttpError(404, "Not Found").response()
                )
            else:
                cred = auth.identify(ctx.store, request)
                request.auth = cred
                numbers = ctx.rate.count(cred.key)
                response = await self._rest(request, cred)
        except HttpError as exc:
            response = exc.response()
        if hold is not None and hold.phase == "response":
            await ctx.faults.wait(hold)
        if not git:
            if numbers is None:
                numbers = ctx.rate.peek(cred.key if cred else "anonymous")
            headers = ctx.rate.headers(numbers)
            headers.update(response.headers)
            response.headers = headers
            response.headers.setdefault("x-github-media-type", "github.v3; format=json")
            version = request.headers.get("x-github-api-version", "2022-11-28")
            response.headers.setdefault("x-github-api-version-selected", version)
        response.headers["x-github-request-id"] = request_id
        response.headers.setdefault("server", "github.com")
        with ctx.store.lock:
            ctx.store.request_log.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": {k: v[0] for k, v in request.query.items()},
                    "status": response.status,
                    "auth": cred.kind if cred else ("git" if git else "none"),
                    "installation_id": cred.token.installation_id if cred and cred.token else None,
                    "request_id": request_id,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                }
            )
        return response

    async def _rest(self, request: Request, cred: auth.Credential) -> Response:
        found = self.rest.match(request.method, request.path)
        if found is None:
            raise HttpError(404, "Not Found")
        route, request.params = found
        if route.kind == "jwt":
            auth.require_jwt(cred)
        elif route.kind == "token":
            repo = self.ctx.store.repo(request.params["owner"], request.params["repo"])
            cred.repo = auth.require_repo(self.ctx.store, cred, repo, route.permission)
        return await self._dispatch(self.rest, request, scenario_route=False)

    def _fault_response(self, faults: dict[str, Fault], request_id: str) -> Response | None:
        now = int(time.time())
        if "secondary_rate_limit" in faults:
            f = faults["secondary_rate_limit"]
            return HttpError(
                403,
                f.message or SECONDARY.format(rid=request_id),
                docs=RATE_DOCS + "#about-secondary-rate-limits",
                headers={"retry-after": str(f.retry_after)},
            ).response()
        if "primary_rate_limit" in faults:
            f = faults["primary_rate_limit"]
            headers = {
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": "5000",
                "x-ratelimit-reset": str(now + f.reset_in),
                "x-ratelimit-resource": "core",
            }
            return HttpError(
                403,
                f.message or "API rate limit exceeded for installation.",
                docs=RATE_DOCS,
                headers=headers,
            ).response()
        if "error" in faults:
            f = faults["error"]
            return HttpError(
                f.status, f.message or ERROR_MESSAGES.get(f.status, "Server Error")
            ).response()
        return None
