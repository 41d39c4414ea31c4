"""Errors of the REST API as RFC 9457 problem details (``application/problem+json``): a stable
``type`` per kind of error, a ``title``, the ``status``, a ``detail`` saying what to do, and for
validation errors the ``errors`` naming each field."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response, get
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.exceptions import NotFoundException as RouteNotFound
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from pydantic import BaseModel, Field

from bot.control.queries import BadCursor
from bot.errors import BosunError, ConflictError, NotFoundError, PermissionDenied

log = structlog.get_logger("bot.web.api")

MEDIA_TYPE = "application/problem+json"
BASE = "/api/v1/problems/"
PROBLEMS: dict[str, tuple[int, str, str]] = {
    "invalid-request": (400, "The request is not valid", "A parameter or the body is not "
                        "valid; `errors` names each field and what is wrong with it."),
    "invalid-cursor": (400, "The cursor is not valid", "Pass back a `next_cursor` exactly as "
                       "this server returned it."),
    "unauthenticated": (401, "Authentication required", "Send `Authorization: Bearer "
                        "<token>` with a token from `bosun token create`; it may be unknown, "
                        "revoked or expired."),
    "forbidden": (403, "Not allowed", "The token's scope or repositories do not allow this."),
    "not-found": (404, "Not found", "No such resource, or it is not visible to this token."),
    "method-not-allowed": (405, "Method not allowed", "The resource does not support this "
                           "method."),
    "conflict": (409, "Conflict with the current state", "The request conflicts with the "
                 "resource's current state (for example a run that already ended)."),
    "payload-too-large": (413, "Request body too large", "Send a smaller body."),
    "unavailable": (503, "Temporarily unavailable", "A service Bosun depends on is down; "
                    "retry later."),
    "internal": (500, "Internal error", "Bosun failed unexpectedly; the server log has the "
                 "detail."),
}  # fmt: skip
_BY_STATUS = {status: slug for slug, (status, _, _) in reversed(PROBLEMS.items())}


class FieldError(BaseModel):
    field: str = Field(description="The parameter or body field, as the client spells it.")
    message: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="A stable URI per kind of error; GET it for its meaning.")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do about it.")
    errors: list[FieldError] | None = Field(
        default=None, description="For `invalid-request`: each invalid field and why."
    )


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The problems a route may answer, for its OpenAPI ``responses`` (each status with the
    problem types it stands for)."""
    specs = {}
    for status in statuses:
        kinds = [f"`{slug}`" for slug, (code, _, _) in PROBLEMS.items() if code == status]
        titles = "; ".join(t for code, t, _ in PROBLEMS.values() if code == status)
        specs[status] = ResponseSpec(
            data_container=Problem,
            media_type=MEDIA_TYPE,
            description=f"{titles} (problem {', '.join(kinds)})",
            generate_examples=False,
        )
    return specs


def problem(
    slug: str,
    detail: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    status, title, _ = PROBLEMS[slug]
    body: dict[str, Any] = {"type": BASE + slug, "title": title, "status": status, "detail": detail}
    body.update(extra or {})
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _public_name(request: Request[Any, Any, Any], key: str) -> str:
    """A handler argument's name as the client spells it (``states`` is ``?state=``)."""
    try:
        parameters = request.route_handler.parsed_fn_signature.parameters
    except (AttributeError, KeyError):
        return key
    definition = parameters.get(key)
    alias = getattr(getattr(definition, "kwarg_definition", None), "name", None)
    return str(alias or key)


def _validation(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            field = _public_name(request, str(item.get("key") or item.get("source") or ""))
            errors.append({"field": field, "message": str(item.get("message", ""))})
    fields = ", ".join(e["field"] for e in errors if e["field"])
    detail = f"invalid value for {fields}" if fields else (exc.detail or "the request is not valid")
    return problem("invalid-request", detail, extra={"errors": errors})


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The API's handler for every exception (mounted on the API router and, for paths under
    ``/api``, on the app for errors raised before a route matched)."""
    match exc:
        case ValidationException():
            return _validation(request, exc)
        case BadCursor():
            return problem("invalid-cursor", str(exc))
        case NotAuthorizedException():
            return problem(
                "unauthenticated", exc.detail, headers={"WWW-Authenticate": 'Bearer realm="bosun"'}
            )
        case PermissionDenied() | PermissionDeniedException():
            return problem("forbidden", str(getattr(exc, "detail", "") or exc))
        case NotFoundError():
            return problem("not-found", str(exc))
        case RouteNotFound():
            return problem("not-found", f"no API route {request.method} {request.url.path}")
        case ConflictError():
            return problem("conflict", str(exc))
        case HTTPException():
            slug = _BY_STATUS.get(
                exc.status_code, "invalid-request" if exc.status_code < 500 else "internal"
            )
            return problem(slug, exc.detail, headers=exc.headers)  # a 405's `Allow`
        case BosunError() | ValueError():
            return problem("invalid-request", str(exc))
    log.exception("api_request_failed", path=request.url.path)
    return problem("internal", "Bosun failed unexpectedly; the server log has the detail")


@get(BASE + "{slug:str}", include_in_schema=False, sync_to_thread=False)
def describe_problem(slug: FromPath[str]) -> Response[dict[str, Any]]:
    """What a problem ``type`` means (the URI each problem carries resolves here)."""
    if slug not in PROBLEMS:
        return problem("not-found", f"no problem type {slug!r}")
    status, title, meaning = PROBLEMS[slug]
    return Response({"type": BASE + slug, "title": title, "status": status, "meaning": meaning})
