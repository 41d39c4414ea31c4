"""``/api/v1``: repositories (GitHub's, and local ones added here), profiles, tasks (issues, and
local tasks created here), the command audit and API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody, Parameter, QueryParameter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from sqlalchemy import func, select

from bot.control.local import TaskFields, add_repository, add_task, update_task
from bot.control.queries import RunStore, profile_out, repository_out
from bot.control.tokens import (
    DURATION_PATTERN,
    NAME_PATTERN,
    REPO_PATTERN,
    Scope,
    create_token,
    list_tokens,
    parse_duration,
    revoke_token,
    token_out,
)
from bot.control.views import AuditOut, NewToken, Page, ProfileOut, RepositoryOut, TaskOut, TokenOut
from bot.db.models import Repository
from bot.errors import NotFoundError
from bot.services import Services
from bot.settings import Settings
from bot.web.api.auth import AnyRequest, caller_of, require_repo
from bot.web.api.problems import problem_responses

Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page.")]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Items per page (at most 200).")]
OwnerName = Annotated[str, StringConstraints(pattern=REPO_PATTERN)]
LOCAL_NAME = r"^([A-Za-z0-9_.-]{1,100}/)?[A-Za-z0-9_.-]{1,100}$"
BRANCH = r"^[^\x00-\x20\x7f~^:?*\[\\]+$"
MAX_ID = 2**31 - 1
"""The largest id, issue or sequence number the database holds (a 32-bit integer column)."""


def _integral(value: object) -> object:
    """JSON does not tell ``12.0`` from ``12`` (nor does JSON Schema's ``integer``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]
"""An integer in a strictly validated body: ``12`` or ``12.0``, not ``"12"`` or ``true``."""


class Body(BaseModel):
    """A request body: exactly the documented fields, each of the documented JSON type (no
    `"enabled": 1` for `true`, no `"5"` for `5`; the app validates bodies strictly too,
    ``bot.web.api.api_plugins``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def store(request: AnyRequest) -> RunStore:
    services: Services = request.app.state.services
    return RunStore(services.sessions)


def services_of(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


class RepositoryPatch(Body):
    enabled: bool = Field(description="Whether Bosun may start runs on the repository.")


class LocalRepositoryIn(Body):
    path: Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$", max_length=4096)] = Field(
        description="The repository's absolute path on the Bosun host (a working copy's top "
        "folder, or a bare repository)."
    )
    name: Annotated[str, StringConstraints(pattern=LOCAL_NAME)] | None = Field(
        default=None,
        description="NAME or OWNER/NAME (letters, digits, `._-`); default: `local/<folder name>`.",
        json_schema_extra={"oneOf": [{"type": "string", "pattern": LOCAL_NAME}, {"type": "null"}]},
    )
    default_branch: Annotated[str, StringConstraints(pattern=BRANCH, max_length=255)] | None = (
        Field(
            default=None,
            description="The branch approvals merge into; default: `main`, `master` or `trunk`, "
            "else the branch HEAD names.",
            json_schema_extra={
                "oneOf": [{"type": "string", "pattern": BRANCH, "maxLength": 255}, {"type": "null"}]
            },
        )
    )


TEXT = r"^[^\x00]*$"
SHORT = r"^[^\x00]*\S[^\x00]*$"
GLOB = r"^[^,\r\n\x00]*[^\s,\x00][^,\r\n\x00]*$"
LABEL = r"^[^\x00\r\n]+$"
Text = Annotated[str, StringConstraints(pattern=TEXT, max_length=60_000)]
Short = Annotated[str, StringConstraints(pattern=SHORT, max_length=500)]
Glob = Annotated[str, StringConstraints(pattern=GLOB, max_length=500)]
Label = Annotated[str, StringConstraints(pattern=LABEL, max_length=100)]
ProfileName = Annotated[str, StringConstraints(pattern=TEXT, max_length=128)]


def _string(pattern: str, max_length: int) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern, "maxLength": max_length}


def _items(pattern: str, max_length: int) -> dict[str, Any]:
    """Litestar drops the constraints of list items and optional fields from the document:
    they are written out here."""
    return {"items": _string(pattern, max_length), "maxItems": 50}


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


class TaskIn(Body):
    repository: OwnerName = Field(description="The local repository, OWNER/NAME.")
    title: Short
    body: Text = ""
    acceptance: list[Short] = Field(
        default_factory=list,
        max_length=50,
        description="Acceptance criteria, one per item.",
        json_schema_extra=_items(SHORT, 500),
    )
    labels: list[Label] = Field(
        default_factory=list, max_length=50, json_schema_extra=_items(LABEL, 100)
    )
    priority: JsonInt = Field(default=0, ge=-1000, le=1000, description="Higher first.")
    focus: list[Glob] = Field(
        default_factory=list,
        max_length=50,
        description="Paths or globs the run works on (runs with overlapping focus wait).",
        json_schema_extra=_items(GLOB, 500),
    )
    profile: ProfileName | None = Field(
        default=None,
        description="The profile its runs use unless a start names another.",
        json_schema_extra=_optional(_string(TEXT, 128)),
    )


class TaskPatch(Body):
    title: Short | None = Field(default=None, json_schema_extra=_optional(_string(SHORT, 500)))
    body: Text | None = Field(default=None, json_schema_extra=_optional(_string(TEXT, 60_000)))
    acceptance: list[Short] | None = Field(
        default=None,
        max_length=50,
        json_schema_extra=_optional({"type": "array", **_items(SHORT, 500)}),
    )
    labels: list[Label] | None = Field(
        default=None,
        max_length=50,
        json_schema_extra=_optional({"type": "array", **_items(LABEL, 100)}),
    )
    priority: JsonInt | None = Field(default=None, ge=-1000, le=1000)
    focus: list[Glob] | None = Field(
        default=None,
        max_length=50,
        json_schema_extra=_optional({"type": "array", **_items(GLOB, 500)}),
    )
    profile: ProfileName | None = Field(
        default=None,
        description='`""` clears it.',
        json_schema_extra=_optional(_string(TEXT, 128)),
    )
    state: Literal["open", "closed"] | None = None


class RepositoryController(Controller):
    path = "/api/v1/repositories"
    tags = ["repositories"]

    @get("/", summary="List repositories", responses=problem_responses(400, 401))
    async def list_repositories(
        self, request: AnyRequest, cursor: Cursor = None, limit: Limit = 50
    ) -> Page[RepositoryOut]:
        page = await store(request).repositories(cursor=cursor, limit=limit)
        caller = caller_of(request)
        items = [r for r in page.items if caller.may_act_on(r.full_name)]
        return Page[RepositoryOut](items=items, next_cursor=page.next_cursor)

    @post(
        "/",
        summary="Add a local repository (a git repository on the Bosun host)",
        opt={"scope": "admin"},
        responses=problem_responses(400, 401, 403, 409, 413),
    )
    async def add_local_repository(
        self, request: AnyRequest, data: JSONBody[LocalRepositoryIn]
    ) -> RepositoryOut:
        repo = await add_repository(
            services_of(request).sessions,
            data.path,
            name=data.name or None,
            default_branch=data.default_branch or None,
        )
        return repository_out(repo)

    @get(
        "/{owner:str}/{name:str}",
        summary="Get a repository",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def get_repository(
        self, request: AnyRequest, owner: FromPath[str], name: FromPath[str]
    ) -> RepositoryOut:
        require_repo(caller_of(request), f"{owner}/{name}")
        return repository_out(await store(request).repository(f"{owner}/{name}"))

    @patch(
        "/{owner:str}/{name:str}",
        summary="Enable or disable a repository",
        opt={"scope": "admin"},
        responses=problem_responses(400, 401, 403, 404, 413),
    )
    async def patch_repository(
        self,
        request: AnyRequest,
        owner: FromPath[str],
        name: FromPath[str],
        data: JSONBody[RepositoryPatch],
    ) -> RepositoryOut:
        require_repo(caller_of(request), f"{owner}/{name}")
        async with services_of(request).sessions.begin() as session:
            repo = (
                await session.execute(
                    select(Repository).where(
                        func.lower(Repository.full_name) == f"{owner}/{name}".lower()
                    )
                )
            ).scalar_one_or_none()
            if repo is None:
                raise NotFoundError(f"repository {owner}/{name} is not known to Bosun")
            repo.enabled = data.enabled
            await session.flush()
            return repository_out(repo)


class ProfileController(Controller):
    path = "/api/v1/profiles"
    tags = ["profiles"]

    @get(
        "/",
        summary="List agent profiles with their runners' capabilities",
        responses=problem_responses(401),
    )
    async def list_profiles(self, request: AnyRequest) -> list[ProfileOut]:
        settings: Settings = request.app.state.settings
        default = settings.default_profile
        return [
            profile_out(name, profile, default=name == default)
            for name, profile in sorted(settings.agent_profiles().items())
        ]


class TaskController(Controller):
    path = "/api/v1/tasks"
    tags = ["tasks"]

    @get(
        "/",
        summary="List tasks (issues Bosun worked on, and local tasks)",
        responses=problem_responses(400, 401),
    )
    async def list_tasks(
        self,
        request: AnyRequest,
        repo: Annotated[str | None, QueryParameter(description="OWNER/NAME")] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> Page[TaskOut]:
        caller = caller_of(request)
        return await store(request).tasks(
            repository=repo, allowed_repos=caller.repos, cursor=cursor, limit=limit
        )

    @get(
        "/{task_id:int}",
        summary="Get a task with its last run",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def get_task(
        self, request: AnyRequest, task_id: Annotated[int, Parameter(ge=1, le=MAX_ID)]
    ) -> TaskOut:
        task = await store(request).task(task_id)
        require_repo(caller_of(request), task.repository)
        return task

    @post(
        "/",
        summary="Create a local task",
        opt={"scope": "operate"},
        responses=problem_responses(400, 401, 403, 404, 409, 413),
    )
    async def create_task(self, request: AnyRequest, data: JSONBody[TaskIn]) -> TaskOut:
        caller = caller_of(request)
        require_repo(caller, data.repository)
        settings: Settings = request.app.state.settings
        fields = TaskFields(
            title=data.title,
            body=data.body,
            acceptance=data.acceptance,
            labels=data.labels,
            priority=data.priority,
            focus=data.focus,
            profile=data.profile or None,
        )
        task = await add_task(
            services_of(request).sessions,
            data.repository,
            fields,
            author=f"token:{caller.name}",
            profiles=settings.agent_profiles(),
        )
        return await store(request).task(task.id)

    @patch(
        "/{task_id:int}",
        summary="Change a local task",
        opt={"scope": "operate"},
        responses=problem_responses(400, 401, 403, 404, 409, 413),
    )
    async def patch_task(
        self,
        request: AnyRequest,
        task_id: Annotated[int, Parameter(ge=1, le=MAX_ID)],
        data: JSONBody[TaskPatch],
    ) -> TaskOut:
        current = await store(request).task(task_id)
        require_repo(caller_of(request), current.repository)
        settings: Settings = request.app.state.settings
        fields = TaskFields(**data.model_dump(exclude_unset=True))
        await update_task(
            services_of(request).sessions, task_id, fields, profiles=settings.agent_profiles()
        )
        return await store(request).task(task_id)


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get(
        "/",
        summary="The command audit: every command, accepted or refused, newest first",
        responses=problem_responses(400, 401),
    )
    async def list_audit(
        self,
        request: AnyRequest,
        repo: Annotated[str | None, QueryParameter(description="OWNER/NAME")] = None,
        run: Annotated[str | None, QueryParameter(description="A run id")] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> Page[AuditOut]:
        caller = caller_of(request)
        return await store(request).audit(
            run_id=run, repository=repo, allowed_repos=caller.repos, cursor=cursor, limit=limit
        )


class TokenIn(Body):
    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)] = Field(
        description="A unique name (letters, digits, `._@-`, at most 64); audit rows record "
        "`token:<name>`."
    )
    scope: Scope = Field(default="read")
    repos: list[OwnerName] = Field(
        default_factory=list,
        description="OWNER/NAME; empty: all.",
        # Litestar drops the constraints of list items and optional fields from the document.
        json_schema_extra={"items": {"type": "string", "pattern": REPO_PATTERN}},
    )
    expires_in: Annotated[str, StringConstraints(pattern=DURATION_PATTERN)] | None = Field(
        default=None,
        description="Hours, days or weeks, at most 99999: `12h`, `30d`, `2w` (null: never).",
        json_schema_extra={
            "oneOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "null"}]
        },
    )


class TokenController(Controller):
    path = "/api/v1/tokens"
    tags = ["tokens"]
    opt = {"scope": "admin"}

    @get(
        "/", summary="List API tokens (never their secrets)", responses=problem_responses(401, 403)
    )
    async def list_api_tokens(self, request: AnyRequest) -> list[TokenOut]:
        async with services_of(request).sessions() as session:
            return [token_out(row) for row in await list_tokens(session)]

    @post(
        "/",
        summary="Create an API token (its secret is in this answer only)",
        responses=problem_responses(400, 401, 403, 409, 413),
    )
    async def create_api_token(self, request: AnyRequest, data: JSONBody[TokenIn]) -> NewToken:
        expires: timedelta | None = parse_duration(data.expires_in) if data.expires_in else None
        async with services_of(request).sessions.begin() as session:
            secret, row = await create_token(
                session, data.name, data.scope, tuple(data.repos), expires
            )
            return NewToken(**token_out(row).model_dump(), token=secret)

    @delete(
        "/{name:str}",
        summary="Revoke an API token",
        status_code=200,
        responses=problem_responses(400, 401, 403, 404),
    )
    async def revoke_api_token(self, request: AnyRequest, name: FromPath[str]) -> TokenOut:
        async with services_of(request).sessions.begin() as session:
            return token_out(await revoke_token(session, name))
