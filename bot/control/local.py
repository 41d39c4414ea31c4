"""Local repositories and their tasks (SPEC §9): the control plane's writes behind
``POST /api/v1/repositories``, ``POST/PATCH /api/v1/tasks``, ``bosun repos add`` and ``bosun tasks
add`` (and the dashboard's board).

Everything is checked before anything is written, and each write is one transaction: a path
that is not a usable repository, a name taken, a profile the server does not know, leave no
row behind. A repository is checked on the host that answers the request, which must be the
host the workers run on (docs/local-repositories.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.engine import SessionFactory
from bot.db.models import Repository, Task
from bot.domain.tasks import repository_name
from bot.errors import ConflictError, NotFoundError
from sandboxes.localrepo import LocalRepoError, LocalRepository, inspect_default_branch

LOCAL_OWNER = "local"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
TASK_STATES = ("open", "closed")


class InvalidLocal(ConflictError):
    """A local repository or task that cannot be used as given, because of how things are on
    the host (the folder, its branches, the server's profiles; the API answers 409, as for a
    run whose state refuses an action); the message says why and how to fix it. ``code`` names
    the problem (``sandboxes.localrepo.LocalRepoError.code``, or ``name``, ``profile``,
    ``field``)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def full_name_for(name: str | None, path: Path) -> str:
    """``local/<name>``: the name given (``NAME`` or ``OWNER/NAME``), else the folder's."""
    if not name:
        return f"{LOCAL_OWNER}/{repository_name(path.name)}"
    owner, _, rest = name.rpartition("/")
    owner = owner or LOCAL_OWNER
    if not NAME.match(owner) or not NAME.match(rest) or ".." in name:
        raise InvalidLocal(
            f"{name!r} is not a name: use letters, digits, `.`, `_` and `-` (NAME or OWNER/NAME)",
            code="name",
        )
    return f"{owner}/{rest}"


async def check_repository(path: str, default_branch: str | None) -> tuple[Path, str, bool]:
    """The repository at ``path`` as Bosun will use it: its resolved path, its default
    branch (given, else ``_usual_branch``) and whether it is bare.
    Raises ``InvalidLocal`` with the fix."""
    folder = Path(path)
    if not folder.is_absolute():
        raise InvalidLocal(f"{path!r} is not an absolute path", code="not_found")
    repo = LocalRepository(folder)
    try:
        await repo.open()
        branch = default_branch or await _usual_branch(repo)
        await inspect_default_branch(repo, branch)
    except LocalRepoError as exc:
        raise InvalidLocal(str(exc), code=exc.code) from exc
    return repo.path, branch, repo.bare


async def _usual_branch(repo: LocalRepository) -> str:
    """``main``, ``master`` or ``trunk`` when the repository has one, else the branch its
    ``HEAD`` names (a working copy's checked-out branch may be a feature branch)."""
    for name in ("main", "master", "trunk"):
        if await repo.branch_head(name) is not None:
            return name
    head = await repo.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return head.text.strip() or "main"


async def add_repository(
    sessions: SessionFactory, path: str, *, name: str | None, default_branch: str | None
) -> Repository:
    """Check the repository at ``path`` and record it (``local/<name>``)."""
    folder, branch, _bare = await check_repository(path, default_branch)
    full_name = full_name_for(name, folder)
    try:
        async with sessions.begin() as session:
            taken = (
                await session.execute(
                    select(Repository).where(
                        (func.lower(Repository.full_name) == full_name.lower())
                        | (Repository.local_path == str(folder))
                    )
                )
            ).scalar_one_or_none()
            if taken is not None:
                what = (
                    f"{folder} is already added as {taken.full_name}"
                    if taken.local_path == str(folder)
                    else f"the name {taken.full_name} is taken; pass --name"
                )
                raise ConflictError(what)
            repo = Repository(
                full_name=full_name,
                default_branch=branch,
                private=True,
                local_path=str(folder),
                active=True,
                enabled=True,
            )
            session.add(repo)
            await session.flush()
            return repo
    except IntegrityError as exc:  # a concurrent add of the same name or path
        raise ConflictError(f"{full_name} or {folder} was just added by someone else") from exc


@dataclass(frozen=True)
class TaskFields:
    """What a local task holds, as a caller gives it (``None``: leave as it is)."""

    title: str | None = None
    body: str | None = None
    acceptance: Sequence[str] | None = None
    labels: Sequence[str] | None = None
    priority: int | None = None
    focus: Sequence[str] | None = None
    profile: str | None = None
    state: str | None = None


def _check_fields(fields: TaskFields, profiles: Mapping[str, Any]) -> None:
    if fields.title is not None and not fields.title.strip():
        raise InvalidLocal("a task needs a title", code="field")
    if fields.profile and fields.profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise InvalidLocal(
            f"no profile {fields.profile!r} on this server (profiles: {known}; see "
            "`bosun profiles`)",
            code="profile",
        )
    if fields.state is not None and fields.state not in TASK_STATES:
        raise InvalidLocal(f"state must be one of {', '.join(TASK_STATES)}", code="field")
    for path in fields.focus or ():
        if not path.strip() or "," in path or "\n" in path:
            raise InvalidLocal(f"{path!r} is not a path or glob", code="field")


async def local_repository(session: AsyncSession, full_name: str) -> Repository:
    repo = (
        await session.execute(
            select(Repository).where(func.lower(Repository.full_name) == full_name.lower())
        )
    ).scalar_one_or_none()
    if repo is None:
        raise NotFoundError(f"repository {full_name} is not known to Bosun")
    if not repo.local_path:
        raise InvalidLocal(
            f"{repo.full_name} is a GitHub repository: open an issue there instead",
            code="field",
        )
    return repo


async def add_task(
    sessions: SessionFactory,
    repository: str,
    fields: TaskFields,
    *,
    author: str,
    profiles: Mapping[str, Any],
) -> Task:
    """A new open task of the local repository ``repository``, numbered after its last."""
    _check_fields(fields, profiles)
    if fields.title is None:
        raise InvalidLocal("a task needs a title", code="field")
    for _attempt in range(5):
        try:
            async with sessions.begin() as session:
                repo = await local_repository(session, repository)
                last = (
                    await session.execute(
                        select(func.max(Task.issue_number)).where(Task.repository_id == repo.id)
                    )
                ).scalar_one_or_none()
                task = Task(
                    repository_id=repo.id,
                    issue_number=(last or 0) + 1,
                    title=fields.title.strip(),
                    body=fields.body or "",
                    acceptance=list(fields.acceptance or ()),
                    labels=list(fields.labels or ()),
                    priority=fields.priority or 0,
                    focus=list(fields.focus or ()),
                    profile=fields.profile or None,
                    author=author,
                    state="open",
                )
                session.add(task)
                await session.flush()
                return task
        except IntegrityError:  # another task took the number: take the next
            continue
    raise ConflictError(f"could not number a new task of {repository}; try again")


async def update_task(
    sessions: SessionFactory, task_id: int, fields: TaskFields, *, profiles: Mapping[str, Any]
) -> Task:
    """Change what the caller gave of a local task (the next run reads it)."""
    _check_fields(fields, profiles)
    async with sessions.begin() as session:
        task = await session.get(Task, task_id)
        if task is None:
            raise NotFoundError(f"task {task_id} does not exist")
        repo = await session.get(Repository, task.repository_id)
        if repo is None or not repo.local_path:
            raise InvalidLocal(
                "only local tasks are edited here; an issue is edited on GitHub", code="field"
            )
        for key in ("body", "priority", "state"):
            value = getattr(fields, key)
            if value is not None:
                setattr(task, key, value)
        if fields.title is not None:
            task.title = fields.title.strip()
        for key in ("acceptance", "labels", "focus"):
            value = getattr(fields, key)
            if value is not None:
                setattr(task, key, list(value))
        if fields.profile is not None:
            task.profile = fields.profile or None
        await session.flush()
        return task
