"""The App's OAuth user flow ("Sign in with GitHub") and ``GET /user``.

- ``GET /login/oauth/authorize?client_id&redirect_uri&state``: GitHub's consent page. Here a
  small form asks which login signs in (the emulator has no passwords); posting it redirects to
  ``redirect_uri?code=…&state=…`` as GitHub does. A ``client_id`` that is not the App's, or a
  ``redirect_uri`` on another host than the App's, is refused with a page, as GitHub refuses.
- ``POST /login/oauth/access_token`` (form or JSON; JSON answer with ``Accept:
  application/json``): trades a code (single use, 10 minutes) for a ``ghu_`` user token, with
  GitHub's ``200 {"error": "bad_verification_code", …}`` for a bad code and
  ``incorrect_client_credentials`` for a bad secret.
- ``GET /user`` with that token: the user (validated against ``@octokit/openapi``).
"""

from __future__ import annotations

import html
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from . import render
from .context import Context
from .http import HttpError, Request, Response, Router
from .state import iso

CODE_SECONDS = 600
TOKEN_SECONDS = 28800
ERRORS_DOC = (
    "https://docs.github.com/apps/managing-oauth-apps/"
    "troubleshooting-oauth-app-access-token-request-errors/"
)


@dataclass
class Grant:
    login: str
    client_id: str
    redirect_uri: str
    expires: float


def client_id(app_id: int) -> str:
    """The App's OAuth client id (as the manifest conversion hands it out)."""
    return f"Iv1.{app_id:016x}"


def client_secret(app_id: int) -> str:
    return f"{app_id:040x}"


def _random(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(36))


def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").startswith("application/json"):
        data = request.json()
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    parsed = parse_qs(request.body.decode(errors="replace"))
    return {k: v[0] for k, v in parsed.items()}


def _page(status: int, title: str, body: str) -> Response:
    text = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title></head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return Response(status, text.encode(), {"content-type": "text/html; charset=utf-8"})


def register(router: Router, ctx: Context) -> None:
    s = ctx.store
    grants: dict[str, Grant] = {}
    if not hasattr(s, "user_tokens"):
        s.user_tokens = {}  # type: ignore[attr-defined]

    def check_client(asked_id: str, redirect_uri: str) -> str | None:
        if s.app is None or asked_id != client_id(s.app.id):
            return "The client_id is not that of a registered GitHub App."
        hook = urlsplit(s.app.webhook_url)
        target = urlsplit(redirect_uri)
        if (target.scheme, target.netloc) != (hook.scheme, hook.netloc):
            return "The redirect_uri is not associated with this application."
        return None

    def authorize_page(request: Request) -> Response:
        asked, redirect_uri = request.arg("client_id") or "", request.arg("redirect_uri") or ""
        problem = check_client(asked, redirect_uri)
        if problem:
            return _page(400, "Application error", f"<p>{html.escape(problem)}</p>")
        hidden = "".join(
            f'<input type=hidden name="{k}" value="{html.escape(request.arg(k) or "")}">'
            for k in ("client_id", "redirect_uri", "state")
        )
        return _page(
            200,
            f"Authorize {s.app.name if s.app else 'the App'}",
            '<form method=post action="/login/oauth/authorize">'
            f'{hidden}<label>Sign in as <input name="login" id="login" required></label> '
            '<button type=submit id="authorize">Authorize</button></form>',
        )

    def authorize(request: Request) -> Response:
        form = _form(request)
        problem = check_client(form.get("client_id", ""), form.get("redirect_uri", ""))
        if problem:
            return _page(400, "Application error", f"<p>{html.escape(problem)}</p>")
        login = form.get("login", "").strip()
        if not login:
            return _page(422, "Sign in", "<p>Say who signs in.</p>")
        user = s.user(login)
        code = secrets.token_hex(10)
        grants[code] = Grant(
            user.login, form["client_id"], form["redirect_uri"], time.time() + CODE_SECONDS
        )
        query = urlencode({"code": code, "state": form.get("state", "")})
        return Response(302, b"", {"location": f"{form['redirect_uri']}?{query}"})

    def access_token(request: Request) -> Response:
        form = _form(request)
        wants_json = "json" in request.headers.get("accept", "")

        def answer(data: dict[str, Any]) -> Response:
            if wants_json:
                return Response(200, data)
            body = urlencode({k: str(v) for k, v in data.items()}).encode()
            return Response(200, body, {"content-type": "application/x-www-form-urlencoded"})

        if s.app is None or form.get("client_id") != client_id(s.app.id):
            return answer(
                {
                    "error": "incorrect_client_credentials",
                    "error_description": "The client_id and/or client_secret passed are incorrect.",
                    "error_uri": ERRORS_DOC + "#incorrect-client-credentials",
                }
            )
        if not secrets.compare_digest(form.get("client_secret", ""), client_secret(s.app.id)):
            return answer(
                {
                    "error": "incorrect_client_credentials",
                    "error_description": "The client_id and/or client_secret passed are incorrect.",
                    "error_uri": ERRORS_DOC + "#incorrect-client-credentials",
                }
            )
        grant = grants.pop(form.get("code", ""), None)
        if grant is None or grant.expires < time.time() or grant.client_id != form["client_id"]:
            return answer(
                {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                    "error_uri": ERRORS_DOC + "#bad-verification-code",
                }
            )
        if form.get("redirect_uri") and form["redirect_uri"] != grant.redirect_uri:
            return answer(
                {
                    "error": "redirect_uri_mismatch",
                    "error_description": "The redirect_uri MUST match the registered callback "
                    "URL for this application.",
                    "error_uri": ERRORS_DOC + "#redirect-uri-mismatch2",
                }
            )
        token = _random("ghu_")
        s.user_tokens[token] = (grant.login, time.time() + TOKEN_SECONDS)  # type: ignore[attr-defined]
        return answer(
            {
                "access_token": token,
                "expires_in": TOKEN_SECONDS,
                "refresh_token": _random("ghr_"),
                "refresh_token_expires_in": 15897600,
                "scope": "",
                "token_type": "bearer",
            }
        )

    def get_user(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        _, _, value = header.partition(" ")
        found = s.user_tokens.get(value.strip())  # type: ignore[attr-defined]
        if found is None or found[1] < time.time():
            raise HttpError(401, "Requires authentication" if not value else "Bad credentials")
        user = s.user(found[0])
        data = render.user(s, user)
        data.update(
            name=None,
            company=None,
            blog="",
            location=None,
            email=None,
            hireable=None,
            bio=None,
            public_repos=0,
            public_gists=0,
            followers=0,
            following=0,
            created_at=iso(1_600_000_000),
            updated_at=iso(1_600_000_000),
        )
        return Response(200, data)

    router.add("GET", "/login/oauth/authorize", authorize_page, "public")
    router.add("POST", "/login/oauth/authorize", authorize, "public")
    router.add("POST", "/login/oauth/access_token", access_token, "public")
    router.add("GET", "/user", get_user, "public")


__all__ = ["client_id", "client_secret", "register"]
