"""Commands on a run from the REST API, the CLI or the dashboard (SPEC §9): decided and applied
by the very code that decides comment commands (``jobs.review.execute_command``), with the same
permission rules, the same serialised step and an audit row whose ``source`` says where it came
from. The web process enqueues ``api_command`` and waits for the audit row its id names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select

from bot.control.actions import CLIENT_SOURCES, parse_action
from bot.db.models import Repository, Run, Task
from jobs.context import job_context
from jobs.review import Given, Origin, execute_command

log = structlog.get_logger("jobs.api_commands")


async def api_command(
    ctx: dict[str, Any],
    command_id: str,
    run_id: str,
    verb: str,
    args: str,
    actor: str,
    permission: str,
    source: str,
    requested_at: str,
) -> dict[str, Any]:
    """Decide and apply one action on ``run_id`` for ``actor``, whose permission on the
    repository is ``permission`` (from its token's scope)."""
    bosun = job_context(ctx)
    structlog.contextvars.bind_contextvars(run_id=run_id, command_id=command_id)
    command = parse_action(verb, args, CLIENT_SOURCES.get(source, "api"))
    if isinstance(command, str):
        return {"command_id": command_id, "outcome": f"invalid: {command}"}
    async with bosun.services.sessions() as session:
        row = (
            await session.execute(
                select(Run, Task, Repository)
                .join(Task, Task.id == Run.task_id)
                .join(Repository, Repository.id == Run.repository_id)
                .where(Run.id == run_id)
            )
        ).first()
    if row is None:
        return {"command_id": command_id, "outcome": "ignored: no such run"}
    run, task, repository = row
    port = bosun.repo(repository.installation_id or 0, repository.full_name)

    async def permission_of(login: str) -> str:
        return permission

    origin = Origin(command_id, actor, "User", None, task.pr_number or task.issue_number or 0)
    given = Given(written_at=datetime.fromisoformat(requested_at))  # as a comment then
    outcome = await execute_command(bosun, port, run, task, command, origin, permission_of, given)
    log.info("api_command_processed", verb=verb, actor=actor, outcome=outcome)
    return {"command_id": command_id, "outcome": outcome}


__all__ = ["api_command"]
