"""Liveness and readiness: ``/healthz`` answers while the process lives; ``/readyz`` checks
what this process's role needs and names whichever failed.

A web process needs the database and Redis; a host that also runs a worker (``bosun up``)
needs the Docker engine too, and is not ready while that worker rides out a Redis or database
outage (``bot.readiness``). A worker has no HTTP endpoint of its own to probe:
``bosun worker --check`` (``worker_readiness``) checks that its health-check key is fresh
(the worker is polling Redis) and that the database and the engine answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from bot.readiness import READINESS
from bot.services import Services

Probe = Callable[[], Awaitable[str | None]]


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readiness(probes: dict[str, Probe]) -> dict[str, Any]:
    """Run ``probes`` at once: ``{"status", "checks", "failing"?}`` (failing in the given
    order)."""
    names = list(probes)
    results = await asyncio.gather(*(probe() for probe in probes.values()))
    checks = {
        name: {"ok": error is None, "error": error}
        for name, error in zip(names, results, strict=True)
    }
    failing = [name for name, error in zip(names, results, strict=True) if error is not None]
    body: dict[str, Any] = {"status": "unavailable" if failing else "ready", "checks": checks}
    if failing:
        body["failing"] = failing
    return body


def web_probes(services: Services, *, with_worker: bool) -> dict[str, Probe]:
    probes: dict[str, Probe] = {
        "database": services.check_database,
        "redis": services.check_redis,
    }
    if with_worker:
        probes["docker"] = services.check_docker
        probes["worker"] = _worker_outages
    return probes


async def _worker_outages() -> str | None:
    """What the worker sharing this process (``bosun up``) is waiting to reach again."""
    down = READINESS.failing().values()
    if not down:
        return None
    return "; ".join(
        f"the worker lost {o.service} at {o.since:%H:%M:%S} UTC and is reconnecting ({o.error})"
        for o in down
    )[:300]


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, Any]]:
    services: Services = state.services
    body = await readiness(web_probes(services, with_worker=state.get("with_worker", False)))
    return Response(body, status_code=503 if "failing" in body else 200)


async def _check_worker(services: Services) -> str | None:
    key = services.settings.worker_health_key()
    try:
        async with asyncio.timeout(3):
            found = await services.redis.get(key)
    except Exception as exc:  # noqa: BLE001 -- any failure means not ready
        return f"{type(exc).__name__}: {exc}"[:300]
    if not found:
        return (
            f"no fresh health-check key {key}: no worker of that name is polling the queue "
            "(not started, stopped, or cut off from Redis)"
        )
    return None


async def worker_readiness(services: Services) -> dict[str, Any]:
    """A worker's readiness: it polls the queue, and the database and Docker answer."""
    return await readiness(
        {
            "worker": lambda: _check_worker(services),
            "database": services.check_database,
            "redis": services.check_redis,
            "docker": services.check_docker,
        }
    )
