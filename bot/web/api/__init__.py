"""The REST API under ``/api/v1`` (SPEC §9): token authentication, RFC 9457 problem details,
cursor pagination, and the OpenAPI document Litestar generates (``/api/openapi.json``, rendered
at ``/api/docs``). See docs/api.md."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin
from litestar.openapi.spec import Components, Schema, SecurityScheme
from litestar.plugins import OpenAPISchemaPlugin, PluginProtocol
from litestar.plugins.pydantic import PydanticPlugin, PydanticSchemaPlugin
from litestar.response import Response
from litestar.typing import FieldDefinition
from pydantic import BaseModel

from bot.web.api.actions import RunActionController
from bot.web.api.auth import api_guard
from bot.web.api.problems import describe_problem, handle
from bot.web.api.resources import (
    AuditController,
    ProfileController,
    RepositoryController,
    TaskController,
    TokenController,
)
from bot.web.api.runs import RunController
from bot.web.api.stream import StreamController, run_socket
from bot.web.api.webhooks import WebhookController

API_PREFIX = "/api/"


def api_router() -> Router:
    """Every ``/api/v1`` route, behind the token guard, answering errors as problems."""
    return Router(
        path="/",
        route_handlers=[
            RunController,
            RunActionController,
            StreamController,
            run_socket,
            RepositoryController,
            ProfileController,
            TaskController,
            AuditController,
            TokenController,
            WebhookController,
        ],
        guards=[api_guard],
        exception_handlers={Exception: handle},
        security=[{"BearerToken": []}],
    )


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Bosun",
        version=version,
        description="Coding agents on your repositories, safely and reviewably. "
        "Authenticate with `Authorization: Bearer <token>` (`bosun token create`).",
        path="/api",
        render_plugins=[JsonRenderPlugin(path="/openapi.json"), RedocRenderPlugin(path="/docs")],
        components=Components(
            security_schemes={
                "BearerToken": SecurityScheme(type="http", scheme="bearer", description="API token")
            }
        ),
        use_handler_docstrings=True,
    )


class ClosedModelSchemas(OpenAPISchemaPlugin):
    """Request bodies that refuse unknown fields (pydantic ``extra="forbid"``, a 400 naming the
    field) say so in the document: ``additionalProperties: false``, which Litestar's own
    pydantic schemas leave out."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        model = field_definition.annotation
        return (
            isinstance(model, type)
            and issubclass(model, BaseModel)
            and model.model_config.get("extra") == "forbid"
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = PydanticSchemaPlugin.for_pydantic_model(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


def api_plugins() -> list[PluginProtocol]:
    """The app's plugins the API needs: bodies validated strictly (``"enabled": 1`` is not
    ``true``, ``"5"`` is not ``5``: the document's JSON types, as ``Body`` says) and closed
    bodies documented as such."""
    return [ClosedModelSchemas(), PydanticPlugin(validate_strict=True)]


def app_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Errors raised before an API route matched (unknown path, method) as problems too;
    other paths keep Litestar's plain answers."""
    if request.url.path.startswith(API_PREFIX):
        return handle(request, exc)
    return Response(
        {"status_code": exc.status_code, "detail": exc.detail},
        status_code=exc.status_code,
        headers=exc.headers,
    )


__all__ = [
    "ClosedModelSchemas",
    "api_plugins",
    "api_router",
    "app_exception_handler",
    "describe_problem",
    "openapi_config",
]
