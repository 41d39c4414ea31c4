"""``/api/v1/runs``: list, read, follow (events), artifacts, diff, approvals and audit of runs.
Actions on runs are in ``bot.web.api.actions``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from pydantic import Field

from bot.control.views import (
    ActionOut,
    ApprovalOut,
    ArtifactOut,
    AuditOut,
    DiffOut,
    EventOut,
    Page,
    RunDetail,
    RunSummary,
)
from bot.db.artifacts import artifact_chunks
from bot.domain.states import RunState
from bot.errors import ConflictError
from bot.web.api.actions import submit
from bot.web.api.auth import AnyRequest, caller_of, require_repo
from bot.web.api.problems import problem_responses
from bot.web.api.resources import (
    MAX_ID,
    Body,
    Cursor,
    JsonInt,
    Limit,
    OwnerName,
    services_of,
    store,
)

RunStates = Annotated[
    list[RunState] | None,
    QueryParameter(
        name="state",
        description="Only runs in these states (repeat the parameter for several).",
    ),
]


ONE_RUN = problem_responses(400, 401, 403, 404)
"""What a route on one run may answer besides success: the run is missing or not the token's."""


Since = Annotated[
    str | None,
    QueryParameter(
        description="Created at or after this moment (RFC 3339: `2026-05-01T12:00:00Z`; "
        "without an offset, UTC).",
        schema_extra={"format": "date-time"},
    ),
]
_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?$")


def moment(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 timestamp from a query parameter (a 400 naming ``name`` otherwise)."""
    if value is None:
        return None
    try:
        if _MOMENT.match(value):
            parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        pass
    message = f"{value!r} is not an RFC 3339 date-time like 2026-05-01T12:00:00Z"
    raise ValidationException(message, extra=[{"key": name, "message": message}])


class ArtifactStream(Stream):
    """An artifact's bytes with the artifact's own content type: Litestar's ``Stream`` would
    take the route's ``media_type`` instead (``*/*``, which is what the document says)."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": self.media_type})


class EventPage(Page[EventOut]):
    """Events after ``after_seq``, oldest first; ask again with ``after_seq=next_after_seq``."""

    next_after_seq: int


class StartIn(Body):
    repository: OwnerName = Field(description="OWNER/NAME")
    issue_number: JsonInt = Field(gt=0, le=MAX_ID, description="The issue the agent works on.")
    profile: str | None = Field(default=None, description="Agent profile (the default if null).")
    instructions: str = Field(default="", max_length=20_000, description="Added to the prompt.")


class RunController(Controller):
    path = "/api/v1/runs"
    tags = ["runs"]

    async def _visible(self, request: AnyRequest, run_id: str) -> None:
        require_repo(caller_of(request), await store(request).repository_of(run_id))

    @get("/", summary="List runs, newest first", responses=problem_responses(400, 401))
    async def list_runs(
        self,
        request: AnyRequest,
        states: RunStates = None,
        repo: Annotated[str | None, QueryParameter(description="OWNER/NAME")] = None,
        requester: Annotated[str | None, QueryParameter(description="GitHub login")] = None,
        since: Since = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> Page[RunSummary]:
        caller = caller_of(request)
        return await store(request).list_runs(
            states=[s.value for s in states or []],
            repository=repo,
            requester=requester,
            since=moment("since", since),
            allowed_repos=caller.repos,
            cursor=cursor,
            limit=limit,
        )

    @post(
        "/",
        summary="Start a run on an issue, decided by the rules a label meets",
        opt={"scope": "operate"},
        status_code=201,
        responses={
            201: ResponseSpec(
                RunSummary, description="Started: the new run", generate_examples=False
            ),
            202: ResponseSpec(
                ActionOut,
                description="Not decided within `wait` seconds (`outcome: pending`); follow the "
                "audit",
                generate_examples=False,
            ),
            **problem_responses(400, 401, 403, 409, 413),
        },
    )
    async def start_run(
        self,
        request: AnyRequest,
        data: JSONBody[StartIn],
        wait: Annotated[float, QueryParameter(ge=0, le=30)] = 10,
    ) -> Response[RunSummary | ActionOut]:
        require_repo(caller_of(request), data.repository)
        runs = store(request)
        asked = {
            "repository": data.repository,
            "issue_number": data.issue_number,
            "profile": data.profile,
            "instructions": data.instructions,
        }
        decided = await submit(request, "start", json.dumps(asked), run_id=None, wait=wait)
        if decided.outcome is None:
            pending = ActionOut(run_id="", command="start", outcome="pending")
            return Response(pending, status_code=202)
        if decided.outcome != "accepted" or decided.new_run_id is None:
            raise ConflictError(decided.reason or "the run was not started")
        return Response(await runs.run_summary(decided.new_run_id), status_code=201)

    @get(
        "/{run_id:str}",
        summary="Get a run: state, lineage, gates, approvals, artifacts",
        responses=ONE_RUN,
    )
    async def get_run(self, request: AnyRequest, run_id: FromPath[str]) -> RunDetail:
        await self._visible(request, run_id)
        return await store(request).get_run(run_id)

    @get(
        "/{run_id:str}/events",
        summary="A run's events after a sequence number",
        responses=ONE_RUN,
    )
    async def list_events(
        self,
        request: AnyRequest,
        run_id: FromPath[str],
        after_seq: Annotated[
            int, QueryParameter(ge=0, le=MAX_ID, description="Return events after this")
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 200,
        kind: Annotated[
            tuple[str, ...], QueryParameter(description="Only these kinds (repeat it for several).")
        ] = (),
    ) -> EventPage:
        await self._visible(request, run_id)
        events = await store(request).events(run_id, after_seq=after_seq, limit=limit, kinds=kind)
        last = events[-1].seq if events else after_seq
        return EventPage(items=events, next_after_seq=last)

    @get("/{run_id:str}/artifacts", summary="A run's artifacts", responses=ONE_RUN)
    async def list_artifacts(self, request: AnyRequest, run_id: FromPath[str]) -> list[ArtifactOut]:
        await self._visible(request, run_id)
        return await store(request).artifacts(run_id)

    @get(
        "/{run_id:str}/artifacts/{name:str}",
        summary="An artifact's content, streamed with its content type",
        description="The bytes as stored, with the artifact's own content type (`text/plain`, "
        "`text/x-diff`, `application/json`, …), its size and its SHA-256.",
        media_type="*/*",
        response_description="The artifact's content",
        response_headers=[
            ResponseHeader(
                name="X-Content-SHA256",
                value="",
                documentation_only=True,
                required=True,
                description="SHA-256 of the content, hex (as in the artifact list).",
            ),
        ],
        responses=ONE_RUN,
    )
    async def get_artifact(
        self, request: AnyRequest, run_id: FromPath[str], name: FromPath[str]
    ) -> Stream:
        await self._visible(request, run_id)
        artifact = await store(request).artifact(run_id, name)
        chunks = artifact_chunks(services_of(request).sessions, artifact)
        first = await anext(chunks, b"")  # an unreadable artifact fails here, as a 404

        async def body() -> Any:
            if first:
                yield first
            async for piece in chunks:
                yield piece

        return ArtifactStream(
            body(),
            media_type=artifact.content_type,
            headers={"Content-Length": str(artifact.size), "X-Content-SHA256": artifact.sha256},
        )

    @get(
        "/{run_id:str}/diff",
        summary="The run's diff: per-file stats and the unified diff",
        responses=ONE_RUN,
    )
    async def get_diff(
        self,
        request: AnyRequest,
        run_id: FromPath[str],
        max_bytes: Annotated[int, QueryParameter(ge=0, le=50_000_000)] = 2_000_000,
    ) -> DiffOut:
        await self._visible(request, run_id)
        return await store(request).diff(run_id, max_bytes=max_bytes)

    @get(
        "/{run_id:str}/approvals",
        summary="Approvals of a run, with the SHA each is bound to",
        responses=ONE_RUN,
    )
    async def list_approvals(self, request: AnyRequest, run_id: FromPath[str]) -> list[ApprovalOut]:
        await self._visible(request, run_id)
        return await store(request).approvals(run_id)

    @get("/{run_id:str}/audit", summary="Commands on a run, accepted or refused", responses=ONE_RUN)
    async def list_run_audit(
        self, request: AnyRequest, run_id: FromPath[str], cursor: Cursor = None, limit: Limit = 50
    ) -> Page[AuditOut]:
        await self._visible(request, run_id)
        return await store(request).audit(run_id=run_id, cursor=cursor, limit=limit)
