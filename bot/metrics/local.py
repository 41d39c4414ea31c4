"""Metrics only one process knows, counted in that process (prometheus-client's default
registry, with its ``process_*`` and ``python_*`` metrics).

- Webhook requests this web process refused (``bot.web.webhooks``): never stored, so nowhere else
  to count them, and counting them in memory lets no unauthenticated sender write to Redis.
- GitHub API calls this process made and the rate limit GitHub last reported to it (an
  ``httpx`` response hook on every githubkit client).
- Jobs this worker picked up and how long they waited once due (``on_job_start``).

A web process shows these at ``/metrics`` with the shared counts; a worker shows its own on
``metrics.worker_port``. They restart from zero with their process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, Histogram

REJECT_REASONS = ("no_secret", "signature", "headers", "json", "too_large", "store_failed")

WEBHOOK_REJECTED = Counter(
    "bosun_webhook_rejected",
    "Webhook requests this web process refused, by reason (process-local).",
    ["reason"],
)
GITHUB_REQUESTS = Counter(
    "bosun_github_requests",
    "GitHub API answers this process received, by method and HTTP status (process-local; "
    "each retry counts).",
    ["method", "status"],
)
GITHUB_RATE_REMAINING = Gauge(
    "bosun_github_rate_limit_remaining",
    "Requests left in GitHub's rate-limit window, as the last answer to this process said "
    "(process-local; per token, so it moves between installations).",
    ["resource"],
)
GITHUB_RATE_RESET = Gauge(
    "bosun_github_rate_limit_reset_timestamp_seconds",
    "When that rate-limit window resets (Unix time), from the same answer (process-local).",
    ["resource"],
)
JOB_PICKUP = Histogram(
    "bosun_job_pickup_seconds",
    "How long a job waited between becoming due and this worker starting it, by kind "
    "(process-local).",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

for _reason in REJECT_REASONS:
    WEBHOOK_REJECTED.labels(_reason)

JOB_KINDS: Mapping[str, str] = {
    "d": "delivery",
    "run": "run",
    "interrupted": "run",
    "cmd": "command",
    "cron": "cron",
    "notify": "notify",
}


def webhook_rejected(reason: str) -> None:
    WEBHOOK_REJECTED.labels(reason).inc()


async def github_response(response: httpx.Response) -> None:
    """httpx response hook of Bosun's GitHub clients."""
    GITHUB_REQUESTS.labels(response.request.method, str(response.status_code)).inc()
    remaining = response.headers.get("x-ratelimit-remaining")
    if remaining is None:
        return
    resource = response.headers.get("x-ratelimit-resource", "core")[:32]
    try:
        GITHUB_RATE_REMAINING.labels(resource).set(float(remaining))
        reset = response.headers.get("x-ratelimit-reset")
        if reset is not None:
            GITHUB_RATE_RESET.labels(resource).set(float(reset))
    except ValueError:
        return


GITHUB_HOOKS: Mapping[str, list[Any]] = {"response": [github_response]}
"""``async_event_hooks`` for githubkit clients."""


def job_kind(job_id: str) -> str:
    prefix, colon, _ = job_id.partition(":")
    return JOB_KINDS.get(prefix, "other") if colon else "other"


def job_started(ctx: Mapping[str, Any]) -> None:
    """Record the pickup delay of the job arq is starting (its ``score`` is when it fell due,
    in milliseconds)."""
    score, job_id = ctx.get("score"), ctx.get("job_id")
    if not isinstance(score, int | float) or not isinstance(job_id, str):
        return
    JOB_PICKUP.labels(job_kind(job_id)).observe(max(0.0, time.time() - score / 1000))
