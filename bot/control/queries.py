"""The control plane's named queries: every read of runs, events, artifacts, approvals, audit
rows, tasks and repositories that the API, the CLI and the dashboard make goes through
``RunStore``, which returns the read models of ``bot.control.views``.

Lists are bounded and paginated with opaque cursors (the last row's key, base64url): stable
under inserts, since run ids sort by creation time.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.agents.runners import get_runner
from bot.control.views import (
    ApprovalOut,
    ArtifactOut,
    AuditOut,
    CapabilitiesOut,
    DiffOut,
    EventOut,
    FileStat,
    GateOut,
    Lineage,
    Page,
    ProfileOut,
    RepositoryOut,
    RunDetail,
    RunSummary,
    TaskOut,
)
from bot.db.artifacts import get_artifact, read_artifact
from bot.db.engine import SessionFactory
from bot.db.models import Approval, Artifact, CommandAudit, Repository, Run, RunEvent, Task
from bot.domain.states import TERMINAL, RunState
from bot.errors import NotFoundError
from bot.profiles import ProfileConfig

MAX_PAGE = 200
WORKFLOWS = ("implement", "plan", "plan_implement", "plan_implement_test")


class BadCursor(ValueError):
    """A cursor this server did not hand out."""


def encode_cursor(key: Sequence[Any]) -> str:
    raw = json.dumps(list(key), default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("cursor is not one this server handed out") from exc
    if not isinstance(value, list):
        raise BadCursor("cursor is not one this server handed out")
    return value


def summary(run: Run, repository: str, task: Task) -> RunSummary:
    return RunSummary(
        id=run.id,
        repository=repository,
        task_id=run.task_id,
        issue_number=task.issue_number,
        title=task.title,
        state=run.state.value,
        terminal=run.state in TERMINAL,
        profile=run.profile,
        workflow=run.workflow,
        trigger=run.trigger,
        requester=run.requester,
        branch=run.branch,
        pr_number=run.pr_number if run.pr_number is not None else task.pr_number,
        base_sha=run.base_sha,
        head_sha=run.head_sha,
        parent_run_id=run.parent_run_id,
        on_hold=run.on_hold,
        cancel_requested=run.cancel_requested,
        stalled=run.stalled_since is not None,
        last_seq=run.last_seq,
        gates_passed=run.gates_passed,
        cost_usd=run.cost_usd,
        budget_usd=run.budget_usd,
        tokens_in=run.tokens_in,
        tokens_out=run.tokens_out,
        reason=run.reason,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def repository_out(repo: Repository) -> RepositoryOut:
    return RepositoryOut(
        full_name=repo.full_name,
        kind="local" if repo.local_path else "github",
        default_branch=repo.default_branch,
        private=repo.private,
        local_path=repo.local_path,
        installed=repo.active,
        enabled=repo.enabled,
        created_at=repo.created_at,
    )


def profile_out(name: str, profile: ProfileConfig, *, default: bool) -> ProfileOut:
    caps = get_runner(profile.runner).capabilities
    return ProfileOut(
        name=name,
        runner=profile.runner,
        model=profile.model or None,
        image=profile.image or None,
        workflow=profile.workflow,
        workflows=list(WORKFLOWS),
        max_turns=profile.max_turns,
        timeout=profile.timeout,
        budget_usd=profile.budget_usd,
        capabilities=CapabilitiesOut(
            streaming=caps.streaming,
            cost_reporting=caps.cost_reporting,
            session_resume=caps.session_resume,
            tool_allowlist=caps.tool_allowlist,
        ),
        default=default,
    )


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


class RunStore:
    """Reads for the control plane, each in a short session of its own."""

    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions

    # -- runs -------------------------------------------------------------------------------

    def _runs(self) -> Select[Run, str, Task]:
        return (
            select(Run, Repository.full_name, Task)
            .join(Repository, Repository.id == Run.repository_id)
            .join(Task, Task.id == Run.task_id)
        )

    async def list_runs(
        self,
        *,
        states: Iterable[str] = (),
        repository: str | None = None,
        requester: str | None = None,
        since: datetime | None = None,
        allowed_repos: Iterable[str] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[RunSummary]:
        """Newest first. ``allowed_repos`` (non-empty) restricts to those repositories."""
        query = self._runs()
        wanted = [RunState(s) for s in states]
        if wanted:
            query = query.where(Run.state.in_(wanted))
        if repository:
            query = query.where(func.lower(Repository.full_name) == repository.lower())
        allowed = [r.lower() for r in allowed_repos]
        if allowed:
            query = query.where(func.lower(Repository.full_name).in_(allowed))
        if requester:
            query = query.where(Run.requester == requester)
        if since is not None:
            query = query.where(Run.created_at >= since)
        if cursor:
            (last,) = decode_cursor(cursor)
            query = query.where(Run.id < str(last))
        size = _limit(limit)
        async with self.sessions() as session:
            rows = (await session.execute(query.order_by(Run.id.desc()).limit(size + 1))).all()
        items = [summary(run, repo, task) for run, repo, task in rows[:size]]
        more = encode_cursor([items[-1].id]) if len(rows) > size else None
        return Page[RunSummary](items=items, next_cursor=more)

    async def run_summary(self, run_id: str) -> RunSummary:
        async with self.sessions() as session:
            row = (await session.execute(self._runs().where(Run.id == run_id))).first()
        if row is None:
            raise NotFoundError(f"run {run_id} does not exist")
        return summary(*row)

    async def get_run(self, run_id: str) -> RunDetail:
        async with self.sessions() as session:
            row = (await session.execute(self._runs().where(Run.id == run_id))).first()
            if row is None:
                raise NotFoundError(f"run {run_id} does not exist")
            run, repo, task = row
            children = list(
                (
                    await session.execute(
                        select(Run.id).where(Run.parent_run_id == run_id).order_by(Run.id)
                    )
                ).scalars()
            )
            gate_events = await self._events(session, run_id, kinds=("gate_result",))
            progress = (
                await session.execute(
                    select(RunEvent.data)
                    .where(RunEvent.run_id == run_id, RunEvent.kind == "progress")
                    .order_by(RunEvent.seq.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            approvals = await self._approvals(session, run_id)
            artifacts = await self._artifacts(session, run_id)
        base = summary(run, repo, task).model_dump()
        return RunDetail(
            **base,
            phase=(progress or {}).get("phase"),
            lineage=Lineage(parent=run.parent_run_id, children=children),
            gates=[_gate(e) for e in gate_events],
            approvals=approvals,
            artifacts=artifacts,
            prompt_instructions=run.instructions,
        )

    async def repository_of(self, run_id: str) -> str:
        async with self.sessions() as session:
            name = (
                await session.execute(
                    select(Repository.full_name)
                    .join(Run, Run.repository_id == Repository.id)
                    .where(Run.id == run_id)
                )
            ).scalar_one_or_none()
        if name is None:
            raise NotFoundError(f"run {run_id} does not exist")
        return name

    # -- events, artifacts, approvals, audit ------------------------------------------------

    async def _events(
        self,
        session: AsyncSession,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int = MAX_PAGE,
        kinds: Iterable[str] = (),
    ) -> list[RunEvent]:
        query = select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.seq > after_seq)
        wanted = list(kinds)
        if wanted:
            query = query.where(RunEvent.kind.in_(wanted))
        rows = await session.execute(query.order_by(RunEvent.seq).limit(limit))
        return list(rows.scalars())

    async def events(
        self, run_id: str, *, after_seq: int = 0, limit: int = 200, kinds: Iterable[str] = ()
    ) -> list[EventOut]:
        """Events after ``after_seq``, oldest first (at most ``limit``, capped)."""
        async with self.sessions() as session:
            await self._require(session, run_id)
            rows = await self._events(
                session, run_id, after_seq=after_seq, limit=_limit(limit), kinds=kinds
            )
        return [
            EventOut(seq=e.seq, kind=e.kind, data=e.data, created_at=e.created_at) for e in rows
        ]

    async def _require(self, session: AsyncSession, run_id: str) -> Run:
        run = await session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"run {run_id} does not exist")
        return run

    async def _artifacts(self, session: AsyncSession, run_id: str) -> list[ArtifactOut]:
        rows = await session.execute(
            select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id)
        )
        return [
            ArtifactOut(
                name=a.name,
                content_type=a.content_type,
                size=a.size,
                sha256=a.sha256,
                storage=a.storage,
                created_at=a.created_at,
            )
            for a in rows.scalars()
        ]

    async def artifacts(self, run_id: str) -> list[ArtifactOut]:
        async with self.sessions() as session:
            await self._require(session, run_id)
            return await self._artifacts(session, run_id)

    async def artifact(self, run_id: str, name: str) -> Artifact:
        async with self.sessions() as session:
            await self._require(session, run_id)
            return await get_artifact(session, run_id, name)

    async def diff(self, run_id: str, *, max_bytes: int = 2_000_000) -> DiffOut:
        """Per-file stats (``diff-stats``) and the unified diff when it fits in ``max_bytes``."""
        async with self.sessions() as session:
            await self._require(session, run_id)
            stats: list[dict[str, Any]] = []
            unified: str | None = ""
            size = 0
            try:
                raw = await read_artifact(
                    session, await get_artifact(session, run_id, "diff-stats")
                )
                stats = json.loads(raw)
            except NotFoundError:
                stats = []
            try:
                diff = await get_artifact(session, run_id, "diff")
            except NotFoundError:
                diff = None
            if diff is not None:
                size = diff.size
                unified = (
                    (await read_artifact(session, diff)).decode("utf-8", "replace")
                    if diff.size <= max_bytes
                    else None
                )
        files = [
            FileStat(
                path=str(item.get("path", "")),
                status=str(item.get("status", "M")),
                added=item.get("added"),
                removed=item.get("removed"),
                binary=bool(item.get("binary", False)),
                old_path=item.get("old_path"),
                size=item.get("size"),
            )
            for item in stats
        ]
        return DiffOut(
            run_id=run_id,
            files=files,
            lines_added=sum(f.added or 0 for f in files),
            lines_removed=sum(f.removed or 0 for f in files),
            unified=unified,
            size=size,
        )

    async def _approvals(self, session: AsyncSession, run_id: str) -> list[ApprovalOut]:
        rows = await session.execute(
            select(Approval).where(Approval.run_id == run_id).order_by(Approval.id)
        )
        return [
            ApprovalOut(
                actor=a.actor,
                sha=a.sha,
                paths=[str(p) for p in a.paths or []],
                source=a.source,
                valid=a.invalidated_at is None,
                invalidated_reason=a.invalidated_reason,
                created_at=a.created_at,
            )
            for a in rows.scalars()
        ]

    async def approvals(self, run_id: str) -> list[ApprovalOut]:
        async with self.sessions() as session:
            await self._require(session, run_id)
            return await self._approvals(session, run_id)

    async def audit(
        self,
        *,
        run_id: str | None = None,
        repository: str | None = None,
        allowed_repos: Iterable[str] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[AuditOut]:
        """Command audit rows, newest first."""
        query = select(CommandAudit)
        if run_id:
            query = query.where(CommandAudit.run_id == run_id)
        if repository:
            query = query.where(func.lower(CommandAudit.repository) == repository.lower())
        allowed = [r.lower() for r in allowed_repos]
        if allowed:
            query = query.where(func.lower(CommandAudit.repository).in_(allowed))
        if cursor:
            (last,) = decode_cursor(cursor)
            query = query.where(CommandAudit.id < int(last))
        size = _limit(limit)
        async with self.sessions() as session:
            rows = list(
                (
                    await session.execute(query.order_by(CommandAudit.id.desc()).limit(size + 1))
                ).scalars()
            )
        items = [
            AuditOut(
                created_at=a.created_at,
                run_id=a.run_id,
                repository=a.repository,
                actor=a.actor,
                source=a.source,
                permission=a.permission,
                sha=a.sha,
                command=a.command,
                args=a.args,
                outcome=a.outcome,
                reason=a.reason,
                delivery_id=a.delivery_id,
                comment_id=a.comment_id,
            )
            for a in rows[:size]
        ]
        more = encode_cursor([rows[size - 1].id]) if len(rows) > size else None
        return Page[AuditOut](items=items, next_cursor=more)

    # -- repositories and tasks -------------------------------------------------------------

    async def repositories(
        self, *, cursor: str | None = None, limit: int = 50
    ) -> Page[RepositoryOut]:
        query = select(Repository)
        if cursor:
            (last,) = decode_cursor(cursor)
            query = query.where(Repository.full_name > str(last))
        size = _limit(limit)
        async with self.sessions() as session:
            rows = list(
                (
                    await session.execute(query.order_by(Repository.full_name).limit(size + 1))
                ).scalars()
            )
        items = [repository_out(r) for r in rows[:size]]
        more = encode_cursor([items[-1].full_name]) if len(rows) > size else None
        return Page[RepositoryOut](items=items, next_cursor=more)

    async def repository(self, full_name: str) -> Repository:
        async with self.sessions() as session:
            found = (
                await session.execute(
                    select(Repository).where(func.lower(Repository.full_name) == full_name.lower())
                )
            ).scalar_one_or_none()
        if found is None:
            raise NotFoundError(f"repository {full_name} is not known to Bosun")
        return found

    async def tasks(
        self,
        *,
        repository: str | None = None,
        allowed_repos: Iterable[str] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[TaskOut]:
        query = select(Task, Repository.full_name).join(
            Repository, Repository.id == Task.repository_id
        )
        if repository:
            query = query.where(func.lower(Repository.full_name) == repository.lower())
        allowed = [r.lower() for r in allowed_repos]
        if allowed:
            query = query.where(func.lower(Repository.full_name).in_(allowed))
        if cursor:
            (last,) = decode_cursor(cursor)
            query = query.where(Task.id < int(last))
        size = _limit(limit)
        async with self.sessions() as session:
            rows = (await session.execute(query.order_by(Task.id.desc()).limit(size + 1))).all()
            items = [await self._task_out(session, task, repo) for task, repo in rows[:size]]
        more = encode_cursor([items[-1].id]) if len(rows) > size else None
        return Page[TaskOut](items=items, next_cursor=more)

    async def task(self, task_id: int) -> TaskOut:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Task, Repository.full_name)
                    .join(Repository, Repository.id == Task.repository_id)
                    .where(Task.id == task_id)
                )
            ).first()
            if row is None:
                raise NotFoundError(f"task {task_id} does not exist")
            return await self._task_out(session, *row)

    async def _task_out(self, session: AsyncSession, task: Task, repo: str) -> TaskOut:
        last = (
            await session.execute(
                select(Run).where(Run.task_id == task.id).order_by(Run.id.desc()).limit(1)
            )
        ).scalar_one_or_none()
        local = (
            await session.execute(
                select(Repository.local_path).where(Repository.id == task.repository_id)
            )
        ).scalar_one_or_none()
        return TaskOut(
            id=task.id,
            repository=repo,
            kind="local" if local else "issue",
            issue_number=task.issue_number,
            title=task.title,
            body=task.body,
            acceptance=[str(item) for item in task.acceptance or ()],
            labels=[str(label) for label in task.labels or ()],
            priority=task.priority or 0,
            focus=[str(path) for path in task.focus or ()],
            profile=task.profile,
            state="closed" if task.state == "closed" else "open",
            pr_number=task.pr_number,
            branch=task.branch,
            last_run=summary(last, repo, task) if last is not None else None,
            created_at=task.created_at,
        )


def _gate(event: RunEvent) -> GateOut:
    data = event.data
    return GateOut(
        name=str(data.get("name", "")),
        passed=bool(data.get("passed")),
        exit_code=data.get("exit_code"),
        duration_s=data.get("duration_s"),
        timed_out=bool(data.get("timed_out", False)),
    )


__all__ = [
    "MAX_PAGE",
    "BadCursor",
    "RunStore",
    "decode_cursor",
    "encode_cursor",
    "profile_out",
    "repository_out",
    "summary",
]
