"""Liveness and readiness: ``/healthz`` answers while the process lives; ``/readyz`` checks
the database, Redis and the Docker engine and names whichever failed."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from bot.services import Services


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, Any]]:
    services: Services = state.services
    names = ("database", "redis", "docker")
    results = await asyncio.gather(
        services.check_database(), services.check_redis(), services.check_docker()
    )
    checks = {
        name: {"ok": error is None, "error": error}
        for name, error in zip(names, results, strict=True)
    }
    failing = [name for name, error in zip(names, results, strict=True) if error is not None]
    body: dict[str, Any] = {"status": "unavailable" if failing else "ready", "checks": checks}
    if failing:
        body["failing"] = failing
    return Response(body, status_code=503 if failing else 200)
