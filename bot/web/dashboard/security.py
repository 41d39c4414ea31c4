"""Who is looking at the dashboard, and what they may do.

- **Sessions** live in a cookie encrypted and authenticated with AES-GCM (Litestar's client-side
  session backend) under a key from ``dashboard.secret_key`` or a random one kept in
  ``<data_dir>/dashboard.key``. A session holds the login, how it signed in (``github`` or
  ``admin``), its CSRF token and when it expires; nothing else (no GitHub token).
- **CSRF**: every state-changing request must carry the session's own token (form field
  ``_csrf`` or header ``X-CSRF-Token``), compared in constant time, and, when the browser sends
  one, an ``Origin`` of this Bosun. A token from another session, or none, is refused (403)
  before anything is read or written.
- **Headers**: a CSP without inline script or style, ``frame-ancestors 'none'``, no sniffing,
  no referrer beyond this origin.
- **Permissions** mirror the repository's, exactly as for comment commands: a GitHub user's
  collaborator permission from ``bot.github.permissions.cached_permission`` (live, cached
  briefly, signed); the one-time admin link signs in as ``admin`` everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.client_side import CookieBackendConfig

from bot.settings import Settings

SESSION_COOKIE = "bosun_session"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

SignIn = Literal["github", "admin"]
NOT_DASHBOARD = [
    "^/api/",
    "^/webhooks/",
    "^/metrics",
    "^/healthz",
    "^/readyz",
    "^/setup",
    "^/static/",
]
"""Paths the session middleware leaves alone (API tokens, GitHub, probes, static files)."""


class NotSignedIn(NotAuthorizedException):
    """No valid session: pages send the browser to ``/login``."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person."""

    login: str
    kind: SignIn
    csrf: str

    @property
    def actor(self) -> str:
        """The name audit rows record (the GitHub login, as a comment command would)."""
        return self.login


def session_key(settings: Settings) -> bytes:
    """32 bytes for AES-GCM: from ``dashboard.secret_key``, or a random key made once."""
    configured = settings.dashboard.secret_key
    if configured is not None:
        return hashlib.sha256(b"bosun-dashboard|" + configured.get_secret_value().encode()).digest()
    path = settings.data_dir / "dashboard.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path} must hold 32 bytes; delete it to make a new one")
    return key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def session_config(settings: Settings) -> CookieBackendConfig:
    secure = urlsplit(settings.public_url).scheme == "https"
    return CookieBackendConfig(
        secret=session_key(settings),
        key=SESSION_COOKIE,
        max_age=settings.dashboard.session_hours * 3600,
        secure=secure,
        httponly=True,
        samesite="lax",  # GitHub's redirect back after sign-in must carry the state
        exclude=NOT_DASHBOARD,
    )


def session_dict(connection: ASGIConnection[Any, Any, Any, Any]) -> dict[str, Any]:
    """A copy of the connection's session (empty without one)."""
    value = connection.scope.get("session")
    return dict(value) if isinstance(value, dict) else {}


def start_session(connection: ASGIConnection[Any, Any, Any, Any], login: str, kind: SignIn) -> None:
    """A fresh session for ``login`` (whatever was there before is dropped)."""
    settings: Settings = connection.app.state.settings
    connection.clear_session()
    connection.set_session(
        {
            "login": login,
            "kind": kind,
            "csrf": secrets.token_urlsafe(32),
            "until": int(time.time()) + settings.dashboard.session_hours * 3600,
        }
    )


def viewer_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Viewer | None:
    session = session_dict(connection)
    login, kind, csrf = session.get("login"), session.get("kind"), session.get("csrf")
    if not (isinstance(login, str) and login and isinstance(csrf, str) and csrf):
        return None
    if kind not in ("github", "admin") or int(session.get("until") or 0) < time.time():
        return None
    return Viewer(login=login, kind=kind, csrf=csrf)


def pre_session_csrf(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """A CSRF token for a visitor without a sign-in (the sign-in forms), kept in the session."""
    session = session_dict(connection)
    token = session.get("csrf")
    if isinstance(token, str) and token:
        return token
    token = secrets.token_urlsafe(32)
    connection.set_session({**session, "csrf": token})
    return token


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a valid session (else ``NotSignedIn``); puts the ``Viewer`` in ``state``."""
    viewer = viewer_of(connection)
    if viewer is None:
        raise NotSignedIn("sign in first")
    connection.state.viewer = viewer


async def csrf_checked(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard on every state-changing route: the session's CSRF token and a same-origin request."""
    if connection.scope.get("method", "GET") in SAFE_METHODS:
        return
    session = session_dict(connection)
    expected = session.get("csrf")
    presented = connection.headers.get(CSRF_HEADER, "")
    if not presented and connection.scope.get("method") == "POST":
        content_type = connection.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await connection.form()  # type: ignore[attr-defined]
            value = form.get(CSRF_FIELD, "")
            presented = value if isinstance(value, str) else ""
    if not (isinstance(expected, str) and expected and presented):
        raise PermissionDeniedException("missing CSRF token: reload the page and try again")
    if not hmac.compare_digest(expected.encode(), presented.encode()):
        raise PermissionDeniedException("CSRF token does not match this session")
    origin = connection.headers.get("origin")
    if origin and origin != "null" and not _same_origin(connection, origin):
        raise PermissionDeniedException(f"cross-origin request from {origin} refused")


def _same_origin(connection: ASGIConnection[Any, Any, Any, Any], origin: str) -> bool:
    settings: Settings = connection.app.state.settings
    allowed = {_origin(settings.public_url)}
    host = connection.headers.get("host")
    if host:
        allowed.add(f"{connection.url.scheme}://{host}")
    return origin.rstrip("/") in allowed


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


__all__ = [
    "CSRF_FIELD",
    "SECURITY_HEADERS",
    "NotSignedIn",
    "Viewer",
    "csrf_checked",
    "pre_session_csrf",
    "session_config",
    "session_dict",
    "signed_in",
    "start_session",
    "viewer_of",
]
