"""Which upstreams a run's gateway forwards to, under which path prefix, with which key.

A profile lists upstream base URLs (``ProfileConfig.upstreams``). Each becomes a route
``/<prefix>/...`` → ``<base_url>/...`` that accepts only the API's model endpoints (a method and
an exact path each), so an agent cannot reach batch, file or fine-tuning endpoints whose cost the
gateway could not meter. Gemini's paths name the model (``/v1beta/models/{model}:generateContent``):
there ``{model}`` stands for one path segment of a model name's characters. The real key's
*value* is read from the worker's environment variable named by ``key_env`` when the gateway
starts; profiles only ever name upstreams.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bot.errors import ConfigError
from bot.profiles import ProfileConfig

ApiKind = Literal["anthropic", "openai", "gemini"]
AuthStyle = Literal["x-api-key", "bearer", "x-goog-api-key", "none"]

DUMMY_KEY = "bosun-gateway-placeholder"
"""The API key the agent sees. It is worthless: the gateway drops it and injects the real one."""

_API_DEFAULTS: dict[str, dict[str, Any]] = {
    "anthropic": {
        "key_env": "ANTHROPIC_API_KEY",
        "auth_style": "x-api-key",
        "endpoints": ("POST /v1/messages", "POST /v1/messages/count_tokens", "GET /v1/models"),
    },
    "openai": {
        "key_env": "OPENAI_API_KEY",
        "auth_style": "bearer",
        "endpoints": ("POST /v1/responses", "POST /v1/chat/completions", "GET /v1/models"),
    },
    "gemini": {
        "key_env": "GEMINI_API_KEY",
        "auth_style": "x-goog-api-key",
        "endpoints": tuple(
            endpoint
            for version in ("v1beta", "v1")
            for endpoint in (
                f"POST /{version}/models/{{model}}:generateContent",
                f"POST /{version}/models/{{model}}:streamGenerateContent",
                f"POST /{version}/models/{{model}}:countTokens",
                f"GET /{version}/models",
                f"GET /{version}/models/{{model}}",
            )
        ),
    },
}

KNOWN_UPSTREAMS: dict[str, ApiKind] = {
    "https://api.anthropic.com": "anthropic",
    "https://api.openai.com": "openai",
    "https://generativelanguage.googleapis.com": "gemini",
}
"""Origins whose API the gateway recognises without configuration."""

MODEL_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What ``{model}`` in an endpoint matches: one path segment of a model name's characters
(``gemini-2.5-pro``, ``gemini-2.5-flash-preview-09-2025``), never ``..``, ``/`` or an escape."""


@dataclass(frozen=True)
class Endpoint:
    """An allowed request: the endpoint it matched (``POST /v1beta/models/{model}:generateContent``)
    and the model its path names, if any."""

    template: str
    model: str | None = None


def _match(template: str, method: str, path: str) -> Endpoint | None:
    want_method, _, want_path = template.partition(" ")
    if want_method != method:
        return None
    if "{model}" not in want_path:
        return Endpoint(template) if want_path == path else None
    head, _, tail = want_path.partition("{model}")
    if not (path.startswith(head) and path.endswith(tail)) or len(path) < len(head + tail):
        return None
    model = path[len(head) : len(path) - len(tail)]
    return Endpoint(template, model) if MODEL_SEGMENT.fullmatch(model) else None


class Upstream(BaseModel):
    """One model API the gateway may forward to. Unset fields take the API's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: ApiKind = Field(description="Which API the upstream speaks (sets metering and defaults).")
    base_url: str = Field(description="Origin (and optional base path) requests are sent to.")
    prefix: str = Field(default="", description="Gateway path prefix; default: the API's name.")
    key_env: str | None = Field(
        default=None,
        description="Worker environment variable holding the real key; default per API. "
        "Empty string: send no key (a keyless local model server).",
    )
    auth_style: AuthStyle | None = Field(default=None, description="How the key is sent.")
    endpoints: tuple[str, ...] = Field(
        default=(), description='Allowed "METHOD /path" pairs, exact paths; default per API.'
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("api") not in _API_DEFAULTS:
            return data
        filled = dict(data)
        filled.setdefault("prefix", "")
        if not filled["prefix"]:
            filled["prefix"] = filled["api"]
        for name, value in _API_DEFAULTS[filled["api"]].items():
            if filled.get(name) is None or filled.get(name) == ():
                filled[name] = value
        if filled["key_env"] == "":
            filled["auth_style"] = "none"
        base = str(filled.get("base_url", ""))
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"upstream base_url must be an http(s) URL, got {base!r}")
        filled["base_url"] = base.rstrip("/")
        if "/" in filled["prefix"].strip("/") or not filled["prefix"].strip("/"):
            raise ValueError(f"prefix must be one path segment, got {filled['prefix']!r}")
        filled["prefix"] = filled["prefix"].strip("/")
        return filled

    def allows(self, method: str, path: str) -> bool:
        """Whether ``METHOD /path`` (query string removed) is an allowed endpoint."""
        return self.endpoint(method, path) is not None

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        """The allowed endpoint ``METHOD /path`` (query string removed) is, or None."""
        method = method.upper()
        exact = f"{method} {path}"
        if exact in self.endpoints and "{model}" not in exact:  # a template is no path
            return Endpoint(exact)
        for template in self.endpoints:
            found = _match(template, method, path) if "{model}" in template else None
            if found is not None:
                return found
        return None


def origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def routes_for_profile(
    profile: ProfileConfig, configured: Mapping[str, Upstream] | None = None
) -> dict[str, Upstream]:
    """Routes (prefix → upstream) for the profile's allow-listed upstreams.

    ``configured`` maps base URLs to operator-defined upstreams (another key variable, a
    self-hosted OpenAI-compatible server); other URLs must be a ``KNOWN_UPSTREAMS`` origin.
    Returns ``{}`` when the profile has no model access (``network: none`` or no upstreams)."""
    if profile.network == "none":
        return {}
    configured = {url.rstrip("/"): up for url, up in (configured or {}).items()}
    routes: dict[str, Upstream] = {}
    for url in profile.upstreams:
        upstream = configured.get(url.rstrip("/"))
        if upstream is None:
            api = KNOWN_UPSTREAMS.get(origin(url))
            if api is None:
                raise ConfigError(
                    f"upstream {url!r} is not a known model API ({', '.join(KNOWN_UPSTREAMS)}); "
                    "configure it as a gateway upstream with its API kind and key variable"
                )
            upstream = Upstream(api=api, base_url=origin(url))
        if upstream.prefix in routes:
            raise ConfigError(
                f"upstreams {routes[upstream.prefix].base_url!r} and {url!r} both use the "
                f"gateway prefix /{upstream.prefix}; give one a distinct prefix"
            )
        routes[upstream.prefix] = upstream
    return routes


RUNNER_APIS: dict[str, ApiKind] = {
    "claude-code": "anthropic",
    "codex": "openai",
    "gemini": "gemini",
}
"""The API each runner's CLI speaks, for runners that speak exactly one."""


def default_route(runner: str, routes: Mapping[str, Upstream]) -> str | None:
    """The route un-prefixed paths go to: the one speaking the runner's API, else the only one.

    With it a runner can point its SDK at the bare forwarder URL (``http://127.0.0.1:8788``);
    prefixed paths (``/openai/v1/...``) keep reaching the other routes."""
    api = RUNNER_APIS.get(runner)
    matching = [prefix for prefix, up in routes.items() if up.api == api]
    if len(matching) == 1:
        return matching[0]
    return next(iter(routes)) if len(routes) == 1 else None


def agent_env(routes: Mapping[str, Upstream], port: int) -> dict[str, str]:
    """Environment for the agent: each SDK's base URL pointing at the in-sandbox forwarder,
    and a placeholder key so the SDK starts (the gateway replaces it)."""
    env: dict[str, str] = {}
    base = f"http://127.0.0.1:{port}"
    for prefix, upstream in routes.items():
        if upstream.api == "anthropic":
            env["ANTHROPIC_BASE_URL"] = f"{base}/{prefix}"
            env["ANTHROPIC_API_KEY"] = DUMMY_KEY
        elif upstream.api == "gemini":
            env["GOOGLE_GEMINI_BASE_URL"] = f"{base}/{prefix}"
            env["GEMINI_API_KEY"] = DUMMY_KEY
        else:
            env["OPENAI_BASE_URL"] = f"{base}/{prefix}/v1"
            env["OPENAI_API_KEY"] = DUMMY_KEY
    return env
