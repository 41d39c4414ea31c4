"""``/api/v1/webhooks``: outbound notification endpoints and their delivery log (admin)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from bot.control.views import Page
from bot.notify.settings import NotificationType, check_repo_pattern, check_url
from bot.notify.store import DeliveryOut, NewWebhook, WebhookOut, WebhookStore
from bot.services import Services
from bot.web.api.auth import AnyRequest
from bot.web.api.problems import problem_responses

Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page.")]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Items per page (at most 200).")]
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?([/?#][^\s]*)?$"
"""What the document promises ``check_url`` accepts: http(s), a host (no credentials), a port."""
REPOS_PATTERN = r"^[^/]+/[^/]+$"
"""``check_repo_pattern``: ``OWNER/NAME`` or ``OWNER/*``."""


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="A unique name.")
    url: Annotated[str, StringConstraints(pattern=URL_PATTERN)] = Field(
        max_length=2000, description="Where notifications are POSTed (http(s)://host[:port]/…)."
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="Signing secret (at least 16 characters); omitted: one is generated.",
        # Litestar leaves the constraints of optional fields and list items out of the document.
        json_schema_extra={
            "oneOf": [{"type": "string", "minLength": 16, "maxLength": 256}, {"type": "null"}]
        },
    )
    events: list[NotificationType] = Field(
        default_factory=list, description="Types to send; empty: every type."
    )
    repos: list[str] = Field(
        default_factory=list,
        description="`OWNER/NAME` or `OWNER/*`; empty: every repository.",
        json_schema_extra={"items": {"type": "string", "pattern": REPOS_PATTERN}},
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("repos")
    @classmethod
    def _repos(cls, value: list[str]) -> list[str]:
        return [check_repo_pattern(v) for v in value]


def webhooks(request: AnyRequest) -> WebhookStore:
    services: Services = request.app.state.services
    return WebhookStore(services.sessions)


class WebhookController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]
    opt = {"scope": "admin"}

    @get(
        "/",
        summary="List outbound webhook endpoints (never their secrets)",
        responses=problem_responses(401, 403),
    )
    async def list_webhooks(self, request: AnyRequest) -> list[WebhookOut]:
        return await webhooks(request).endpoints()

    @post(
        "/",
        summary="Add an endpoint (its secret is in this answer only)",
        responses=problem_responses(400, 401, 403, 409, 413),
    )
    async def create_webhook(self, request: AnyRequest, data: JSONBody[WebhookIn]) -> NewWebhook:
        return await webhooks(request).create(
            name=data.name, url=data.url, secret=data.secret, events=data.events, repos=data.repos
        )

    @get(
        "/{webhook_id:int}",
        summary="Get an endpoint",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def get_webhook(self, request: AnyRequest, webhook_id: FromPath[int]) -> WebhookOut:
        return await webhooks(request).get(webhook_id)

    @delete(
        "/{webhook_id:int}",
        summary="Delete an endpoint added through the API, with its delivery log",
        status_code=200,
        responses=problem_responses(400, 401, 403, 404, 409),
    )
    async def delete_webhook(self, request: AnyRequest, webhook_id: FromPath[int]) -> WebhookOut:
        return await webhooks(request).delete(webhook_id)

    @get(
        "/{webhook_id:int}/deliveries",
        summary="An endpoint's notifications, newest first, with every attempt",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def list_webhook_deliveries(
        self,
        request: AnyRequest,
        webhook_id: FromPath[int],
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> Page[DeliveryOut]:
        return await webhooks(request).deliveries(webhook_id, cursor=cursor, limit=limit)
