"""A trivial job that proves the queue round trip (web/CLI → Redis → worker → result)."""

from __future__ import annotations

import time
from typing import Any

from jobs.context import job_context


async def ping(ctx: dict[str, Any], payload: str = "") -> dict[str, Any]:
    bosun = job_context(ctx)
    return {
        "payload": payload,
        "worker": bosun.worker_id,
        "job_try": ctx.get("job_try"),
        "answered_at": time.time(),
    }
