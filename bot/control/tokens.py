"""API tokens (SPEC §9): shown once, stored as a SHA-256, each with a scope, the repositories
it may act on and an expiry; each maps to the actor name recorded in audit rows.

Scopes are ordered: ``read`` may GET; ``operate`` may also act on runs of its repositories
(start, cancel, retry, approve, …); ``admin`` may also manage tokens and repositories.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.control.views import TokenOut
from bot.db.models import ApiToken
from bot.errors import ConflictError, NotFoundError, PermissionDenied

Scope = Literal["read", "operate", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "operate", "admin")
PREFIX = "bosun_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
_SEGMENT = r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.\.[A-Za-z0-9_.-]+)"
REPO_PATTERN = rf"^{_SEGMENT}/{_SEGMENT}$"
"""``OWNER/NAME``: letters, digits, ``_.-``; neither part ``.`` or ``..`` (GitHub allows neither,
and in a URL path they would name another resource)."""
DURATION_PATTERN = r"^0*[1-9][0-9]{0,4}[hdw]$"
"""An expiry: hours, days or weeks, at most 99999 of them (a date Python can still hold)."""
_NAME = re.compile(NAME_PATTERN)
_DURATION = re.compile(DURATION_PATTERN)


class TokenRefused(PermissionDenied):
    """No such token, or revoked, or expired (the web layer answers 401)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request acts as: a token's name, scope and repositories."""

    name: str
    scope: Scope
    repos: tuple[str, ...]
    """Empty: every repository."""

    @property
    def actor(self) -> str:
        """The name audit rows record for this caller."""
        return f"token:{self.name}"

    def allows(self, scope: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def may_act_on(self, repo: str) -> bool:
        return not self.repos or repo.lower() in {r.lower() for r in self.repos}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``12h``, ``30d``, ``2w`` → a timedelta (ValueError with the accepted forms)."""
    text = text.strip()
    if not _DURATION.match(text):
        raise ValueError(f"expiry {text!r} is not like 12h, 30d or 2w")
    amount, unit = int(text[:-1]), text[-1]
    return {
        "h": timedelta(hours=amount),
        "d": timedelta(days=amount),
        "w": timedelta(weeks=amount),
    }[unit]


async def create_token(
    session: AsyncSession,
    name: str,
    scope: Scope,
    repos: tuple[str, ...] = (),
    expires_in: timedelta | None = None,
) -> tuple[str, ApiToken]:
    """A new token; returns the secret (shown once, never stored) and its row."""
    if not _NAME.match(name):
        raise ValueError(
            f"token name {name!r} must be 1-64 letters, digits or ._@- (starting alphanumeric)"
        )
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    for repo in repos:
        if not re.match(REPO_PATTERN, repo):
            raise ValueError(f"repository {repo!r} is not like OWNER/NAME")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[: len(PREFIX) + 4],
        scope=scope,
        repos=list(repos),
        expires_at=datetime.now(UTC) + expires_in if expires_in else None,
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise ConflictError(f"a token named {name!r} exists already") from exc
    return secret, row


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list((await session.execute(select(ApiToken).order_by(ApiToken.id))).scalars())


async def revoke_token(session: AsyncSession, name: str) -> ApiToken:
    row = (
        await session.execute(select(ApiToken).where(ApiToken.name == name))
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no token named {name!r}")
    row.revoked = True
    await session.flush()
    return row


async def authenticate(session: AsyncSession, secret: str) -> Caller:
    """The caller a presented token stands for, or ``TokenRefused``."""
    row = None
    if secret.startswith(PREFIX):
        row = (
            await session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
        ).scalar_one_or_none()
    if row is None:
        raise TokenRefused("the token is not known")
    if row.revoked:
        raise TokenRefused("the token was revoked")
    now = datetime.now(UTC)
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise TokenRefused("the token expired")
    await session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    scope: Scope = next((known for known in SCOPES if known == row.scope), "read")
    return Caller(row.name, scope, tuple(row.repos or ()))


def token_out(row: ApiToken) -> TokenOut:
    """What the API and the CLI show of a token (never its hash)."""
    return TokenOut(
        name=row.name,
        prefix=row.prefix,
        scope=row.scope,
        repos=list(row.repos or []),
        expires_at=row.expires_at,
        revoked=row.revoked,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
