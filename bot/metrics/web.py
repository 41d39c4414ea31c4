"""``GET /metrics``: the Prometheus text format, behind ``metrics.token`` or loopback.

prometheus-client renders it (Litestar's Prometheus plugin was not used: its middleware would
time every request on the webhook path, and it exposes a process's own registry only, while
most of Bosun's counts live in the database). A web process answers with the shared counts
(``bot.metrics.shared``) and its own; a worker, on ``metrics.worker_port``, with its own only.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from bot.metrics.settings import MetricsSettings
from bot.metrics.shared import SharedMetrics


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def refusal(
    settings: MetricsSettings, authorization: str, client: str | None
) -> Response[str] | None:
    """Why a scrape is refused (401 / 403), or ``None`` when it may read."""
    if settings.token is not None:
        scheme, _, given = authorization.partition(" ")
        expected = settings.token.get_secret_value().encode()
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        return Response(
            "send Authorization: Bearer <metrics.token>\n",
            status_code=401,
            media_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="bosun-metrics"'},
        )
    if settings.public or is_loopback(client):
        return None
    return Response(
        "metrics answer loopback clients only: set BOSUN_METRICS__TOKEN (or "
        "BOSUN_METRICS__PUBLIC=true)\n",
        status_code=403,
        media_type="text/plain",
    )


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def exposition(shared: SharedMetrics | None) -> bytes:
    """The text of one scrape: this process's registry, then the shared counts."""
    text = generate_latest(REGISTRY)
    if shared is None:
        return text
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(await shared.families()))
    return text + generate_latest(registry)


@get("/metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: MetricsSettings = state.settings.metrics
    refused = refusal(
        settings, request.headers.get("authorization", ""), request.client and request.client.host
    )
    if refused is not None:
        return refused
    shared: SharedMetrics | None = state.get("shared_metrics")
    if shared is None and "services" in state:
        shared = state.shared_metrics = SharedMetrics(state.services, settings.cache_seconds)
    body = await exposition(shared)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
