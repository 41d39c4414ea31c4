"""Adding a local repository and a local task from the dashboard: forms over the control
plane's own writes (``bot.control.local``, the code behind ``POST /api/v1/repositories`` and
``POST /api/v1/tasks``), with the API's body models checking the fields first.

Who may: adding a repository is the admin's (the API's ``admin`` scope); adding a task needs
write permission on the repository, as the dashboard reads it (``Access.permission``; the API's
``operate`` scope). A refusal re-renders the form with what was typed and the reason next to
the field it concerns; nothing is written unless everything passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromQuery
from litestar.response import Redirect, Template
from pydantic import ValidationError
from sqlalchemy import select

from bot.control.local import InvalidLocal, TaskFields, add_repository, add_task
from bot.db.models import Repository
from bot.errors import ConflictError, NotFoundError
from bot.github.permissions import at_least
from bot.web.api.resources import LocalRepositoryIn, TaskIn
from bot.web.dashboard.render import flash, page
from bot.web.dashboard.runpage import access_of, services_of, viewer
from bot.web.dashboard.security import csrf_checked

AnyRequest = Request[Any, Any, Any]

REPO_LABELS = {"path": "Path", "name": "Name", "default_branch": "Default branch"}
TASK_LABELS = {
    "repository": "Repository",
    "title": "Title",
    "body": "Description",
    "acceptance": "Acceptance checklist",
    "labels": "Labels",
    "priority": "Priority",
    "focus": "Focus paths",
    "profile": "Profile",
}
PATH_CODES = frozenset({"not_found", "unreadable", "not_a_repository", "git_dir"})
BRANCH_CODES = frozenset({"branch_missing", "dirty"})
HINTS = {
    "path": "give the repository's absolute path on the Bosun host (it starts with /)",
    "name": "use letters, digits, `.`, `_` and `-` (NAME or OWNER/NAME)",
    "default_branch": "is not a branch name",
    "title": "a task needs a title",
    "acceptance": "each line must hold some text",
    "focus": "each path or glob must hold some text and no comma",
    "labels": "each label must hold some text",
}


@dataclass
class FormError:
    """Why a form was refused, and the field it concerns (None: the form as a whole)."""

    message: str
    where: str | None = None
    status: int = 409
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.where and self.where not in self.fields:
            self.fields[self.where] = self.message


def pydantic_error(exc: ValidationError, labels: Mapping[str, str]) -> FormError:
    """The first problem of a body model, said for a person filling in a form."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        kind = error["type"]
        if kind == "string_pattern_mismatch":
            text = HINTS.get(name, "has a character it may not hold")
        elif kind in ("string_too_long", "too_long"):
            text = "is too long" + (
                f" (at most {error['ctx']['max_length']})" if "ctx" in error else ""
            )
        elif kind in ("greater_than_equal", "less_than_equal"):
            text = "must be between -1000 and 1000"
        else:
            text = str(error["msg"])
        problems.setdefault(name, text)
    name, text = next(iter(problems.items()))
    label = labels.get(name, name)
    return FormError(f"{label}: {text}", name or None, 400, problems)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _checklist(text: str) -> list[str]:
    """One criterion per line; a Markdown ``- [ ]`` or ``-`` in front is dropped."""
    out = []
    for line in _lines(text):
        for prefix in ("- [ ]", "- [x]", "* [ ]", "-", "*"):
            if line.startswith(prefix):
                line = line[len(prefix) :].strip()
                break
        if line:
            out.append(line)
    return out


def _split(text: str, separators: str) -> list[str]:
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return [part.strip() for part in text.split(separators[0]) if part.strip()]


async def _form(request: AnyRequest) -> dict[str, str]:
    form = await request.form()
    return {key: str(value) for key, value in form.items() if key != "_csrf"}


async def writable_local_repositories(request: AnyRequest) -> list[str]:
    """The local repositories the viewer may add tasks to (write permission on them)."""
    access = access_of(request)
    async with services_of(request).sessions() as session:
        repos = list(
            (
                await session.execute(
                    select(Repository)
                    .where(Repository.local_path.is_not(None))
                    .order_by(Repository.full_name)
                )
            ).scalars()
        )
    who = viewer(request)
    return [
        repo.full_name for repo in repos if at_least(await access.permission(who, repo), "write")
    ]


def _profiles(request: AnyRequest) -> tuple[list[str], str]:
    settings = request.app.state.settings
    return sorted(settings.agent_profiles()), str(settings.default_profile)


class LocalRepositoryPages(Controller):
    path = "/repositories/add"

    def _render(
        self, request: AnyRequest, values: dict[str, str], error: FormError | None = None
    ) -> Template:
        answer = page(
            request,
            "local_repo_form.html",
            values=values,
            error=error,
            allowed=viewer(request).kind == "admin",
            labels=REPO_LABELS,
        )
        if error is not None:
            answer.status_code = error.status
        elif viewer(request).kind != "admin":
            answer.status_code = 403
        return answer

    @get("/", name="dashboard:add-repository")
    async def show(self, request: AnyRequest) -> Template:
        return self._render(request, {})

    @post("/", guards=[csrf_checked], name="dashboard:add-repository-post")
    async def add(self, request: AnyRequest) -> Template | Redirect:
        values = await _form(request)
        if viewer(request).kind != "admin":
            error = FormError(
                "Adding a repository is for Bosun's admin (the API's admin scope); "
                "sign in with the link `bosun up` prints.",
                status=403,
            )
            return self._render(request, values, error)
        try:
            data = LocalRepositoryIn.model_validate(
                {
                    "path": values.get("path", "").strip(),
                    "name": values.get("name", "").strip() or None,
                    "default_branch": values.get("default_branch", "").strip() or None,
                }
            )
            repo = await add_repository(
                services_of(request).sessions,
                data.path,
                name=data.name,
                default_branch=data.default_branch,
            )
        except ValidationError as exc:
            return self._render(request, values, pydantic_error(exc, REPO_LABELS))
        except InvalidLocal as exc:
            where = (
                "path"
                if exc.code in PATH_CODES
                else "default_branch"
                if exc.code in BRANCH_CODES
                else "name"
                if exc.code == "name"
                else None
            )
            return self._render(request, values, FormError(str(exc), where))
        except ConflictError as exc:
            where = "name" if "name" in str(exc) and "already added" not in str(exc) else "path"
            return self._render(request, values, FormError(str(exc), where))
        flash(
            request,
            "ok",
            f"Added {repo.full_name} ({repo.local_path}, default branch {repo.default_branch}). "
            "Add its first task below.",
        )
        return Redirect(f"/board/tasks/add?repository={repo.full_name}", status_code=303)


class LocalTaskPages(Controller):
    path = "/board/tasks/add"

    async def _render(
        self, request: AnyRequest, values: dict[str, str], error: FormError | None = None
    ) -> Template:
        repos = await writable_local_repositories(request)
        profiles, default = _profiles(request)
        answer = page(
            request,
            "task_form.html",
            values=values,
            error=error,
            repositories=repos,
            profiles=profiles,
            default_profile=default,
            labels=TASK_LABELS,
        )
        if error is not None:
            answer.status_code = error.status
        return answer

    @get("/", name="dashboard:add-task")
    async def show(self, request: AnyRequest, repository: FromQuery[str] = "") -> Template:
        return await self._render(request, {"repository": repository})

    @post("/", guards=[csrf_checked], name="dashboard:add-task-post")
    async def add(self, request: AnyRequest) -> Template | Redirect:
        values = await _form(request)
        name = values.get("repository", "").strip()
        repo = await access_of(request).repository(name) if name else None
        if repo is None:
            return await self._render(
                request,
                values,
                FormError(f"choose a local repository ({name!r} is not one)", "repository", 404),
            )
        permission = await access_of(request).permission(viewer(request), repo)
        if not at_least(permission, "write"):
            error = FormError(
                f"Adding a task to {repo.full_name} needs write permission (you have "
                f"{permission}).",
                "repository",
                403,
            )
            return await self._render(request, values, error)
        priority_text = values.get("priority", "").strip() or "0"
        try:
            priority = int(priority_text)
        except ValueError:
            error = FormError(
                "Priority: must be a whole number between -1000 and 1000", "priority", 400
            )
            return await self._render(request, values, error)
        try:
            data = TaskIn.model_validate(
                {
                    "repository": repo.full_name,
                    "title": values.get("title", "").strip(),
                    "body": values.get("body", ""),
                    "acceptance": _checklist(values.get("acceptance", "")),
                    "labels": _split(values.get("labels", ""), ",\n"),
                    "priority": priority,
                    "focus": _split(values.get("focus", ""), "\n,"),
                    "profile": values.get("profile", "").strip() or None,
                }
            )
            settings = request.app.state.settings
            task = await add_task(
                services_of(request).sessions,
                data.repository,
                TaskFields(
                    title=data.title,
                    body=data.body,
                    acceptance=data.acceptance,
                    labels=data.labels,
                    priority=data.priority,
                    focus=data.focus,
                    profile=data.profile,
                ),
                author=viewer(request).actor,
                profiles=settings.agent_profiles(),
            )
        except ValidationError as exc:
            return await self._render(request, values, pydantic_error(exc, TASK_LABELS))
        except InvalidLocal as exc:
            where = {"profile": "profile", "name": "repository"}.get(exc.code)
            if where is None and "title" in str(exc):
                where = "title"
            elif where is None and "path or glob" in str(exc):
                where = "focus"
            elif where is None and "GitHub repository" in str(exc):
                where = "repository"
            return await self._render(request, values, FormError(str(exc), where))
        except NotFoundError as exc:
            return await self._render(request, values, FormError(str(exc), "repository", 404))
        except ConflictError as exc:
            return await self._render(request, values, FormError(str(exc)))
        flash(
            request,
            "ok",
            f"Added task {repo.full_name}#{task.issue_number}: {task.title}. "
            "Start it from To do when you are ready.",
        )
        return Redirect("/board", status_code=303)


__all__ = ["LocalRepositoryPages", "LocalTaskPages", "writable_local_repositories"]
