"""Starting runs (SPEC §4, §9): the one place a run row is born.

Every trigger — a label or ``/bosun run`` comment, ``/retry`` and ``/resume``, the API, the
CLI, the dashboard and local tasks — describes the run it wants as a ``RunRequest`` and calls
``create_run`` inside its own transaction, then ``queue_run`` after that transaction commits.
So every run gets the same row, the same prompt and the same first events, whoever asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Run, Task
from bot.db.runlog import append_event, new_run_id
from bot.domain.prompt import PromptComment, build_prompt
from bot.domain.states import ACTIVE
from bot.domain.tasks import task_text
from bot.jobids import EXECUTE_RUN, run_job_id
from bot.services import Services

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """A new run of a task, as a trigger asks for it.

    ``author`` wrote the task (the issue's author); ``comments`` are the task's discussion as
    the prompt may quote it (untrusted ones are dropped there); ``feedback`` is what
    ``/retry`` asked for, oldest first. ``parent`` makes the run a follow-up on the parent's
    branch and pull request.
    """

    profile: str
    workflow: str
    trigger: str
    requester: str
    branch: str | None
    repository: str
    repo_config: dict[str, Any]
    author: str = ""
    instructions: str = ""
    comments: Sequence[PromptComment] = ()
    feedback: Sequence[str] = ()
    delivery_id: str | None = None
    parent: Run | None = None
    budget_usd: float | None = None
    first_events: Sequence[tuple[str, dict[str, Any]]] = field(default=())
    """Events recorded right after the run's ``queued`` status (a policy decision, say)."""


async def active_run(session: AsyncSession, task_id: int) -> str | None:
    """The id of the task's run that has not ended yet, if any."""
    row = (
        await session.execute(
            select(Run.id).where(Run.task_id == task_id, Run.state.in_(list(ACTIVE))).limit(1)
        )
    ).first()
    return row[0] if row is not None else None


async def create_run(session: AsyncSession, task: Task, request: RunRequest) -> Run:
    """Add the run ``request`` describes to ``session`` with its prompt and first events.

    The caller owns the transaction and calls ``queue_run`` once it has committed, so a worker
    never picks up a run that is not in the database.
    """
    prompt = build_prompt(
        task.title,
        task_text(task.body, task.acceptance or (), task.focus or ()),
        request.author,
        list(request.comments),
        request.instructions,
        request.feedback,
        repository=request.repository,
        issue_number=task.issue_number,
    )
    parent = request.parent
    run = Run(
        id=new_run_id(),
        task_id=task.id,
        repository_id=task.repository_id,
        parent_run_id=parent.id if parent is not None else None,
        profile=request.profile,
        workflow=request.workflow,
        trigger=request.trigger,
        requester=request.requester,
        delivery_id=request.delivery_id,
        instructions=request.instructions,
        prompt=prompt,
        branch=request.branch,
        repo_config=request.repo_config,
        budget_usd=request.budget_usd,
    )
    session.add(run)
    await session.flush()
    status: dict[str, Any] = {
        "from": None,
        "to": "queued",
        "actor": request.requester,
        "reason": request.trigger,
    }
    if parent is not None:
        status["parent"] = parent.id
    await append_event(session, run.id, "status", status)
    for kind, data in request.first_events:
        await append_event(session, run.id, kind, data)
    return run


async def queue_run(services: Services, run_id: str) -> None:
    """Hand a committed run to the workers (once: the job id is the run's)."""
    await services.redis.enqueue_job(EXECUTE_RUN, run_id, _job_id=run_job_id(run_id))
    log.info("run_queued", run_id=run_id)
