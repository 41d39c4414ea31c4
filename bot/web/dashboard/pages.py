"""The fleet page (home), the board, and repositories with profiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromQuery, QueryParameter
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template
from sqlalchemy import select

from bot.control.queries import RunStore, profile_out
from bot.db.models import BoardPosition, Repository, Task
from bot.domain.repoconfig import CONFIG_PATH, RepoConfigError, parse_repo_config
from bot.domain.states import TERMINAL
from bot.github.permissions import at_least
from bot.github.repo import GitHubRepo
from bot.services import Services
from bot.settings import Settings
from bot.web.api.actions import submit_command
from bot.web.api.stream import fleet_frames, hub_of
from bot.web.dashboard.local import writable_local_repositories
from bot.web.dashboard.reads import COLUMN_TITLES, COLUMNS, Filters, board, fleet, note_waits
from bot.web.dashboard.render import flash, fragment, page
from bot.web.dashboard.runpage import access_of, services_of, viewer
from bot.web.dashboard.security import csrf_checked

AnyRequest = Request[Any, Any, Any]
COALESCE_SECONDS = 1.0


def settings_of(request: AnyRequest) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def allowed_repos(request: AnyRequest) -> dict[str, str] | None:
    """The repositories the viewer may read (None: all, for the admin)."""
    who = viewer(request)
    if who.kind == "admin":
        return None
    return await access_of(request).visible(who)


async def wait_texts(services: Services, settings: Settings, run_ids: list[str]) -> dict[str, str]:
    """What admission last said about each queued run (its place in line, or the scope lock it
    waits for), as the status comment shows it."""
    if not run_ids:
        return {}
    keys = [f"{settings.redis.namespace}:capacity:shown:{run_id}" for run_id in run_ids]
    try:
        values = await services.redis.mget(keys)
    except (OSError, ConnectionError):
        return {}
    return {
        run_id: value.decode() if isinstance(value, bytes) else str(value)
        for run_id, value in zip(run_ids, values, strict=True)
        if value
    }


async def coalesced(
    frames: AsyncIterator[tuple[str, str, dict[str, Any]]], interval: float
) -> AsyncIterator[str]:
    """``changed`` at most once per ``interval`` while the fleet stream reports changes (and
    once more after the last of a burst); ``""`` for its keep-alives."""
    iterator = frames.__aiter__()
    upcoming: asyncio.Task[tuple[str, str, dict[str, Any]]] = asyncio.ensure_future(
        iterator.__anext__()
    )
    pending, last = False, 0.0
    try:
        while True:
            timeout = max(0.0, last + interval - time.monotonic()) if pending else None
            done, _ = await asyncio.wait({upcoming}, timeout=timeout)
            if upcoming in done:
                _, kind, _ = upcoming.result()  # StopAsyncIteration ends the stream
                upcoming = asyncio.ensure_future(iterator.__anext__())
                if kind:
                    pending = True
                else:
                    yield ""
            if pending and time.monotonic() - last >= interval:
                pending, last = False, time.monotonic()
                yield "changed"
    finally:
        upcoming.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await upcoming
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            await closer()


async def fleet_filters(
    repository: FromQuery[str] = "",
    profile: FromQuery[str] = "",
    requester: FromQuery[str] = "",
    run_state: Annotated[str, QueryParameter(name="state")] = "",
) -> Filters:
    """The fleet page's filters, from its query string."""
    return Filters(repository, profile, requester, run_state)


class FleetPages(Controller):
    path = "/"
    dependencies = {"filters": Provide(fleet_filters)}

    async def _fleet(self, request: AnyRequest, filters: Filters) -> dict[str, Any]:
        services, settings = services_of(request), settings_of(request)
        allowed = await allowed_repos(request)
        found = await fleet(
            services.sessions, filters, allowed, capacity_cap=settings.worker.max_concurrent_runs
        )
        note_waits(found, await wait_texts(services, settings, [w.run.id for w in found.queue]))
        return {"fleet": found, "filters": filters, "states": STATES}

    @get("/", name="dashboard:fleet")
    async def home(self, request: AnyRequest, filters: NamedDependency[Filters]) -> Template:
        return page(request, "fleet.html", **await self._fleet(request, filters))

    @get("/fleet/body", name="dashboard:fleet-body")
    async def body(self, request: AnyRequest, filters: NamedDependency[Filters]) -> Template:
        return fragment("fleet_body.html", **await self._fleet(request, filters))

    @get("/fleet/live", name="dashboard:fleet-live")
    async def live(self, request: AnyRequest) -> ServerSentEvent:
        allowed = await allowed_repos(request)
        frames = fleet_frames(
            RunStore(services_of(request).sessions),
            hub_of(request),
            None,
            tuple(allowed) if allowed is not None else (),
        )

        async def body() -> AsyncIterator[ServerSentEventMessage]:
            yield ServerSentEventMessage(retry=2000, comment="bosun fleet")
            async for what in coalesced(frames, COALESCE_SECONDS):
                if what:
                    yield ServerSentEventMessage(event=what, data=what)
                else:
                    yield ServerSentEventMessage(comment="keep-alive")

        return ServerSentEvent(body(), headers={"Cache-Control": "no-store"})

    @get("/repositories", name="dashboard:repositories")
    async def repositories(self, request: AnyRequest) -> Template:
        services, settings = services_of(request), settings_of(request)
        allowed = await allowed_repos(request)
        async with services.sessions() as session:
            repos = list(
                (await session.execute(select(Repository).order_by(Repository.full_name))).scalars()
            )
        rows = []
        access = access_of(request)
        for repo in repos:
            if allowed is not None and repo.full_name not in allowed:
                continue
            rows.append(await _repo_status(access, repo))
        profiles = settings.agent_profiles()
        outs = [
            profile_out(name, p, default=name == settings.default_profile)
            for name, p in sorted(profiles.items())
        ]
        return page(
            request,
            "repositories.html",
            repos=rows,
            profiles=outs,
            profile_configs=profiles,
            config_path=CONFIG_PATH,
        )


STATES = [
    "queued",
    "preparing",
    "running",
    "gates",
    "review_ready",
    "approved",
    *sorted(s.value for s in TERMINAL),
]


async def _repo_status(access: Any, repo: Repository) -> dict[str, Any]:
    """The repository's ``.github/bosun.yml`` as Bosun reads it: valid (and its effective
    limits), or the error and what to fix."""
    row: dict[str, Any] = {"repo": repo, "config": None, "error": None, "missing": False}
    if repo.local_path or repo.installation_id is None:
        row["error"] = None if repo.local_path else "the App is not installed on it"
        return row
    try:
        port = GitHubRepo(access.github_app(), repo.installation_id, repo.full_name)
        text = await port.file_text(CONFIG_PATH, repo.default_branch)
    except Exception as exc:  # noqa: BLE001 -- shown on the page, never a 500
        row["error"] = f"could not read it from GitHub: {type(exc).__name__}"
        return row
    row["missing"] = text is None
    try:
        row["config"] = parse_repo_config(text)
    except RepoConfigError as exc:
        row["error"] = str(exc)
    return row


class BoardPages(Controller):
    path = "/board"

    @get("/", name="dashboard:board")
    async def show(
        self, request: AnyRequest, q: FromQuery[str] = "", repository: FromQuery[str] = ""
    ) -> Template:
        services, settings = services_of(request), settings_of(request)
        allowed = await allowed_repos(request)
        async with services.sessions() as session:
            positions = {
                p.task_id: p.position
                for p in (await session.execute(select(BoardPosition))).scalars()
            }
        columns = await board(
            services.sessions, allowed, positions, search=q.strip(), repository=repository
        )
        repos = sorted(allowed) if allowed is not None else None
        startable = (
            {name: at_least(held, "write") for name, held in allowed.items()}
            if allowed is not None
            else None
        )
        return page(
            request,
            "board.html",
            columns=[(c, COLUMN_TITLES[c], columns[c]) for c in COLUMNS],
            profiles=sorted(settings.agent_profiles()),
            default_profile=settings.default_profile,
            q=q,
            repository=repository,
            repositories=repos,
            permissions=allowed,
            startable=startable,
            can_add_task=bool(await writable_local_repositories(request)),
        )

    @post("/order", guards=[csrf_checked], name="dashboard:board-order")
    async def order(self, request: AnyRequest) -> dict[str, Any]:
        """``{"tasks": [id, …]}``: the new order of one column, top to bottom."""
        try:
            body = json.loads(await request.body())
            ids = [int(t) for t in body["tasks"]][:1000]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationException('send {"tasks": [task ids, top to bottom]}') from exc
        allowed = await allowed_repos(request)
        services = services_of(request)
        async with services.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(Task.id, Repository.full_name)
                    .join(Repository, Repository.id == Task.repository_id)
                    .where(Task.id.in_(ids))
                )
            ).all()
            known = {task_id: repo for task_id, repo in rows}
            for index, task_id in enumerate(ids):
                repo = known.get(task_id)
                if repo is None or (allowed is not None and repo not in allowed):
                    continue
                found = await session.get(BoardPosition, task_id)
                if found is None:
                    session.add(
                        BoardPosition(
                            task_id=task_id, position=float(index), updated_by=viewer(request).login
                        )
                    )
                else:
                    found.position = float(index)
                    found.updated_by = viewer(request).login
        return {"saved": len(ids)}

    @post("/start", guards=[csrf_checked], name="dashboard:board-start")
    async def start(self, request: AnyRequest) -> Redirect:
        """Start a run on a task (a card dragged to Running, or its Start button)."""
        form = await request.form()
        try:
            task_id = int(str(form.get("task_id", "")))
        except ValueError as exc:
            raise ValidationException("which task?") from exc
        profile = str(form.get("profile") or "")
        services = services_of(request)
        async with services.sessions() as session:
            row = (
                await session.execute(
                    select(Task, Repository)
                    .join(Repository, Repository.id == Task.repository_id)
                    .where(Task.id == task_id)
                )
            ).first()
        if row is None:
            raise NotFoundException(f"task {task_id} does not exist")
        task, repo = row
        access = access_of(request)
        permission = await access.permission(viewer(request), repo)
        if not at_least(permission, "write"):
            flash(
                request, "error", f"Starting a run needs write permission (you have {permission})."
            )
            return Redirect("/board", status_code=303)
        if task.issue_number is None:
            flash(request, "error", "This task has no issue to start a run from.")
            return Redirect("/board", status_code=303)
        asked = {
            "repository": repo.full_name,
            "issue_number": task.issue_number,
            "profile": profile or None,
            "instructions": str(form.get("instructions") or ""),
        }
        decided = await submit_command(
            services,
            "start",
            json.dumps(asked),
            run_id=None,
            actor=viewer(request).actor,
            permission=permission,
            source="dashboard",
            wait=10.0,
        )
        if decided.outcome == "accepted" and decided.new_run_id:
            flash(
                request,
                "ok",
                f"Started run {decided.new_run_id} on {repo.full_name}#{task.issue_number}.",
            )
        elif decided.outcome is None:
            flash(request, "ok", "Start sent; the worker has not decided yet.")
        else:
            flash(request, "error", f"Not started: {decided.reason or decided.outcome}")
        return Redirect("/board", status_code=303)


__all__ = ["BoardPages", "FleetPages", "coalesced"]
