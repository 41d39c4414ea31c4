"""The dashboard's reads: the fleet (what needs a person, what runs, what waits, what ended),
a run's timeline and log, the board's tasks. Built on the control plane's read models
(``bot.control.queries.summary`` → ``RunSummary``) and bounded so a page costs a handful of
indexed queries whatever the size of the history."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.orm import aliased

from bot.control.queries import summary
from bot.control.views import RunSummary
from bot.db.engine import SessionFactory
from bot.db.models import Repository, Run, RunEvent, Task
from bot.domain.states import ACTIVE, TERMINAL, RunState

WORKING = (RunState.PREPARING, RunState.RUNNING, RunState.GATES)
RETRY_WORTHY = (RunState.FAILED, RunState.TIMED_OUT)
RECENT = 20
NEEDS_YOU_DAYS = 7


@dataclass(frozen=True)
class Filters:
    repository: str = ""
    profile: str = ""
    requester: str = ""
    state: str = ""

    def query(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass(frozen=True)
class Attention:
    run: RunSummary
    why: str
    """What the person is needed for, in words (``review``, ``budget exhausted``…)."""


@dataclass
class Working:
    run: RunSummary
    phase: str | None
    last_line: str


@dataclass
class Waiting:
    run: RunSummary
    position: int
    text: str


@dataclass
class Fleet:
    needs_you: list[Attention] = field(default_factory=list)
    working: list[Working] = field(default_factory=list)
    queue: list[Waiting] = field(default_factory=list)
    recent: list[RunSummary] = field(default_factory=list)
    capacity_used: int = 0
    capacity_cap: int = 0
    per_repo: dict[str, int] = field(default_factory=dict)
    repositories: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    requesters: list[str] = field(default_factory=list)


def _runs() -> Select[Run, str, Task]:
    return (
        select(Run, Repository.full_name, Task)
        .join(Repository, Repository.id == Run.repository_id)
        .join(Task, Task.id == Run.task_id)
    )


def _filtered(
    query: Select[Run, str, Task], filters: Filters, allowed: Iterable[str] | None
) -> Select[Run, str, Task]:
    if filters.repository:
        query = query.where(Repository.full_name == filters.repository)
    if filters.profile:
        query = query.where(Run.profile == filters.profile)
    if filters.requester:
        query = query.where(Run.requester == filters.requester)
    if filters.state:
        with contextlib.suppress(ValueError):
            query = query.where(Run.state == RunState(filters.state))
    if allowed is not None:
        query = query.where(Repository.full_name.in_(list(allowed)))
    return query


async def fleet(
    sessions: SessionFactory,
    filters: Filters,
    allowed: Iterable[str] | None,
    *,
    capacity_cap: int,
) -> Fleet:
    """Everything the fleet page shows. ``allowed`` (None: all) limits the repositories."""
    allowed = list(allowed) if allowed is not None else None
    out = Fleet(capacity_cap=capacity_cap)
    since = datetime.now(UTC) - timedelta(days=NEEDS_YOU_DAYS)
    child = aliased(Run)
    async with sessions() as session:
        open_rows = (
            await session.execute(
                _filtered(
                    _runs().where(
                        Run.state.in_([*ACTIVE, RunState.REVIEW_READY, RunState.APPROVED])
                    ),
                    filters,
                    allowed,
                ).order_by(Run.created_at, Run.id)
            )
        ).all()
        ended_attention = (
            await session.execute(
                _filtered(
                    _runs().where(
                        Run.state.in_(RETRY_WORTHY),
                        Run.finished_at >= since,
                        ~exists().where(child.parent_run_id == Run.id),
                    ),
                    filters,
                    allowed,
                )
                .order_by(Run.finished_at.desc())
                .limit(RECENT)
            )
        ).all()
        recent = (
            await session.execute(
                _filtered(_runs().where(Run.state.in_(list(TERMINAL))), filters, allowed)
                .order_by(Run.finished_at.desc(), Run.id.desc())
                .limit(RECENT)
            )
        ).all()
        last_lines: dict[str, str] = {}
        working_ids = [run.id for run, _, _ in open_rows if run.state in WORKING]
        for run_id in working_ids:
            data = (
                await session.execute(
                    select(RunEvent.data)
                    .where(RunEvent.run_id == run_id, RunEvent.kind.in_(("log", "message")))
                    .order_by(RunEvent.seq.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if data:
                last_lines[run_id] = str(data.get("line") or data.get("text") or "")[:300]
        used = (
            await session.execute(
                select(Repository.full_name, func.count(Run.id))
                .join(Repository, Repository.id == Run.repository_id)
                .where(Run.state.in_(WORKING))
                .group_by(Repository.full_name)
            )
        ).all()
        out.repositories = list(
            (await session.execute(select(Repository.full_name).order_by(Repository.full_name)))
            .scalars()
            .all()
        )
        out.requesters = list(
            (
                await session.execute(
                    select(Run.requester).where(Run.requester != "").distinct().limit(200)
                )
            )
            .scalars()
            .all()
        )
        out.profiles = list(
            (await session.execute(select(Run.profile).distinct().limit(200))).scalars().all()
        )
    if allowed is not None:
        out.repositories = [r for r in out.repositories if r in set(allowed)]
    out.per_repo = {name: count for name, count in used}
    out.capacity_used = sum(out.per_repo.values())
    position = 0
    for run, repo, task in open_rows:
        view = summary(run, repo, task)
        if run.state is RunState.REVIEW_READY:
            out.needs_you.append(Attention(view, "review: approve, reject or retry"))
        elif run.state is RunState.APPROVED:
            out.needs_you.append(Attention(view, "approved: waiting for the merge"))
        elif run.stalled_since is not None:
            out.needs_you.append(Attention(view, "stalled: no event for a while"))
        if run.state in ACTIVE and run.budget_usd and run.cost_usd >= run.budget_usd:
            out.needs_you.append(Attention(view, "budget exhausted: raise it or cancel"))
        if run.state is RunState.QUEUED:
            position += 1
            out.queue.append(Waiting(view, position, ""))
        elif run.state in WORKING:
            out.working.append(Working(view, run.phase, last_lines.get(run.id, "")))
    for run, repo, task in ended_attention:
        view = summary(run, repo, task)
        why = "budget exhausted" if "budget" in (run.reason or "").lower() else run.state.value
        out.needs_you.append(Attention(view, f"{why.replace('_', ' ')}: retry or let it go"))
    out.recent = [summary(run, repo, task) for run, repo, task in recent]
    return out


def note_waits(out: Fleet, texts: dict[str, str]) -> None:
    """Each queued run's line as admission last wrote it; a run waiting for a scope lock (not
    merely for a slot) needs a person to know."""
    for waiting in out.queue:
        waiting.text = texts.get(waiting.run.id, "")
        if waiting.text and "position" not in waiting.text:
            out.needs_you.append(Attention(waiting.run, waiting.text.removeprefix("waiting: ")))


@dataclass
class Step:
    state: str
    at: datetime
    actor: str
    reason: str


async def _first_of_kind(
    sessions: SessionFactory, run_id: str, kind: str, limit: int
) -> list[tuple[dict[str, Any], datetime]]:
    """The data and time (in UTC) of the run's first ``limit`` events of ``kind``."""
    async with sessions() as session:
        rows = (
            await session.execute(
                select(RunEvent.data, RunEvent.created_at)
                .where(RunEvent.run_id == run_id, RunEvent.kind == kind)
                .order_by(RunEvent.seq)
                .limit(limit)
            )
        ).all()
    return [(data, at if at.tzinfo else at.replace(tzinfo=UTC)) for data, at in rows]


async def timeline(sessions: SessionFactory, run_id: str) -> list[Step]:
    """The run's moves between states (``status`` events), oldest first."""
    return [
        Step(
            state=str(data.get("to", "")),
            at=at,
            actor=str(data.get("actor") or ""),
            reason=str(data.get("reason") or ""),
        )
        for data, at in await _first_of_kind(sessions, run_id, "status", 100)
    ]


async def phases(sessions: SessionFactory, run_id: str) -> list[tuple[str, datetime]]:
    """Each phase the run entered (``progress`` events naming one), in order."""
    out: list[tuple[str, datetime]] = []
    for data, at in await _first_of_kind(sessions, run_id, "progress", 500):
        phase = data.get("phase")
        if phase and (not out or out[-1][0] != phase):
            out.append((str(phase), at))
    return out


async def tail_events(
    sessions: SessionFactory, run_id: str, kinds: tuple[str, ...], limit: int
) -> list[RunEvent]:
    """The run's last ``limit`` events of ``kinds``, oldest first."""
    async with sessions() as session:
        rows = list(
            (
                await session.execute(
                    select(RunEvent)
                    .where(RunEvent.run_id == run_id, RunEvent.kind.in_(kinds))
                    .order_by(RunEvent.seq.desc())
                    .limit(limit)
                )
            ).scalars()
        )
    rows.reverse()
    return rows


@dataclass
class Card:
    task: Task
    repository: str
    last: RunSummary | None
    column: str
    position: float


COLUMNS = ("todo", "running", "review", "done")
COLUMN_TITLES = {"todo": "To do", "running": "Running", "review": "Review", "done": "Done"}


def column_of(state: str | None) -> str:
    if state is None:
        return "todo"
    run_state = RunState(state)
    if run_state in ACTIVE:
        return "running"
    if run_state in (RunState.REVIEW_READY, RunState.APPROVED):
        return "review"
    if run_state in (RunState.MERGED, RunState.REJECTED):
        return "done"
    return "todo"  # failed, cancelled, timed out: to do again


async def board(
    sessions: SessionFactory,
    allowed: Iterable[str] | None,
    positions: dict[int, float],
    *,
    search: str = "",
    repository: str = "",
    limit: int = 400,
) -> dict[str, list[Card]]:
    """Tasks in their columns, each with its last run, in the saved order (new ones last)."""
    latest = select(Run.task_id, func.max(Run.id).label("run_id")).group_by(Run.task_id).subquery()
    query = (
        select(Task, Repository.full_name, Run)
        .join(Repository, Repository.id == Task.repository_id)
        .outerjoin(latest, latest.c.task_id == Task.id)
        .outerjoin(Run, and_(Run.id == latest.c.run_id))
    )
    if allowed is not None:
        query = query.where(Repository.full_name.in_(list(allowed)))
    if repository:
        query = query.where(Repository.full_name == repository)
    if search:
        query = query.where(Task.title.ilike(f"%{search}%"))
    async with sessions() as session:
        rows = (await session.execute(query.order_by(Task.id.desc()).limit(limit))).all()
    columns: dict[str, list[Card]] = {c: [] for c in COLUMNS}
    for task, repo, run in rows:
        last = summary(run, repo, task) if run is not None else None
        column = column_of(last.state if last else None)
        columns[column].append(
            Card(task, repo, last, column, positions.get(task.id, 1e9 + task.id))
        )
    for cards in columns.values():
        cards.sort(key=lambda c: (c.position, c.task.id))
    return columns


__all__ = [
    "COLUMNS",
    "COLUMN_TITLES",
    "Attention",
    "Card",
    "Filters",
    "Fleet",
    "Step",
    "board",
    "column_of",
    "fleet",
    "note_waits",
    "phases",
    "tail_events",
    "timeline",
]
