"""Retention: what finished runs leave behind is removed by policy (``retention.*``).

Two halves, because a worker's files are on its own host and the database is shared:

- ``prune_database`` (the hourly ``prune`` cron job, on one worker at a time): the event logs,
  artifact rows and handled deliveries and notifications older than their retention;
- ``prune_host`` (every worker, at start and hourly, for its own host): artifact files, the
  workspace folders left by runs that ended while their worker died, and the mirrors of
  repositories Bosun no longer serves.

``bosun prune [--dry-run]`` runs both on the host it is started on. Only runs in a terminal
state are pruned, counted from when they ended; a run whose row this database does not have
is left alone. A run's ``manifest.json``, ``summary`` and ``status`` events are its record,
kept ``retention.records_days`` (0: forever) — longer than the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Text, case, cast, delete, func, select
from sqlalchemy.sql.elements import ColumnElement

from bot.db.artifacts import DATABASE, artifact_filename
from bot.db.engine import SessionFactory
from bot.db.models import (
    Artifact,
    ArtifactChunk,
    Delivery,
    Notification,
    NotificationAttempt,
    Repository,
    Run,
    RunEvent,
    utcnow,
)
from bot.domain.states import TERMINAL, DeliveryStatus, RunState
from bot.settings import RetentionSettings, Settings
from sandboxes.errors import SandboxError
from sandboxes.mirror import MirrorCache
from sandboxes.workspace import WorkspaceManager

log = structlog.get_logger("jobs.upkeep.prune")

RECORD_ARTIFACTS = ("manifest.json", "summary")
"""A run's record: kept ``retention.records_days``, after the rest of its artifacts."""
RECORD_EVENTS = ("status",)
BATCH = 2000
"""Rows deleted per transaction, so a first prune of a year of runs holds no long lock."""
HANDLED = (DeliveryStatus.PROCESSED, DeliveryStatus.IGNORED, DeliveryStatus.FAILED)
INTERVAL_SECONDS = 3600.0


@dataclass
class Removed:
    count: int = 0
    bytes: int = 0

    def add(self, count: int, size: int) -> None:
        self.count += count
        self.bytes += size


@dataclass
class PruneReport:
    """What was removed (or, ``dry_run``, would be), by kind, and what could not be."""

    dry_run: bool
    removed: dict[str, Removed] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def kind(self, name: str) -> Removed:
        return self.removed.setdefault(name, Removed())

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": {k: {"count": v.count, "bytes": v.bytes} for k, v in self.removed.items()},
            "errors": self.errors,
        }


KINDS = {
    "events": "event log lines of finished runs",
    "artifacts": "artifacts of finished runs (rows; bytes: those stored in the database)",
    "records": "manifests, summaries and status events past records_days",
    "deliveries": "handled webhook deliveries",
    "notifications": "sent or failed outbound notifications",
    "artifact_files": "artifact files on this host",
    "workspaces": "workspace folders of finished runs on this host",
    "mirrors": "mirrors of repositories no longer served, on this host",
}


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days else None


def _ended() -> ColumnElement[Any]:
    return func.coalesce(Run.finished_at, Run.state_since, Run.created_at)


def _finished_before(cutoff: datetime) -> Any:
    """Ids of runs in a terminal state that ended before ``cutoff``."""
    return select(Run.id).where(Run.state.in_(sorted(TERMINAL)), _ended() < cutoff)


async def _delete_batches(
    sessions: SessionFactory,
    ids: Any,
    column: Any,
    size: Any,
    removed: Removed,
    *,
    dry_run: bool,
    before_delete: Any = None,
) -> None:
    """Count (and unless ``dry_run`` delete, ``BATCH`` rows per transaction) the rows of
    ``column``'s table whose key ``ids`` selects; ``size`` is the bytes of one row."""
    table = column.class_
    if dry_run:
        async with sessions() as session:
            found = (
                await session.execute(
                    select(func.count(), func.coalesce(func.sum(size), 0)).where(column.in_(ids))
                )
            ).one()
        removed.add(int(found[0]), int(found[1]))
        return
    while True:
        async with sessions.begin() as session:
            batch = (
                await session.execute(select(column, size).where(column.in_(ids)).limit(BATCH))
            ).all()
            if not batch:
                return
            keys = [row[0] for row in batch]
            if before_delete is not None:
                await session.execute(before_delete(keys))
            await session.execute(delete(table).where(column.in_(keys)))
        removed.add(len(batch), sum(int(row[1] or 0) for row in batch))


async def prune_database(
    sessions: SessionFactory,
    retention: RetentionSettings,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    report: PruneReport | None = None,
) -> PruneReport:
    """Delete what ``retention`` says has expired from the database."""
    now = now or utcnow()
    report = report or PruneReport(dry_run=dry_run)
    event_size = func.coalesce(func.length(cast(RunEvent.data, Text)), 0)

    if (cutoff := _cutoff(now, retention.events_days)) is not None:
        ids = select(RunEvent.id).where(
            RunEvent.run_id.in_(_finished_before(cutoff)), RunEvent.kind.not_in(RECORD_EVENTS)
        )
        await _delete_batches(
            sessions, ids, RunEvent.id, event_size, report.kind("events"), dry_run=dry_run
        )

    # Bytes the database holds: those of database-stored artifacts (a file's are counted by
    # the host that has it).
    artifact_size = case((Artifact.storage == DATABASE, Artifact.size), else_=0)

    def drop_chunks(keys: list[int]) -> Any:
        return delete(ArtifactChunk).where(ArtifactChunk.artifact_id.in_(keys))

    if (cutoff := _cutoff(now, retention.artifacts_days)) is not None:
        ids = select(Artifact.id).where(
            Artifact.run_id.in_(_finished_before(cutoff)), Artifact.name.not_in(RECORD_ARTIFACTS)
        )
        await _delete_batches(
            sessions,
            ids,
            Artifact.id,
            artifact_size,
            report.kind("artifacts"),
            dry_run=dry_run,
            before_delete=drop_chunks,
        )

    if (cutoff := _cutoff(now, retention.records_days)) is not None:
        records = report.kind("records")
        # Everything else went at events_days and artifacts_days, which are shorter.
        ids = select(Artifact.id).where(
            Artifact.run_id.in_(_finished_before(cutoff)), Artifact.name.in_(RECORD_ARTIFACTS)
        )
        await _delete_batches(
            sessions, ids, Artifact.id, artifact_size, records, dry_run=dry_run,
            before_delete=drop_chunks,
        )  # fmt: skip
        ids = select(RunEvent.id).where(
            RunEvent.run_id.in_(_finished_before(cutoff)), RunEvent.kind.in_(RECORD_EVENTS)
        )
        await _delete_batches(sessions, ids, RunEvent.id, event_size, records, dry_run=dry_run)

    if (cutoff := _cutoff(now, retention.deliveries_days)) is not None:
        handled = select(Delivery.id).where(
            Delivery.status.in_(HANDLED),
            func.coalesce(Delivery.processed_at, Delivery.received_at) < cutoff,
        )
        size = func.coalesce(func.length(Delivery.payload), 0)
        await _delete_batches(
            sessions, handled, Delivery.id, size, report.kind("deliveries"), dry_run=dry_run
        )
        ids = select(Notification.id).where(
            Notification.status.in_(("delivered", "failed")),
            func.coalesce(Notification.delivered_at, Notification.created_at) < cutoff,
        )
        size = func.coalesce(func.length(Notification.body), 0)

        def drop_attempts(keys: list[int]) -> Any:
            return delete(NotificationAttempt).where(NotificationAttempt.notification_id.in_(keys))

        await _delete_batches(
            sessions, ids, Notification.id, size, report.kind("notifications"),
            dry_run=dry_run, before_delete=drop_attempts,
        )  # fmt: skip
    return report


# The host's files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunEnd:
    state: RunState
    ended: datetime


async def _run_ends(sessions: SessionFactory, run_ids: Iterable[str]) -> dict[str, _RunEnd]:
    found: dict[str, _RunEnd] = {}
    ids = sorted(set(run_ids))
    for start in range(0, len(ids), 500):
        async with sessions() as session:
            rows = await session.execute(
                select(Run.id, Run.state, _ended()).where(Run.id.in_(ids[start : start + 500]))
            )
            for run_id, state, ended in rows:
                found[run_id] = _RunEnd(state, ended)
    return found


def _expired(end: _RunEnd | None, cutoff: datetime | None) -> bool:
    if end is None or end.state not in TERMINAL or cutoff is None:
        return False
    ended = end.ended if end.ended.tzinfo is not None else end.ended.replace(tzinfo=cutoff.tzinfo)
    return ended < cutoff


def _size(path: Path) -> int:
    """Bytes under ``path`` (allocated size is not needed: this is what a listing shows),
    never following a link."""
    try:
        info = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return info.st_size
    total = 0
    for dirpath, dirnames, filenames in os.walk(path, onerror=lambda _: None):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


async def _prune_artifact_files(
    sessions: SessionFactory, settings: Settings, now: datetime, report: PruneReport
) -> None:
    retention = settings.retention
    folders = [p for p in _listing(settings.artifacts_dir) if p.is_dir() and not p.is_symlink()]
    ends = await _run_ends(sessions, (p.name for p in folders))
    rest_cutoff = _cutoff(now, retention.artifacts_days)
    record_cutoff = _cutoff(now, retention.records_days)
    kept_names = {artifact_filename(name) for name in RECORD_ARTIFACTS}
    removed = report.kind("artifact_files")
    for folder in folders:
        end = ends.get(folder.name)
        whole = _expired(end, record_cutoff)
        if not whole and not _expired(end, rest_cutoff):
            continue
        files = [p for p in _listing(folder) if whole or p.name not in kept_names]
        for path in files:
            size = await asyncio.to_thread(_size, path)
            if not report.dry_run:
                try:
                    await asyncio.to_thread(_remove_path, path)
                except OSError as exc:
                    report.errors.append(f"cannot remove {path}: {exc.strerror}")
                    continue
            removed.add(1, size)
        if whole and not report.dry_run:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _remove_path(path: Path) -> None:
    """Remove an artifact file (or anything else Bosun itself wrote there) without
    following links."""
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove_path(child)
        path.rmdir()
    else:
        path.unlink()


async def _prune_workspaces(
    sessions: SessionFactory, workspaces: WorkspaceManager, report: PruneReport
) -> None:
    folders = _listing(workspaces.root / "runs")
    ends = await _run_ends(sessions, (p.name for p in folders))
    removed = report.kind("workspaces")
    for folder in folders:
        end = ends.get(folder.name)
        if end is None or end.state not in TERMINAL:
            continue  # running, under review, or not ours: never touched
        size = await asyncio.to_thread(_size, folder)
        if not report.dry_run:
            try:
                await workspaces.cleanup(folder.name)
            except SandboxError as exc:
                report.errors.append(str(exc))
                continue
        removed.add(1, size)


async def _prune_mirrors(
    sessions: SessionFactory, mirrors: MirrorCache, report: PruneReport
) -> None:
    """Mirrors of repositories Bosun was removed from (their rows are inactive). A mirror
    no row names is left alone: it may be another installation's on a shared folder."""
    served: set[str] = set()
    removed_repos: set[str] = set()
    async with sessions() as session:
        rows = await session.execute(select(Repository.full_name, Repository.active))
        for name, active in rows:
            with contextlib.suppress(SandboxError):
                (served if active else removed_repos).add(mirrors.path_for(name).name)
    removed = report.kind("mirrors")
    for path in _listing(mirrors.root / "mirrors"):
        if path.name not in removed_repos or path.name in served or path.is_symlink():
            continue
        size = await asyncio.to_thread(_size, path)
        if not report.dry_run:
            error = await asyncio.to_thread(_remove_mirror, path)
            if error is not None:
                report.errors.append(error)
                continue
        removed.add(1, size)


def _remove_mirror(path: Path) -> str | None:
    """Remove a mirror under its lock (a worker fetching it right now keeps it this round)."""
    from sandboxes.workspace import _rmtree

    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        return f"cannot lock {path}: {exc.strerror}"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"{path} is in use; it is removed at a later pass"
        try:
            _rmtree(path)
        except SandboxError as exc:
            return str(exc)
        return None
    finally:
        os.close(fd)  # the lock file stays: a waiter may hold it open


async def prune_host(
    sessions: SessionFactory,
    settings: Settings,
    workspaces: WorkspaceManager,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    report: PruneReport | None = None,
) -> PruneReport:
    """Remove this host's expired artifact files, finished runs' workspace folders and the
    mirrors of repositories no longer served."""
    now = now or utcnow()
    report = report or PruneReport(dry_run=dry_run)
    await _prune_artifact_files(sessions, settings, now, report)
    await _prune_workspaces(sessions, workspaces, report)
    await _prune_mirrors(sessions, workspaces.mirrors, report)
    return report


# The worker's upkeep ------------------------------------------------------------------------


async def prune(ctx: dict[str, Any]) -> dict[str, Any]:
    """The hourly cron job: the database's half (one worker at a time)."""
    from jobs.context import JobContext

    bosun: JobContext = ctx["bosun"]
    report = await prune_database(bosun.services.sessions, bosun.settings.retention)
    _log(report, "database")
    return report.as_json()


def _log(report: PruneReport, part: str) -> None:
    counts = {k: v.count for k, v in report.removed.items() if v.count}
    if counts or report.errors:
        log.info("pruned", part=part, counts=counts, errors=report.errors[:5])


class HostUpkeep:
    """Every worker prunes its own host's files at start and every hour."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: Settings,
        workspaces: Callable[[], WorkspaceManager],
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.workspaces = workspaces
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="bosun-host-prune")

    async def _loop(self) -> None:
        while True:
            try:
                report = await prune_host(self.sessions, self.settings, self.workspaces())
                _log(report, "host")
            except Exception as exc:  # noqa: BLE001 -- upkeep never stops the worker
                log.warning("prune_failed", part="host", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(INTERVAL_SECONDS)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
