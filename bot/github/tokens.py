"""App JWT → installation tokens, scoped to one repository and the minimum permissions,
cached and refreshed well before their one-hour expiry (SPEC §3.4)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from githubkit import AppAuthStrategy, GitHub
from githubkit.exception import RequestFailed
from githubkit_schemas.latest.models import Installation, InstallationToken

from bot.errors import ConfigError
from bot.github.retry import RetryPolicy
from bot.metrics.local import GITHUB_HOOKS
from bot.settings import GitHubSettings

log = structlog.get_logger("bot.github")

REFRESH_MARGIN = timedelta(minutes=10)

READ = {"metadata": "read", "contents": "read"}
WRITE_CONTENTS = {"metadata": "read", "contents": "write"}
COLLABORATE = {
    "metadata": "read",
    "contents": "read",
    "issues": "write",
    "pull_requests": "write",
    "checks": "write",
}
MERGE = {**COLLABORATE, "contents": "write"}
READ_CHECKS = {"metadata": "read", "contents": "read", "checks": "read", "statuses": "read"}
READ_CHECK_RUNS = {"metadata": "read", "contents": "read", "checks": "read"}
"""Reading what a merge waits for: branch protection's summary, check runs, commit statuses."""


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: datetime

    def fresh(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) + REFRESH_MARGIN < self.expires_at


def _key(installation_id: int, repo: str, permissions: dict[str, str]) -> tuple[Any, ...]:
    return (installation_id, repo, tuple(sorted(permissions.items())))


class GitHubApp:
    """The App's identity: signs JWTs and mints installation tokens."""

    def __init__(self, settings: GitHubSettings, retry: RetryPolicy | None = None) -> None:
        pem = settings.private_key_pem()
        if settings.app_id is None or not pem:
            raise ConfigError(
                "GitHub App credentials are missing: set BOSUN_GITHUB__APP_ID and "
                "BOSUN_GITHUB__PRIVATE_KEY_FILE (or register the App at /setup)"
            )
        self.settings = settings
        self.retry = retry or RetryPolicy()
        # One SSL context for every client: building one loads the CA bundle (≈ 50 ms of CPU
        # on the event loop), and githubkit builds a client per call (docs/benchmarks.md).
        self.ssl_context = ssl.create_default_context()
        self._app = GitHub(
            AppAuthStrategy(app_id=settings.app_id, private_key=pem),
            base_url=settings.api_url,
            auto_retry=self.retry,
            http_cache=False,
            user_agent="Bosun",
            async_event_hooks=GITHUB_HOOKS,
            ssl_verify=self.ssl_context,
        )
        self._tokens: dict[tuple[Any, ...], Token] = {}
        self._lock = asyncio.Lock()

    @property
    def app_client(self) -> GitHub[Any]:
        """A client authenticated as the App (JWT), for ``/app/*`` routes."""
        return self._app

    async def token(
        self, installation_id: int, repo: str, permissions: dict[str, str] | None = None
    ) -> Token:
        """A token for ``repo`` (``owner/name``) with exactly ``permissions``."""
        perms = permissions or COLLABORATE
        key = _key(installation_id, repo, perms)
        async with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.fresh():
                return cached
            response = await self._app.arequest(
                "POST",
                f"/app/installations/{installation_id}/access_tokens",
                json={"repositories": [repo.split("/", 1)[1]], "permissions": perms},
                response_model=InstallationToken,
            )
            minted = response.parsed_data
            expires = datetime.fromisoformat(minted.expires_at.replace("Z", "+00:00"))
            token = Token(minted.token, expires.astimezone(UTC))
            self._tokens[key] = token
            log.info(
                "installation_token_minted",
                installation_id=installation_id,
                repo=repo,
                permissions=",".join(f"{k}:{v}" for k, v in sorted(perms.items())),
                expires_at=token.expires_at.isoformat(),
            )
            return token

    async def installation_of(self, repo: str) -> int | None:
        """The id of the App's installation on ``repo`` (``owner/name``), ``None`` when the
        App is not installed there."""
        try:
            response = await self._app.arequest(
                "GET", f"/repos/{repo}/installation", response_model=Installation
            )
        except RequestFailed as exc:
            if exc.response.status_code == 404:
                return None
            raise
        return response.parsed_data.id

    def forget(self, installation_id: int, repo: str) -> None:
        """Drop cached tokens for ``repo`` (after GitHub said one was bad or expired)."""
        for key in [k for k in self._tokens if k[0] == installation_id and k[1] == repo]:
            del self._tokens[key]
