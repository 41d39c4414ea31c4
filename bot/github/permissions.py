"""A login's collaborator permission on a repository, checked live and cached briefly (SPEC
§3.2), for every process that needs it: the worker deciding a comment command and the dashboard
showing (and recording) what a signed-in user may do.

The cache lives in Redis under ``<namespace>:perm:<owner/name>:<login>`` and is signed with a
key Redis never holds (derived from the App's webhook secret), so whoever can write to Redis
cannot make a login look like a maintainer: a value Bosun did not sign is ignored and GitHub is
asked again. The worker (``jobs.deliveries.process.permission_of``) and the dashboard both go
through ``cached_permission``, so each reads the other's answers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from bot.settings import Settings

log = structlog.get_logger("bot.github.permissions")

PERMISSION_TTL = 60
LEVELS = {"none": 0, "read": 1, "triage": 1, "write": 2, "maintain": 2, "admin": 3}


class PermissionPort(Protocol):
    full_name: str

    async def permission(self, login: str) -> str: ...


def at_least(permission: str | None, minimum: str) -> bool:
    return LEVELS.get(permission or "none", 0) >= LEVELS[minimum]


def cache_signer(settings: Settings, subject: str) -> Callable[[str], str] | None:
    secret = settings.github.webhook_secret
    if secret is None:
        return None
    key = hashlib.sha256(b"bosun-permission-cache|" + secret.get_secret_value().encode()).digest()

    def sign(permission: str) -> str:
        return hmac.new(key, f"{subject}|{permission}".encode(), hashlib.sha256).hexdigest()

    return sign


async def cached_permission(
    settings: Settings, redis: Any, port: PermissionPort, login: str
) -> str:
    """``login``'s permission on ``port``'s repository: from the signed cache, else GitHub."""
    key = settings.redis.key("perm", port.full_name, login.lower())
    signer = cache_signer(settings, f"{port.full_name}|{login.lower()}")
    try:
        cached = await redis.get(key)
    except Exception:  # noqa: BLE001 -- the cache is optional
        cached = None
    if cached and signer is not None:
        text = bytes(cached).decode(errors="replace")
        remembered, _, signature = text.partition(".")
        if hmac.compare_digest(signature, signer(remembered)):
            return remembered
        log.warning("permission_cache_forged", login=login)
    permission = await port.permission(login)
    if signer is None:
        return permission
    try:
        await redis.set(key, f"{permission}.{signer(permission)}", ex=PERMISSION_TTL)
    except Exception:  # noqa: BLE001
        log.debug("permission_cache_write_failed")
    return permission
