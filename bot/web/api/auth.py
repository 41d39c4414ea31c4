"""API authentication: ``Authorization: Bearer <token>`` on every request (``bot.control.tokens``).

``api_guard`` authenticates the token and checks the scope the route declares in its ``opt``
(``scope``: ``read`` by default); handlers that touch one repository call ``require_repo``.
Tokens are never logged: only their name is bound to the request's log context.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from bot.control.tokens import Caller, Scope, TokenRefused, authenticate
from bot.services import Services

AnyRequest = Request[Any, Any, Any]
AnyConnection = ASGIConnection[Any, Any, Any, Any]


async def api_guard(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    header = connection.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise NotAuthorizedException("send `Authorization: Bearer <token>`")
    services: Services = connection.app.state.services
    async with services.sessions.begin() as session:
        try:
            caller = await authenticate(session, secret.strip())
        except TokenRefused as exc:
            raise NotAuthorizedException(str(exc)) from exc
    structlog.contextvars.bind_contextvars(token=caller.name)
    wanted: Scope = handler.opt.get("scope", "read")
    if not caller.allows(wanted):
        raise PermissionDeniedException(
            f"token {caller.name!r} has scope {caller.scope!r}; this needs {wanted!r}"
        )
    connection.state.caller = caller


def caller_of(connection: AnyConnection) -> Caller:
    caller: Caller = connection.state.caller
    return caller


def require_repo(caller: Caller, repository: str) -> None:
    """Refuse (403) a token limited to other repositories."""
    if not caller.may_act_on(repository):
        raise PermissionDeniedException(
            f"token {caller.name!r} may act on {', '.join(caller.repos)} only, not {repository}"
        )
