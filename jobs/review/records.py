"""What the review loop keeps about a run, read back: the paths its diff changed, its approvals
and command audit as manifest records, the rewritten ``manifest.json``, and the review section
of the status comment."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.artifacts import read_named, store_artifact
from bot.db.models import Approval, CommandAudit, Repository, Run, Task
from bot.domain.repoconfig import RepoConfig
from bot.domain.review import ApprovalSnapshot, RunSnapshot, review_section, with_review_section
from bot.domain.states import TERMINAL
from bot.forge.port import Forge, ForgeError
from bot.profiles import effective_profile
from jobs.context import JobContext
from jobs.run.manifest import with_review

log = structlog.get_logger("jobs.review.records")


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def _artifact_json(session: AsyncSession, run_id: str, name: str) -> Any:
    raw = await read_named(session, run_id, name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("artifact_unreadable", name=name, run_id=run_id)
        return None


async def changed_paths(session: AsyncSession, run_id: str) -> tuple[str, ...]:
    """The paths the run's diff touched (both sides of a rename), from its ``diff-stats``
    artifact (or the manifest's file list)."""
    stats = await _artifact_json(session, run_id, "diff-stats")
    if not isinstance(stats, list):
        manifest = await _artifact_json(session, run_id, "manifest.json")
        stats = ((manifest or {}).get("diff") or {}).get("files") or []
    seen: dict[str, None] = {}
    for item in stats:
        if isinstance(item, dict):
            for key in ("old_path", "path"):
                if isinstance(item.get(key), str):
                    seen[item[key]] = None
    return tuple(seen)


async def find_run(bosun: JobContext, repo: str, number: int) -> tuple[Run, Task] | None:
    """The newest run of the task whose issue or PR is ``number``."""
    async with bosun.services.sessions() as session:
        row = (
            await session.execute(
                select(Run, Task)
                .join(Task, Task.id == Run.task_id)
                .join(Repository, Repository.id == Run.repository_id)
                .where(
                    Repository.full_name == repo,
                    (Task.pr_number == number) | (Task.issue_number == number),
                )
                .order_by(Run.created_at.desc())
                .limit(1)
            )
        ).first()
    return (row[0], row[1]) if row else None


async def approval_rows(session: AsyncSession, run_id: str) -> list[Approval]:
    rows = await session.execute(
        select(Approval).where(Approval.run_id == run_id).order_by(Approval.id)
    )
    return list(rows.scalars())


async def snapshot(bosun: JobContext, run: Run) -> RunSnapshot:
    """``run`` (as the caller holds it) with its approvals read now, as the pure review rules
    see it. Decisions use ``read_run``, which reads the run itself now too."""
    async with bosun.services.sessions() as session:
        return await _snapshot(bosun, session, run)


async def read_run(bosun: JobContext, run_id: str) -> tuple[Run, RunSnapshot] | None:
    """The run and its snapshot, both read now in one session."""
    async with bosun.services.sessions() as session:
        run = await session.get(Run, run_id, populate_existing=True)
        if run is None:
            return None
        return run, await _snapshot(bosun, session, run)


async def _snapshot(bosun: JobContext, session: AsyncSession, run: Run) -> RunSnapshot:
    approvals = tuple(
        ApprovalSnapshot(
            a.actor,
            a.sha,
            tuple(a.paths or ()),
            valid=a.invalidated_at is None,
            general=a.general,
            id=a.id,
        )
        for a in await approval_rows(session, run.id)
    )
    return RunSnapshot(
        run_id=run.id,
        state=run.state,
        requester=run.requester,
        head_sha=run.head_sha,
        on_hold=run.on_hold,
        pr_number=run.pr_number,
        changed_paths=await changed_paths(session, run.id),
        approvals=approvals,
        budget_usd=budget_of(bosun, run),
        cost_usd=run.cost_usd,
        version=run.version,
        head_since=run.head_since,
        merged_sha=run.merged_sha,
    )


def budget_of(bosun: JobContext, run: Run) -> float | None:
    """The run's dollar cap: its own (raised by ``/budget``), else its profile's as the
    repository narrows it."""
    if run.budget_usd is not None:
        return run.budget_usd
    server = bosun.settings.agent_profiles().get(run.profile)
    if server is None:
        return None
    config = RepoConfig.model_validate(run.repo_config or {})
    return effective_profile(run.profile, server, config)[0].budget_usd


async def review_records(
    session: AsyncSession, run_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's approvals and command audit as ``manifest.json`` records (SPEC §4.3, §8)."""
    approvals = [
        {
            "actor": a.actor,
            "sha": a.sha,
            "paths": list(a.paths or []),
            "general": a.general,
            "source": a.source,
            "valid": a.invalidated_at is None,
            "approved_at": _when(a.created_at),
            "invalidated_at": _when(a.invalidated_at),
            "invalidated_reason": a.invalidated_reason,
        }
        for a in await approval_rows(session, run_id)
    ]
    audits = await session.execute(
        select(CommandAudit).where(CommandAudit.run_id == run_id).order_by(CommandAudit.id)
    )
    commands = [
        {
            "delivery_id": c.delivery_id,
            "comment_id": c.comment_id,
            "actor": c.actor,
            "permission": c.permission,
            "sha": c.sha,
            "command": c.command,
            "args": c.args,
            "outcome": c.outcome,
            "reason": c.reason,
            "at": _when(c.created_at),
        }
        for c in audits.scalars()
    ]
    return approvals, commands


async def rewrite_manifest(
    bosun: JobContext, run_id: str, review: dict[str, Any] | None = None
) -> bool:
    """Rewrite the run's ``manifest.json`` with its current state, approvals and command
    audit (and ``review``: what a partial approval or merge did). Only a manifest the
    pipeline already wrote is rewritten; returns whether one was."""
    async with bosun.services.sessions.begin() as session:
        manifest = await _artifact_json(session, run_id, "manifest.json")
        run = await session.get(Run, run_id)
        if not isinstance(manifest, dict) or run is None:
            return False
        approvals, commands = await review_records(session, run_id)
        updated = with_review(
            manifest,
            state=run.state.value,
            reason=run.reason,
            head_sha=run.head_sha,
            approvals=approvals,
            commands=commands,
            review=review,
        )
        await store_artifact(
            session,
            bosun.artifacts,
            run_id,
            "manifest.json",
            json.dumps(updated, indent=2, default=str),
            content_type="application/json",
        )
    return True


async def record_ended(bosun: JobContext, run_id: str) -> None:
    """A run the review loop ended (merged, rejected, superseded): its line in
    ``<data_dir>/metrics.jsonl``, as the pipeline writes one for the runs it ends."""
    async with bosun.services.sessions() as session:
        run = await session.get(Run, run_id, populate_existing=True)
        repository = await session.get(Repository, run.repository_id) if run else None
        files = len(await changed_paths(session, run_id)) if run else 0
    if run is None or repository is None or run.state not in TERMINAL:
        return
    duration = None
    if run.started_at and run.finished_at:
        duration = (run.finished_at - run.started_at).total_seconds()
    line = json.dumps(
        {
            "run_id": run.id,
            "repository": repository.full_name,
            "state": run.state.value,
            "profile": run.profile,
            "duration_s": duration,
            "cost_usd": run.cost_usd,
            "tokens_in": run.tokens_in,
            "tokens_out": run.tokens_out,
            "gates_passed": run.gates_passed,
            "files_changed": files,
            "timings_s": {},
            "finished_at": (run.finished_at or datetime.now(UTC)).isoformat(),
        }
    )
    path = bosun.settings.data_dir / "metrics.jsonl"
    await asyncio.to_thread(_append, path, line)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(line + "\n")


async def note_on_status(bosun: JobContext, port: Forge, run: Run, note: str) -> None:
    """Edit the review section of the task's status comment in place (approvals, and
    ``note``: what just happened). A GitHub failure here is logged, never raised."""
    async with bosun.services.sessions() as session:
        task = await session.get(Task, run.task_id)
        current = await session.get(Run, run.id, populate_existing=True)
    if task is None or current is None or not task.status_comment_id:
        return
    shot = await snapshot(bosun, current)
    try:
        body = await port.comment_body(task.status_comment_id)
        if body is None:
            return
        section = review_section(shot, note)
        await port.update_comment(task.status_comment_id, with_review_section(body, section))
    except ForgeError as exc:
        log.warning("status_note_failed", error=repr(exc)[:300])
