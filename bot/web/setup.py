"""``GET /setup``: register Bosun's GitHub App from its manifest (SPEC §3.4).

The page posts ``app-manifest.yml`` (with ``{public_url}`` filled in) to GitHub's "new App"
form, for the user's account or an organization (``?org=NAME``), with a one-time ``state``.
GitHub sends the browser back to ``/setup/callback?code=…&state=…``; Bosun checks the state,
converts the code (``POST /app-manifests/{code}/conversions``, no credentials needed) and stores
the App's id, private key, webhook secret and OAuth client (``bot/appcreds.py``). From then on
this web process verifies webhooks with the new secret, and workers pick the App up before
their next job.
"""

from __future__ import annotations

import html
import json
import secrets
from typing import Annotated, Any

import structlog
from githubkit import GitHub
from githubkit.exception import GitHubException
from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from bot.appcreds import app_manifest, load_stored
from bot.db.models import AppCredentials
from bot.services import Services
from bot.settings import Settings

log = structlog.get_logger("bot.web.setup")

STATE_TTL_SECONDS = 3600


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    text = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(text, status_code=status, media_type=MediaType.HTML)


def _state_key(settings: Settings, state: str) -> str:
    return settings.redis.key("setup-state", state)


@get("/setup", include_in_schema=False)
async def setup_page(
    state: State, org: Annotated[str | None, QueryParameter()] = None
) -> Response[str]:
    settings: Settings = state.settings
    services: Services = state.services
    stored = await load_stored(services.sessions)
    if settings.github.app_id is not None or stored is not None:
        app_id = settings.github.app_id or (stored.app_id if stored else None)
        slug = settings.github.slug if settings.github.app_id else (stored.slug if stored else "")
        install = f"{settings.github.web_url.rstrip('/')}/apps/{slug}/installations/new"
        return _page(
            "Bosun is connected to GitHub",
            f"<p>GitHub App <b>{html.escape(slug)}</b> (id {app_id}) is configured.</p>"
            f"<p><a href='{html.escape(install)}'>Install it on repositories</a>.</p>",
        )
    token = secrets.token_urlsafe(24)
    await services.redis.set(_state_key(settings, token), "1", ex=STATE_TTL_SECONDS)
    web = settings.github.web_url.rstrip("/")
    where = f"{web}/organizations/{org}" if org else web
    action = f"{where}/settings/apps/new?state={token}"
    manifest = json.dumps(app_manifest(settings.public_url))
    warning = ""
    if "127.0.0.1" in settings.public_url or "localhost" in settings.public_url:
        warning = (
            "<p><b>Note:</b> <code>BOSUN_PUBLIC_URL</code> is a loopback address; GitHub cannot "
            "deliver webhooks there. Set it to the address GitHub reaches this Bosun at.</p>"
        )
    owner = f"the organization <b>{html.escape(org)}</b>" if org else "your account"
    return _page(
        "Register Bosun's GitHub App",
        f"<p>This creates a GitHub App for {owner} from Bosun's manifest; GitHub asks you to "
        "confirm, then sends you back here. Add <code>?org=NAME</code> to this page's address "
        f"to register it for an organization.</p>{warning}"
        f"<form method='post' action='{html.escape(action)}'>"
        f"<input type='hidden' name='manifest' value='{html.escape(manifest)}'>"
        "<button type='submit'>Create the GitHub App</button></form>",
    )


@get("/setup/callback", include_in_schema=False)
async def setup_callback(
    state: State,
    code: Annotated[str | None, QueryParameter()] = None,
    flow: Annotated[str | None, QueryParameter(name="state")] = None,
) -> Response[str]:
    settings: Settings = state.settings
    services: Services = state.services
    if settings.github.app_id is not None or await load_stored(services.sessions) is not None:
        # Never replace a connected App from a browser link: a state is only as safe as the
        # Redis it lives in, and the App's key is what every run trusts.
        return _page(
            "Bosun is already connected to GitHub",
            "<p>An App is configured; this registration was not stored. To connect another "
            "App, remove the configured one first (docs/install.md).</p>",
            409,
        )
    started = flow and await services.redis.getdel(_state_key(settings, flow))
    if not code or not started:
        return _page(
            "This registration link is not valid",
            "<p>It expired, was already used, or did not start on this Bosun. "
            "<a href='/setup'>Start again</a>.</p>",
            400,
        )
    try:
        app = await _convert(settings, code)
    except GitHubException as exc:
        log.warning("app_registration_failed", error=str(exc))
        return _page(
            "GitHub did not complete the registration",
            f"<p>{html.escape(str(exc))}</p><p>Codes are valid for one hour; "
            "<a href='/setup'>start again</a>.</p>",
            502,
        )
    async with services.sessions.begin() as session:
        session.add(
            AppCredentials(
                app_id=int(app["id"]),
                slug=str(app["slug"]),
                private_key=str(app["pem"]),
                webhook_secret=str(app["webhook_secret"]),
                client_id=app.get("client_id"),
                client_secret=app.get("client_secret"),
            )
        )
    services.stored_webhook_secret = str(app["webhook_secret"]).encode()
    log.info("app_registered", app_id=app["id"], slug=app["slug"])
    install = f"{settings.github.web_url.rstrip('/')}/apps/{app['slug']}/installations/new"
    return _page(
        "Bosun's GitHub App is registered",
        f"<p>App <b>{html.escape(str(app['slug']))}</b> (id {int(app['id'])}) is stored; "
        "webhooks are verified with its secret from now on.</p>"
        f"<p>Next: <a href='{html.escape(install)}'>install it on your repositories</a>.</p>",
    )


async def _convert(settings: Settings, code: str) -> dict[str, Any]:
    async with GitHub(base_url=settings.github.api_url, user_agent="Bosun") as gh:
        response = await gh.rest.apps.async_create_from_manifest(code)
    data: dict[str, Any] = response.json()
    return data


__all__ = ["setup_callback", "setup_page"]
