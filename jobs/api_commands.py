"""Commands on a run from the REST API, the CLI or the dashboard (SPEC §9): decided and applied
by the very code that decides comment commands (``jobs.review.execute_command``), with the same
permission rules, the same serialised step and an audit row whose ``source`` says where it came
from. The web process enqueues ``api_command`` and waits for the audit row its id names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update

from bot.control.actions import CLIENT_SOURCES, parse_action
from bot.db.models import ControlCommand, Repository, Run, Task
from jobs.context import job_context
from jobs.review import Given, Origin, execute_command

log = structlog.get_logger("jobs.api_commands")


async def api_command(ctx: dict[str, Any], command_id: str) -> dict[str, Any]:
    """Decide and apply the recorded command ``command_id`` (a ``control_commands`` row the
    web process wrote): its actor acts with the permission the row records."""
    bosun = job_context(ctx)
    structlog.contextvars.bind_contextvars(command_id=command_id)
    async with bosun.services.sessions() as session:
        recorded = await session.get(ControlCommand, command_id)
        if recorded is None:
            log.warning("api_command_unknown")  # not written by a web process: never acted on
            return {"command_id": command_id, "outcome": "ignored: no such command"}
        row = (
            await session.execute(
                select(Run, Task, Repository)
                .join(Task, Task.id == Run.task_id)
                .join(Repository, Repository.id == Run.repository_id)
                .where(Run.id == recorded.run_id)
            )
        ).first()
    structlog.contextvars.bind_contextvars(run_id=recorded.run_id)
    command = parse_action(recorded.verb, recorded.args, CLIENT_SOURCES.get(recorded.source, "api"))
    if isinstance(command, str) or row is None:
        return {"command_id": command_id, "outcome": "ignored: invalid command or no run"}
    run, task, repository = row
    port = bosun.repo(repository.installation_id or 0, repository.full_name)
    permission = recorded.permission

    async def permission_of(login: str) -> str:
        return permission

    origin = Origin(
        command_id, recorded.actor, "User", None, task.pr_number or task.issue_number or 0
    )
    given = Given(written_at=recorded.requested_at)  # decided on the head as it was then
    outcome = await execute_command(bosun, port, run, task, command, origin, permission_of, given)
    async with bosun.services.sessions.begin() as session:
        await session.execute(
            update(ControlCommand)
            .where(ControlCommand.id == command_id)
            .values(processed_at=datetime.now(UTC))
        )
    log.info("api_command_processed", verb=recorded.verb, actor=recorded.actor, outcome=outcome)
    return {"command_id": command_id, "outcome": outcome}


__all__ = ["api_command"]
