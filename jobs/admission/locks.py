"""Scope locks (SPEC §7): two runs of one repository whose focus paths overlap never write at
the same time.

A run's scope is the ``Focus:`` line of its issue, else the repository's ``focus_paths``; a run
with no scope takes no lock (the per-repository cap bounds it). A lock is a ``scope_locks`` row
with a lease: taking one is a single transaction that first writes the repository's row (a row
lock on PostgreSQL, the write lock on SQLite), so two workers never both see "no conflict" and
both insert. The holder renews the lease while the run lives and deletes the row when it ends; a
crashed holder's row stops blocking once its lease has passed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from sqlalchemy import delete, select, update

from bot.db.engine import SessionFactory
from bot.db.models import Repository, ScopeLock
from bot.domain.display import shown

MAX_FOCUS_PATHS = 20
_FOCUS_LINE = re.compile(r"^\s*focus\s*:\s*(?P<paths>.+?)\s*$", re.IGNORECASE)
_WILD = "*?["


# -- scopes --------------------------------------------------------------------------------


def focus_from_issue(body: str) -> list[str]:
    """The globs of a ``Focus: a/**, b.py`` line in an issue body (outside code fences)."""
    fence: str | None = None
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        match = _FOCUS_LINE.match(line) if fence is None else None
        if match is not None:
            found = [_normal(p) for p in re.split(r"[,\s]+", match["paths"]) if p.strip("`")]
            return [p for p in found if p][:MAX_FOCUS_PATHS]
    return []


def run_scope(issue_body: str, config_focus: Sequence[str]) -> list[str]:
    """The scope a run locks: its issue's ``Focus:`` line, else the repository's focus paths."""
    scope = focus_from_issue(issue_body) or [_normal(p) for p in config_focus]
    return [p for p in scope if p][:MAX_FOCUS_PATHS]


def _normal(glob: str) -> str:
    glob = glob.strip().strip("`").strip()
    while glob.startswith(("./", "/")):
        glob = glob[1:] if glob.startswith("/") else glob[2:]
    parts = [p for p in glob.split("/") if p and p != "."]
    if ".." in parts or len(glob) > 300:
        return ""
    return "/".join(parts)


def _expand(glob: str) -> list[tuple[str, ...]]:
    """Conservative readings of a gitignore-style glob: a pattern without a slash matches at
    any depth, and any pattern may name a folder (so everything under it)."""
    parts = tuple(_normal(glob).split("/")) if _normal(glob) else ("**",)
    if len(parts) == 1 and parts[0] != "**":
        parts = ("**", *parts)
    return [parts, (*parts, "**")]


def _segment_overlap(a: str, b: str) -> bool:
    wild_a, wild_b = any(c in a for c in _WILD), any(c in b for c in _WILD)
    if not wild_a and not wild_b:
        return a == b
    # Literal prefix and suffix around the wildcards must agree; anything between may match.
    pre_a, pre_b = re.split(r"[*?\[]", a, maxsplit=1)[0], re.split(r"[*?\[]", b, maxsplit=1)[0]
    suf_a, suf_b = re.split(r"[*?\]]", a)[-1], re.split(r"[*?\]]", b)[-1]
    prefix_ok = pre_a.startswith(pre_b) or pre_b.startswith(pre_a)
    suffix_ok = suf_a.endswith(suf_b) or suf_b.endswith(suf_a)
    return prefix_ok and suffix_ok


@lru_cache(maxsize=4096)
def _parts_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if not a or not b:
        rest = a or b
        return all(p == "**" for p in rest)
    if a[0] == "**":
        return _parts_overlap(a[1:], b) or _parts_overlap(a, b[1:])
    if b[0] == "**":
        return _parts_overlap(a, b[1:]) or _parts_overlap(a[1:], b)
    return _segment_overlap(a[0], b[0]) and _parts_overlap(a[1:], b[1:])


def globs_overlap(a: str, b: str) -> bool:
    """Whether some path could match both globs. Errs towards yes: ``a/**`` overlaps
    ``a/b.py``, ``src`` overlaps ``src/x.py``, ``*.py`` overlaps ``lib/y.py``."""
    return any(_parts_overlap(x, y) for x in _expand(a) for y in _expand(b))


def scopes_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    return any(globs_overlap(x, y) for x in a for y in b)


# -- locks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockConflict:
    """The live lock that keeps a run from taking its scope."""

    run_id: str
    paths: list[str]
    holder: str

    def describe(self) -> str:
        paths = ", ".join(shown(p, limit=120, code=True) for p in self.paths[:5])
        return f"run `{self.run_id}` holds overlapping focus paths ({paths})"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def acquire_scope(
    sessions: SessionFactory,
    *,
    repository_id: int,
    run_id: str,
    paths: Sequence[str],
    holder: str,
    lease_seconds: float,
) -> LockConflict | None:
    """Take (or keep) ``run_id``'s lock on ``paths``; the first live overlapping lock of
    another run of the repository if there is one (and then nothing is taken)."""
    async with sessions.begin() as session:
        # Serialise lock-takers of this repository: a write first, so PostgreSQL row-locks the
        # repository and SQLite takes its write lock before anything is read.
        await session.execute(
            update(Repository)
            .where(Repository.id == repository_id)
            .values(updated_at=Repository.updated_at)
        )
        now = _now()
        rows = (
            await session.execute(
                select(ScopeLock).where(
                    ScopeLock.repository_id == repository_id, ScopeLock.run_id != run_id
                )
            )
        ).scalars()
        for lock in rows:
            if _aware(lock.lease_expires_at) <= now:
                await session.delete(lock)  # its holder died: the lease ran out
                continue
            if scopes_overlap(paths, [str(p) for p in lock.paths]):
                return LockConflict(lock.run_id, [str(p) for p in lock.paths], lock.holder)
        expires = now + timedelta(seconds=lease_seconds)
        own = (
            await session.execute(select(ScopeLock).where(ScopeLock.run_id == run_id))
        ).scalar_one_or_none()
        if own is None:
            session.add(
                ScopeLock(
                    repository_id=repository_id,
                    run_id=run_id,
                    paths=list(paths),
                    holder=holder,
                    lease_expires_at=expires,
                )
            )
        else:
            own.paths, own.holder, own.lease_expires_at = list(paths), holder, expires
    return None


async def renew_scope(sessions: SessionFactory, run_id: str, lease_seconds: float) -> bool:
    """Push the lease of ``run_id``'s lock forward; False when it has no lock any more."""
    async with sessions.begin() as session:
        result = await session.execute(
            update(ScopeLock)
            .where(ScopeLock.run_id == run_id)
            .values(lease_expires_at=_now() + timedelta(seconds=lease_seconds))
        )
    return bool(getattr(result, "rowcount", 0))


async def release_scope(sessions: SessionFactory, run_id: str) -> None:
    async with sessions.begin() as session:
        await session.execute(delete(ScopeLock).where(ScopeLock.run_id == run_id))
