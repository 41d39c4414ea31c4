"""``process_delivery`` as a span of the trace its webhook started (tracing on).

The web process stored the ``traceparent`` of the span that received the delivery on its row
(``deliveries.trace_parent``); the job continues it, so the run a delivery starts (whose row
records the job's span, ``bot.tracing.setup``) joins the same trace. With tracing off the job
runs as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from sqlalchemy import select

from bot import tracing
from bot.db.models import Delivery
from jobs.context import job_context

DeliveryJob = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


def traced_delivery(job: DeliveryJob) -> Any:
    """``job`` (``process_delivery``) wrapped in its span; typed ``Any`` for arq's ``func``,
    which wants ``ctx, *args, **kwargs``."""

    @functools.wraps(job)
    async def process_delivery(ctx: dict[str, Any], delivery_id: str) -> dict[str, Any]:
        if not tracing.enabled():
            return await job(ctx, delivery_id)
        async with job_context(ctx).services.sessions() as session:
            row = (
                await session.execute(
                    select(Delivery.trace_parent, Delivery.event).where(Delivery.id == delivery_id)
                )
            ).first()
        parent, event = (row[0], row[1]) if row is not None else (None, None)
        with tracing.span(
            "process_delivery",
            {
                "bosun.delivery.id": delivery_id,
                "github.event": event,
                "bosun.job.try": int(ctx.get("job_try") or 1),
            },
            kind="consumer",
            parent=parent,
            ok=(Retry,),  # tried again later: not a failure
        ) as current:
            result = await job(ctx, delivery_id)
            outcome = str(result.get("outcome", ""))
            # The first word only: the rest may name what a comment asked for.
            tracing.set_attributes(current, {"bosun.delivery.outcome": outcome.split(":")[0]})
            return result

    return process_delivery
