"""Validation against GitHub's official descriptions, vendored in ``tests/fixtures/github``.

``rest_errors(method, path, status, body)`` checks a REST response body against the operation's
response schema in ``@octokit/openapi`` (OpenAPI 3.0: ``nullable`` is translated to JSON
Schema); ``webhook_errors(event, payload)`` checks a webhook payload against
``@octokit/webhooks-schemas``. Both return a list of messages, empty when the body is valid.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "github"
OPENAPI_URI = "urn:github:openapi"
WEBHOOKS_URI = "urn:github:webhooks"

FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return "T" in value


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` as JSON Schema."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if "type" in node and not any(k in node for k in ("allOf", "oneOf", "anyOf", "$ref")):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _openapi() -> dict[str, Any]:
    return dict(_nullable(json.loads((FIXTURES / "openapi-subset.json").read_text())))


@functools.cache
def _webhooks() -> dict[str, Any]:
    return dict(json.loads((FIXTURES / "webhooks-subset.json").read_text()))


@functools.cache
def _registry() -> Registry:
    return Registry().with_resources(
        [
            (OPENAPI_URI, Resource.from_contents(_openapi(), default_specification=DRAFT7)),
            (WEBHOOKS_URI, Resource.from_contents(_webhooks(), default_specification=DRAFT7)),
        ]
    )


def _errors(schema: dict[str, Any], body: Any) -> list[str]:
    validator = Draft7Validator(schema, registry=_registry(), format_checker=FORMATS)
    messages = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        while error.context:  # anyOf/oneOf: report the closest branch's own error
            error = best_match(error.context)
        where = "/".join(map(str, error.absolute_path)) or "<root>"
        messages.append(f"{where}: {error.message[:300]}")
    return messages


def rest_schema_ref(method: str, path: str, status: int) -> str | None:
    """The JSON pointer of the response schema, or ``None`` when the operation has no body."""
    doc = _openapi()
    responses = doc["paths"][path][method.lower()]["responses"]
    response = responses.get(str(status))
    if response is None:
        if status < 400:
            raise KeyError(f"{method} {path} documents no {status} response")
        # An error status this operation does not list: GitHub's generic error shapes.
        generic = "validation-error" if status == 422 else "basic-error"
        return f"#/components/schemas/{generic}"
    pointer = f"#/paths/{path.replace('~', '~0').replace('/', '~1')}/{method.lower()}"
    pointer += f"/responses/{status}"
    if "$ref" in response:
        pointer = response["$ref"]
        response = doc["components"]["responses"][pointer.rsplit("/", 1)[-1]]
    if "content" not in response:
        return None
    return f"{pointer}/content/application~1json/schema"


def rest_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    ref = rest_schema_ref(method, path, status)
    if ref is None:
        return [] if body in (None, b"", "") else ["the operation documents no body"]
    return _errors({"$ref": f"{OPENAPI_URI}{ref}"}, body)


def webhook_errors(event: str, payload: dict[str, Any]) -> list[str]:
    action = payload.get("action")
    name = f"{event}${action}" if action else f"{event}$event"
    return _errors({"$ref": f"{WEBHOOKS_URI}#/definitions/{name}"}, payload)
