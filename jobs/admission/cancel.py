"""Asking a run to stop (``/cancel``, an unlabel, a superseding retry): the database flag is
the record; a Redis key tells a running pipeline within a fraction of a second; a run that
waits for capacity has its deferred job made due, so it ends now rather than at its next
poll."""

from __future__ import annotations

from collections.abc import Sequence

from bot.settings import Settings
from jobs.admission.capacity import wake_runs
from jobs.context import JobContext

CANCEL_TTL_SECONDS = 86_400


def request_cancel_key(settings: Settings, run_id: str) -> str:
    return settings.redis.key("cancel", run_id)


async def signal_cancel(bosun: JobContext, run_ids: Sequence[str], actor: str) -> None:
    """Tell the workers about cancels already recorded on the runs' rows."""
    redis = bosun.services.redis
    for run_id in run_ids:
        await redis.set(request_cancel_key(bosun.settings, run_id), actor, ex=CANCEL_TTL_SECONDS)
    await wake_runs(redis, bosun.settings.redis.queue_name, list(run_ids))


__all__ = ["request_cancel_key", "signal_cancel"]
