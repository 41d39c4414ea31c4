"""Signing in to the dashboard.

- **Sign in with GitHub**: the App's OAuth user flow. ``/login/github`` sends the browser to
  GitHub's ``/login/oauth/authorize`` with a random ``state`` kept in the session; the callback
  checks it, trades the code for a user token at ``/login/oauth/access_token``, asks ``GET /user``
  who that is, and starts a session for the login. The user token is used for that one question
  and dropped: what the person may do is read with the App's own token, per repository, as for
  comment commands.
- **One-time admin link**, for installs without GitHub: ``bosun up`` prints
  ``/login/once?token=…`` (``issue_admin_link``). The token is kept hashed in Redis with an
  expiry and taken with ``GETDEL`` when the form on that page is posted, so it works once.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import structlog
from litestar import Request, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromQuery, QueryParameter
from litestar.response import Redirect, Template
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.services import Services
from bot.settings import Settings
from bot.web.dashboard.access import Access
from bot.web.dashboard.render import flash, page
from bot.web.dashboard.security import csrf_checked, session_dict, start_session

log = structlog.get_logger("bot.web.dashboard.login")

AnyRequest = Request[Any, Any, Any]
ADMIN_LOGIN = "admin"


def _once_key(settings: Settings, token: str) -> str:
    return settings.redis.key("dashboard", "once", hashlib.sha256(token.encode()).hexdigest())


async def issue_admin_link(settings: Settings, redis: Any) -> str:
    """A sign-in link for the local admin: works once, for ``dashboard.admin_link_minutes``."""
    token = secrets.token_urlsafe(32)
    await redis.set(
        _once_key(settings, token), ADMIN_LOGIN, ex=settings.dashboard.admin_link_minutes * 60
    )
    return f"{settings.public_url.rstrip('/')}/login/once?{urlencode({'token': token})}"


async def print_admin_link(settings: Settings) -> str | None:
    """``bosun up``: issue and print a link (None, and a note, when Redis does not answer)."""
    client = Redis.from_url(settings.redis.url, password=settings.redis.password_value())
    try:
        link = await issue_admin_link(settings, client)
    except (RedisError, OSError) as exc:
        log.warning("admin_link_not_issued", error=str(exc)[:200])
        return None
    finally:
        await client.aclose()
    minutes = settings.dashboard.admin_link_minutes
    print(f"Dashboard: sign in once as admin (valid {minutes} min, single use): {link}", flush=True)
    return link


async def _settings(request: AnyRequest) -> Settings:
    """The settings, with the OAuth client of an App registered at ``/setup`` when the
    environment names none."""
    access: Access = request.app.state.dashboard_access
    return await access.effective()


def _safe_next(value: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def github_configured(settings: Settings) -> bool:
    return bool(settings.github.client_id and settings.github.client_secret)


@get("/login", name="dashboard:login")
async def login_page(request: AnyRequest, next: FromQuery[str | None] = None) -> Template:
    settings = await _settings(request)
    return page(
        request,
        "login.html",
        github=github_configured(settings),
        next=_safe_next(next),
    )


@get("/login/github", name="dashboard:login-github")
async def login_github(request: AnyRequest, next: FromQuery[str | None] = None) -> Redirect:
    settings = await _settings(request)
    if not github_configured(settings):
        flash(request, "error", "Sign-in with GitHub needs the App's OAuth client id and secret.")
        return Redirect("/login")
    state = secrets.token_urlsafe(24)
    session = session_dict(request)
    session.update(oauth_state=state, oauth_next=_safe_next(next))
    request.set_session(session)
    query = urlencode(
        {
            "client_id": settings.github.client_id,
            "redirect_uri": f"{settings.public_url.rstrip('/')}/login/github/callback",
            "state": state,
            "allow_signup": "false",
        }
    )
    return Redirect(f"{settings.github.web_url.rstrip('/')}/login/oauth/authorize?{query}")


@get("/login/github/callback", name="dashboard:login-callback")
async def login_callback(
    request: AnyRequest,
    code: FromQuery[str] = "",
    oauth_state: Annotated[str, QueryParameter(name="state")] = "",
    error: FromQuery[str] = "",
) -> Redirect:
    settings = await _settings(request)
    session = session_dict(request)
    expected = session.pop("oauth_state", None)
    target = _safe_next(session.pop("oauth_next", "/"))
    request.set_session(session)
    if error or not code:
        flash(request, "error", f"GitHub did not sign you in: {error or 'no code came back'}.")
        return Redirect("/login")
    if not expected or not secrets.compare_digest(str(expected), oauth_state):
        flash(request, "error", "The sign-in expired or came from elsewhere; try again.")
        return Redirect("/login")
    login = await _github_login(settings, code)
    if login is None:
        flash(request, "error", "GitHub refused the sign-in code; try again.")
        return Redirect("/login")
    start_session(request, login, "github")
    log.info("dashboard_signed_in", login=login, via="github")
    return Redirect(target)


async def _github_login(settings: Settings, code: str) -> str | None:
    gh = settings.github
    assert gh.client_secret is not None
    async with httpx.AsyncClient(timeout=15) as client:
        try:
            answer = await client.post(
                f"{gh.web_url.rstrip('/')}/login/oauth/access_token",
                data={
                    "client_id": gh.client_id,
                    "client_secret": gh.client_secret.get_secret_value(),
                    "code": code,
                    "redirect_uri": f"{settings.public_url.rstrip('/')}/login/github/callback",
                },
                headers={"Accept": "application/json"},
            )
            token = answer.json().get("access_token") if answer.status_code == 200 else None
            if not token:
                return None
            user = await client.get(
                f"{gh.api_url.rstrip('/')}/user",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
            )
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("dashboard_oauth_failed", error=str(exc)[:200])
            return None
    if user.status_code != 200:
        return None
    login = user.json().get("login")
    return login if isinstance(login, str) and login else None


@get("/login/once", name="dashboard:login-once", sync_to_thread=False)
def login_once_page(request: AnyRequest, token: FromQuery[str] = "") -> Template:
    """The page a one-time link opens: a button, so a link preview cannot use it up."""
    return page(request, "login_once.html", token=token)


@post("/login/once", guards=[csrf_checked], name="dashboard:login-once-post")
async def login_once(request: AnyRequest) -> Redirect:
    form = await request.form()
    token = str(form.get("token", ""))
    settings = await _settings(request)
    services: Services = request.app.state.services
    login = None
    if token:
        value = await services.redis.getdel(_once_key(settings, token))
        login = value.decode() if isinstance(value, bytes) else value
    if login != ADMIN_LOGIN:
        raise PermissionDeniedException("this sign-in link was used already, or has expired")
    start_session(request, ADMIN_LOGIN, "admin")
    log.info("dashboard_signed_in", login=ADMIN_LOGIN, via="one-time link")
    return Redirect("/", status_code=303)


@post("/logout", guards=[csrf_checked], name="dashboard:logout", sync_to_thread=False)
def logout(request: AnyRequest) -> Redirect:
    request.clear_session()
    return Redirect("/login", status_code=303)


LOGIN_HANDLERS = [login_page, login_github, login_callback, login_once_page, login_once, logout]

__all__ = ["LOGIN_HANDLERS", "issue_admin_link", "print_admin_link"]
