"""The dashboard's routes: sign-in pages and static files for everyone, every other page behind
a session (``signed_in``), every state-changing route behind ``csrf_checked``; security headers
on every answer; errors as pages (a missing session sends the browser to ``/login``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, Response, Router
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from bot.settings import Settings
from bot.web.dashboard.local import LocalRepositoryPages, LocalTaskPages
from bot.web.dashboard.login import LOGIN_HANDLERS
from bot.web.dashboard.pages import BoardPages, FleetPages
from bot.web.dashboard.render import STATIC, environment
from bot.web.dashboard.runpage import RunPages
from bot.web.dashboard.security import SECURITY_HEADERS, NotSignedIn, session_config, signed_in

AnyRequest = Request[Any, Any, Any]
_ERRORS = environment().get_template("error.html")


async def secure_headers(response: Response[Any]) -> Response[Any]:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def not_signed_in(request: AnyRequest, exc: NotSignedIn) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"/login?next={quote(target, safe='/')}"
    if request.headers.get("hx-request"):
        return Response("", status_code=401, headers={"HX-Redirect": login, **SECURITY_HEADERS})
    return Redirect(login, headers=SECURITY_HEADERS)


def error_page(request: AnyRequest, exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    html = _ERRORS.render(status=status, detail=exc.detail, path=request.url.path)
    return Response(html, status_code=status, media_type="text/html", headers=SECURITY_HEADERS)


def dashboard_middleware(settings: Settings) -> DefineMiddleware:
    """Sessions for the dashboard's paths (an app-level middleware: routers are deep-copied when
    registered, and the cookie backend's cipher cannot be)."""
    return session_config(settings).middleware


def dashboard_router(settings: Settings) -> Router:
    pages: list[ControllerRouterHandler] = [
        FleetPages,
        RunPages,
        BoardPages,
        LocalRepositoryPages,
        LocalTaskPages,
    ]
    public: list[ControllerRouterHandler] = [*LOGIN_HANDLERS]
    return Router(
        path="/",
        route_handlers=[
            Router(path="/", route_handlers=public),
            Router(path="/", route_handlers=pages, guards=[signed_in]),
            create_static_files_router(
                path="/static",
                directories=[STATIC],
                name="dashboard:static",
                send_as_attachment=False,
                cache_control=None,
                include_in_schema=False,
            ),
        ],
        exception_handlers={NotSignedIn: not_signed_in, HTTPException: error_page},
        after_request=secure_headers,
        include_in_schema=False,
    )


__all__ = ["dashboard_middleware", "dashboard_router"]
