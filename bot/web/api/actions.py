"""``POST /api/v1/runs/{id}/<action>``: cancel, retry, approve, reject, hold, unhold, budget,
resume — decided by the worker exactly as the comment command they mirror
(``bot.control.actions``, ``jobs.api_commands``), audited with the source ``api`` (or ``cli``,
``dashboard``: the ``X-Bosun-Client`` header). The answer waits for the decision (``wait``
seconds, 10 by default): ``200`` accepted, a ``409`` problem when the run's state refuses it, or
``202`` with ``pending`` when the worker has not decided yet (follow the run's audit).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, Response, post
from litestar.exceptions import ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import Field
from sqlalchemy import select

from bot.control.actions import API_COMMAND_JOB, CLIENT_SOURCES, command_job_id, parse_action
from bot.control.views import ActionOut
from bot.db.models import CommandAudit, ControlCommand, Run
from bot.errors import ConflictError
from bot.web.api.auth import AnyRequest, caller_of, require_repo
from bot.web.api.resources import Body, services_of, store

Wait = Annotated[
    float, QueryParameter(ge=0, le=30, description="Seconds to wait for the worker's decision.")
]
PERMISSION_OF_SCOPE = {"operate": "write", "admin": "admin"}


class RetryIn(Body):
    feedback: str = Field(default="", max_length=60_000, description="For the next run.")


class ApproveIn(Body):
    sha: str | None = Field(default=None, description="The head SHA you reviewed.")
    paths: list[str] = Field(default_factory=list, description="Approve only these paths.")


class RejectIn(Body):
    reason: str = Field(default="", max_length=60_000)


class BudgetIn(Body):
    add_usd: float = Field(gt=0, le=100_000, description="Dollars to add to the budget.")


class EmptyIn(Body):
    pass


class RunActionController(Controller):
    path = "/api/v1/runs/{run_id:str}"
    tags = ["runs"]
    opt = {"scope": "operate"}

    @post("/cancel", summary="Cancel a run before it is review-ready (like /cancel)")
    async def cancel(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "cancel", "", wait)

    @post("/retry", summary="Run the agent again with feedback (like /retry)")
    async def retry(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[RetryIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "retry", data.feedback, wait)

    @post("/approve", summary="Approve the run's head, or only some paths (like /approve)")
    async def approve(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[ApproveIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        args = " ".join([*([data.sha] if data.sha else []), *data.paths])
        return await act(request, run_id, "approve", args, wait)

    @post("/reject", summary="Reject the change; the run ends (like /reject)")
    async def reject(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[RejectIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "reject", data.reason, wait)

    @post("/hold", summary="Hold the run: no start, no merge (like /hold)")
    async def hold(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "hold", "", wait)

    @post("/unhold", summary="Lift a hold (like /unhold)")
    async def unhold(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "unhold", "", wait)

    @post("/budget", summary="Raise the run's budget (like /budget +N)")
    async def budget(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[BudgetIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "budget", f"+{data.add_usd:g}", wait)

    @post("/resume", summary="Continue a timed-out run from its branch (like /resume)")
    async def resume(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "resume", "", wait)


async def act(
    request: AnyRequest, run_id: str, verb: str, args: str, wait: float
) -> Response[ActionOut]:
    caller = caller_of(request)
    runs = store(request)
    require_repo(caller, await runs.repository_of(run_id))
    source = CLIENT_SOURCES.get(request.headers.get("x-bosun-client", "").lower(), "api")
    command = parse_action(verb, args, source)
    if isinstance(command, str):
        raise ValidationException(command, extra=[{"key": verb, "message": command}])
    command_id = f"{source}-{uuid.uuid4().hex}"
    requested = datetime.now(UTC)
    services = services_of(request)
    async with services.sessions.begin() as session:
        session.add(
            ControlCommand(
                id=command_id,
                run_id=run_id,
                verb=verb,
                args=args,
                actor=caller.actor,
                permission=PERMISSION_OF_SCOPE.get(caller.scope, "read"),
                source=source,
                requested_at=requested,
            )
        )
    await services.redis.enqueue_job(
        API_COMMAND_JOB, command_id, _job_id=command_job_id(command_id)
    )
    audit = await _decision(request, command_id, wait)
    if audit is None:
        pending = ActionOut(run_id=run_id, command=verb, outcome="pending")
        return Response(pending, status_code=202)
    if audit.outcome != "accepted":
        raise ConflictError(audit.reason or f"/{verb} was {audit.outcome}")
    follow_up = None
    if verb in ("retry", "resume"):
        follow_up = await _follow_up(request, run_id, requested)
    out = ActionOut(
        run_id=run_id,
        command=verb,
        outcome="accepted",
        reason=audit.reason,
        new_run_id=follow_up,
        run=await runs.run_summary(run_id),
    )
    return Response(out, status_code=200)


async def _decision(request: AnyRequest, command_id: str, wait: float) -> CommandAudit | None:
    """The audit row of ``command_id`` once the worker has written it (polled)."""
    deadline = time.monotonic() + wait
    sessions = services_of(request).sessions
    while True:
        async with sessions() as session:
            row = (
                await session.execute(
                    select(CommandAudit).where(CommandAudit.delivery_id == command_id).limit(1)
                )
            ).scalar_one_or_none()
        if row is not None or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(0.1)


async def _follow_up(request: AnyRequest, run_id: str, since: datetime) -> str | None:
    async with services_of(request).sessions() as session:
        found = await session.execute(
            select(Run.id)
            .where(Run.parent_run_id == run_id, Run.created_at >= since)
            .order_by(Run.id.desc())
            .limit(1)
        )
        return found.scalar_one_or_none()


__all__ = ["RunActionController", "act"]
