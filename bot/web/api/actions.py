"""``POST /api/v1/runs/{id}/<action>``: cancel, retry, approve, reject, hold, unhold, budget,
resume, steer — decided by the worker exactly as the comment command they mirror
(``bot.control.actions``, ``jobs.deliveries.commands``), audited with the source ``api`` (or
``cli``, ``dashboard``: the ``X-Bosun-Client`` header). The answer waits for the decision (``wait``
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
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import Field

from bot.control.actions import (
    CLIENT_SOURCES,
    ClientSource,
    parse_action,
)
from bot.control.views import ActionOut
from bot.db.models import ControlCommand
from bot.domain.steering import MAX_STEER_CHARS
from bot.errors import ConflictError
from bot.jobids import API_COMMAND, command_job_id
from bot.services import Services
from bot.web.api.auth import AnyRequest, caller_of, require_repo
from bot.web.api.problems import problem_responses
from bot.web.api.resources import Body, services_of, store

Wait = Annotated[
    float, QueryParameter(ge=0, le=30, description="Seconds to wait for the worker's decision.")
]
PERMISSION_OF_SCOPE = {"operate": "write", "admin": "admin"}
ACTION_RESPONSES = {
    200: ResponseSpec(
        ActionOut,
        description="Accepted (`outcome: accepted`), with the run as it is now",
        generate_examples=False,
    ),
    202: ResponseSpec(
        ActionOut,
        description="Not decided within `wait` seconds (`outcome: pending`); follow the run's "
        "audit",
        generate_examples=False,
    ),
    **problem_responses(400, 401, 403, 404, 409, 413),
}
"""An action's answers: the 409 problem is a refusal by the run's state, its `detail` the
reason the comment command would have been given."""


def action(path: str, summary: str) -> post:
    """``POST /api/v1/runs/{run_id}/<path>``: needs an operate token, answers 200, 202 or a
    problem."""
    return post(path, summary=summary, status_code=200, responses=ACTION_RESPONSES)


class RetryIn(Body):
    feedback: str = Field(default="", max_length=60_000, description="For the next run.")


class ApproveIn(Body):
    sha: str | None = Field(default=None, description="The head SHA you reviewed.")
    paths: list[str] = Field(default_factory=list, description="Approve only these paths.")


class RejectIn(Body):
    reason: str = Field(default="", max_length=60_000)


class BudgetIn(Body):
    add_usd: float = Field(
        ge=0.01, le=100_000, description="Dollars to add to the budget (rounded to the cent)."
    )


class SteerIn(Body):
    message: str = Field(
        min_length=1,
        max_length=MAX_STEER_CHARS,
        description="For the running agent: it reads it at its next model request (a queued "
        "run gets it in its prompt). Hidden content (HTML comments, invisible characters) is "
        "removed first.",
    )


class EmptyIn(Body):
    pass


class RunActionController(Controller):
    path = "/api/v1/runs/{run_id:str}"
    tags = ["runs"]
    opt = {"scope": "operate"}

    @action("/cancel", "Cancel a run before it is review-ready (like /cancel)")
    async def cancel(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "cancel", "", wait)

    @action("/retry", "Run the agent again with feedback (like /retry)")
    async def retry(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[RetryIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "retry", data.feedback, wait)

    @action("/approve", "Approve the run's head, or only some paths (like /approve)")
    async def approve(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[ApproveIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        args = " ".join([*([data.sha] if data.sha else []), *data.paths])
        return await act(request, run_id, "approve", args, wait)

    @action("/reject", "Reject the change; the run ends (like /reject)")
    async def reject(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[RejectIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "reject", data.reason, wait)

    @action("/hold", "Hold the run: no start, no merge (like /hold)")
    async def hold(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "hold", "", wait)

    @action("/unhold", "Lift a hold (like /unhold)")
    async def unhold(
        self, request: AnyRequest, run_id: FromPath[str], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "unhold", "", wait)

    @action("/budget", "Raise the run's budget (like /budget +N)")
    async def budget(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[BudgetIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "budget", f"+{data.add_usd:.2f}", wait)

    @action("/steer", "Tell the running agent something (like /bosun steer <message>)")
    async def steer(
        self, request: AnyRequest, run_id: FromPath[str], data: JSONBody[SteerIn], wait: Wait = 10
    ) -> Response[ActionOut]:
        return await act(request, run_id, "steer", data.message, wait)

    @action("/resume", "Continue a timed-out run from its branch (like /resume)")
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
    source = client_source(request)
    command = parse_action(verb, args, source)
    if isinstance(command, str):
        raise ValidationException(command, extra=[{"key": verb, "message": command}])
    decided = await submit(request, verb, args, run_id=run_id, wait=wait)
    if decided.outcome is None:
        pending = ActionOut(run_id=run_id, command=verb, outcome="pending")
        return Response(pending, status_code=202)
    if decided.outcome != "accepted":
        raise ConflictError(decided.reason or f"/{verb} was {decided.outcome}")
    out = ActionOut(
        run_id=run_id,
        command=verb,
        outcome="accepted",
        reason=decided.reason,
        new_run_id=decided.new_run_id,
        run=await runs.run_summary(run_id),
    )
    return Response(out, status_code=200)


def client_source(request: AnyRequest) -> ClientSource:
    return CLIENT_SOURCES.get(request.headers.get("x-bosun-client", "").lower(), "api")


async def submit(
    request: AnyRequest, verb: str, args: str, *, run_id: str | None, wait: float
) -> ControlCommand:
    """Record the caller's command, enqueue its job (which carries only the command's id) and
    wait up to ``wait`` seconds for the worker's decision; the row as it is then."""
    caller = caller_of(request)
    return await submit_command(
        services_of(request),
        verb,
        args,
        run_id=run_id,
        actor=caller.actor,
        permission=PERMISSION_OF_SCOPE.get(caller.scope, "read"),
        source=client_source(request),
        wait=wait,
    )


async def submit_command(
    services: Services,
    verb: str,
    args: str,
    *,
    run_id: str | None,
    actor: str,
    permission: str,
    source: ClientSource,
    wait: float,
) -> ControlCommand:
    """The one path every client's command takes (API, CLI, dashboard): a ``control_commands``
    row, the ``api_command`` job the worker decides it in, and the row once decided (or after
    ``wait`` seconds)."""
    command_id = f"{source}-{uuid.uuid4().hex}"
    async with services.sessions.begin() as session:
        session.add(
            ControlCommand(
                id=command_id,
                run_id=run_id,
                verb=verb,
                args=args,
                actor=actor,
                permission=permission,
                source=source,
                requested_at=datetime.now(UTC),
            )
        )
    await services.redis.enqueue_job(API_COMMAND, command_id, _job_id=command_job_id(command_id))
    deadline = time.monotonic() + wait
    while True:
        async with services.sessions() as session:
            row = await session.get(ControlCommand, command_id)
        assert row is not None
        if row.outcome is not None or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(0.1)


__all__ = ["RunActionController", "act", "client_source", "submit", "submit_command"]
