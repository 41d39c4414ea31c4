"""``create_app(settings)``: the Litestar application (webhooks, API, dashboard, health)."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from sqlalchemy.exc import SQLAlchemyError

from bot import tracing
from bot.appcreds import load_stored
from bot.control.live import LiveHub
from bot.metrics.web import metrics
from bot.notify.store import sync_quietly
from bot.services import Services
from bot.settings import Settings
from bot.web.api import (
    api_plugins,
    api_router,
    app_exception_handler,
    describe_problem,
    openapi_config,
)
from bot.web.dashboard.access import Access
from bot.web.dashboard.render import template_config
from bot.web.dashboard.routes import dashboard_middleware, dashboard_router
from bot.web.dashboard.runpage import DiffCache
from bot.web.health import healthz, readyz
from bot.web.intake import DeliveryIntake
from bot.web.middleware import request_logging
from bot.web.setup import setup_callback, setup_page
from bot.web.webhooks import WebhookRoute

log = structlog.get_logger("bot.web")


async def _adopt_stored_secret(services: Services) -> None:
    """The webhook secret of an App registered at ``/setup``, when none is configured."""
    try:
        stored = await load_stored(services.sessions)
    except (SQLAlchemyError, OSError) as exc:  # unmigrated or unreachable: /readyz says so
        log.warning("stored_app_unreadable", error=str(exc))
        return
    if stored is not None and services.stored_webhook_secret is None:
        services.stored_webhook_secret = stored.webhook_secret.encode()


def create_app(
    settings: Settings, services: Services | None = None, *, with_worker: bool = False
) -> Litestar:
    """Build the web app. ``services`` may be passed in (tests); otherwise it is built here
    and closed at shutdown. ``with_worker``: a worker shares this process (``bosun up``), so
    ``/readyz`` checks the Docker engine too."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned = services is None
        traced = tracing.acquire()
        app.state.services = services or Services.build(settings)
        await _adopt_stored_secret(app.state.services)
        await sync_quietly(app.state.services.sessions, settings.notify)
        app.state.intake = DeliveryIntake(app.state.services.engine, app.state.services.redis)
        app.state.intake.start()
        app.state.live = LiveHub(settings.redis)
        app.state.live.start()
        app.state.dashboard_access = Access(settings, app.state.services)
        app.state.dashboard_diffs = DiffCache()
        try:
            yield
        finally:
            await app.state.live.stop()
            await app.state.intake.stop()
            if owned:
                await app.state.services.close()
            if traced:
                await asyncio.to_thread(tracing.release)  # flushes: may wait on the collector

    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            setup_page,
            setup_callback,
            api_router(),
            describe_problem,
            dashboard_router(settings),
        ],
        template_config=template_config(),
        openapi_config=openapi_config(_version()),
        plugins=api_plugins(),
        exception_handlers={HTTPException: app_exception_handler},
        request_max_body_size=settings.max_webhook_bytes,
        lifespan=[lifespan],
        state=State({"settings": settings, "with_worker": with_worker}),
        middleware=[DefineMiddleware(request_logging), dashboard_middleware(settings)],
        logging_config=None,  # bot.logs configures logging: Litestar's would replace the root's
        debug=False,
    )
    # POST /webhooks/github in front of Litestar's routing and middleware (bot/web/webhooks.py).
    app.asgi_handler = WebhookRoute(app.asgi_handler, app.state, settings.max_webhook_bytes)
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("bosun")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def app_from_environment() -> Litestar:
    """The app of one ``bosun serve --workers N`` process: settings from the environment,
    logging configured, as ``bosun serve`` does for a single process."""
    from bot.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
