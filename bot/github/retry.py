"""Retry policy for GitHub calls (SPEC §3.4): honour ``retry-after`` and rate-limit resets,
back off from secondary limits (at least ``secondary_min`` seconds, then exponentially),
retry 5xx and network errors with exponential backoff. One transient error never fails a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from githubkit.exception import (
    GitHubException,
    PrimaryRateLimitExceeded,
    RequestError,
    RequestFailed,
    RequestTimeout,
    SecondaryRateLimitExceeded,
)
from githubkit.typing import RetryOption

if TYPE_CHECKING:
    from bot.settings import GitHubSettings

log = structlog.get_logger("bot.github")


@dataclass(frozen=True)
class RetryPolicy:
    """A githubkit ``auto_retry`` decision function."""

    max_retries: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 300.0
    secondary_min_seconds: float = 60.0

    @classmethod
    def of(cls, github: GitHubSettings, *, max_retries: int | None = None) -> RetryPolicy:
        """The policy the settings ask for (``max_retries`` lowered for callers a person
        waits on, such as a dashboard page)."""
        retries = (
            github.max_retries if max_retries is None else min(max_retries, github.max_retries)
        )
        return cls(
            max_retries=retries,
            base_seconds=github.retry_base_seconds,
            secondary_min_seconds=github.secondary_backoff_seconds,
        )

    def _capped(self, seconds: float) -> RetryOption:
        return RetryOption(True, timedelta(seconds=min(seconds, self.max_seconds)))

    def __call__(self, exc: GitHubException, retry_count: int) -> RetryOption:
        if retry_count >= self.max_retries:
            return RetryOption(False)
        if isinstance(exc, SecondaryRateLimitExceeded):
            wait = max(exc.retry_after.total_seconds(), self.secondary_min_seconds)
            wait *= 2**retry_count
            log.warning("github_secondary_rate_limited", wait_s=wait, attempt=retry_count + 1)
            return self._capped(wait)
        if isinstance(exc, PrimaryRateLimitExceeded):
            wait = max(exc.retry_after.total_seconds(), self.base_seconds)
            if wait > self.max_seconds:
                return RetryOption(False)  # the job defers itself instead of blocking a slot
            log.warning("github_rate_limited", wait_s=wait, attempt=retry_count + 1)
            return self._capped(wait)
        if isinstance(exc, RequestFailed) and exc.response.status_code >= 500:
            wait = self.base_seconds * 2**retry_count
            log.warning(
                "github_server_error",
                status=exc.response.status_code,
                wait_s=wait,
                attempt=retry_count + 1,
            )
            return self._capped(wait)
        if isinstance(exc, RequestTimeout) or (
            type(exc) is RequestError  # connection refused/reset: no response at all
        ):
            return self._capped(self.base_seconds * 2**retry_count)
        return RetryOption(False)
