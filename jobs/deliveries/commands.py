"""Commands on a run from the REST API, the CLI or the dashboard (SPEC §9): decided and applied
by the very code that decides comment commands (``jobs.review.handle.execute_command``), with the
same permission rules, the same serialised step and an audit row whose ``source`` says where it came
from. The web process enqueues ``api_command`` and waits for the audit row its id names.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import structlog
from githubkit.exception import GitHubException
from sqlalchemy import func, select, update

from bot.control.actions import CLIENT_SOURCES, parse_action
from bot.control.start import RunRequest, active_run, create_run, queue_run
from bot.db.models import CommandAudit, ControlCommand, Repository, Run, Task
from bot.domain.payloads import Actor, IssueRef, ParsedEvent, RepositoryRef
from bot.domain.prompt import branch_name
from bot.domain.repoconfig import CONFIG_PATH, RepoConfig
from bot.domain.triggers import StartRun, TriggerRequest, decide
from bot.forge.port import ForgeError
from jobs.context import JobContext, job_context
from jobs.deliveries.process import load_repo_config, run_workflow, start_run, upsert_repository
from jobs.review.handle import Given, Origin, execute_command

log = structlog.get_logger("jobs.deliveries.commands")


async def api_command(ctx: dict[str, Any], command_id: str) -> dict[str, Any]:
    """Decide and apply the recorded command ``command_id`` (a ``control_commands`` row the
    web process wrote): its actor acts with the permission the row records. The outcome is
    written back on the row, where the web process reads it."""
    bosun = job_context(ctx)
    structlog.contextvars.bind_contextvars(command_id=command_id)
    async with bosun.services.sessions() as session:
        recorded = await session.get(ControlCommand, command_id)
    if recorded is None:
        log.warning("api_command_unknown")  # not written by a web process: never acted on
        return {"command_id": command_id, "outcome": "ignored: no such command"}
    if recorded.processed_at is not None:
        return {"command_id": command_id, "outcome": f"already {recorded.outcome}"}
    try:
        if recorded.verb == "start":
            outcome, reason, new_run = await _start(bosun, recorded)
        else:
            outcome, reason, new_run = await _act(bosun, recorded)
    except (ForgeError, GitHubException) as exc:
        if int(ctx.get("job_try") or 1) < 3:
            raise  # arq tries it again; the caller is told it is pending meanwhile
        outcome, reason, new_run = "refused", f"GitHub did not answer: {type(exc).__name__}", None
    async with bosun.services.sessions.begin() as session:
        await session.execute(
            update(ControlCommand)
            .where(ControlCommand.id == command_id)
            .values(
                processed_at=datetime.now(UTC),
                outcome=outcome,
                reason=reason[:4000] if reason else None,
                new_run_id=new_run,
            )
        )
    log.info("api_command_processed", verb=recorded.verb, actor=recorded.actor, outcome=outcome)
    return {"command_id": command_id, "outcome": outcome, "run_id": new_run}


async def _act(bosun: JobContext, recorded: ControlCommand) -> tuple[str, str | None, str | None]:
    """A command on an existing run, decided like the comment it mirrors."""
    source = CLIENT_SOURCES.get(recorded.source, "api")
    command = parse_action(recorded.verb, recorded.args, source)
    async with bosun.services.sessions() as session:
        row = (
            await session.execute(
                select(Run, Task, Repository)
                .join(Task, Task.id == Run.task_id)
                .join(Repository, Repository.id == Run.repository_id)
                .where(Run.id == recorded.run_id)
            )
        ).first()
    if isinstance(command, str) or row is None:
        return "ignored", "invalid command or no such run", None
    run, task, repository = row
    structlog.contextvars.bind_contextvars(run_id=run.id)
    port = bosun.forge(repository)
    permission = recorded.permission

    async def permission_of(login: str) -> str:
        return permission

    origin = Origin(
        recorded.id, recorded.actor, "User", None, task.pr_number or task.issue_number or 0
    )
    given = Given(written_at=recorded.requested_at)  # decided on the head as it was then
    await execute_command(bosun, port, run, task, command, origin, permission_of, given)
    async with bosun.services.sessions() as session:
        audit = (
            await session.execute(
                select(CommandAudit).where(CommandAudit.delivery_id == recorded.id).limit(1)
            )
        ).scalar_one_or_none()
        follow_up = (
            await session.execute(
                select(Run.id)
                .where(Run.parent_run_id == run.id, Run.created_at >= recorded.requested_at)
                .order_by(Run.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    if audit is None:
        return "ignored", "the run could not take the command", None
    new_run = follow_up if recorded.verb in ("retry", "resume") else None
    return audit.outcome, audit.reason, new_run


async def _discover(bosun: JobContext, full_name: str) -> Repository | None:
    """A repository Bosun has not heard of yet (the App was installed before Bosun listened):
    ask GitHub where the App is installed on it and record it."""
    installation = await bosun.github_app().installation_of(full_name)
    if installation is None:
        return None
    ref = await bosun.repo(installation, full_name).describe()
    async with bosun.services.sessions.begin() as session:
        return await upsert_repository(session, ref, installation)


async def _start(bosun: JobContext, recorded: ControlCommand) -> tuple[str, str | None, str | None]:
    """A new run on an issue, decided by the trigger rules a label or ``/bosun run`` meets."""
    asked = json.loads(recorded.args)
    full_name, number = str(asked["repository"]), int(asked["issue_number"])
    async with bosun.services.sessions() as session:
        repository = (
            await session.execute(
                select(Repository).where(func.lower(Repository.full_name) == full_name.lower())
            )
        ).scalar_one_or_none()
    if repository is not None and repository.local_path:
        return await _start_task(bosun, recorded, repository, number)
    if repository is None or repository.installation_id is None:
        repository = await _discover(bosun, full_name)
    if repository is None or not repository.active or repository.installation_id is None:
        return "refused", f"Bosun's App is not installed on {full_name}", None
    if not repository.enabled:
        return "refused", f"{repository.full_name} is disabled in Bosun", None
    port = bosun.repo(repository.installation_id, repository.full_name)
    issue = await port.get_issue(number)
    if issue is None or issue.is_pull_request:
        return "refused", f"{repository.full_name} has no issue #{number}", None
    config, config_error = await load_repo_config(port, repository.default_branch)
    if config_error is not None:
        return (
            "refused",
            f"{CONFIG_PATH} on {repository.default_branch} is invalid: {config_error}",
            None,
        )
    decision = _decide_start(bosun, recorded, repository, number, config, asked.get("profile"))
    if isinstance(decision, str):
        return "refused", decision, None
    source = decision.source
    owner, name = repository.full_name.split("/", 1)
    event = ParsedEvent(
        event="bosun.start",
        action=source,
        installation_id=repository.installation_id,
        sender=Actor(recorded.actor, "User"),
        repository=RepositoryRef(
            id=repository.github_id or 0,
            full_name=repository.full_name,
            owner=owner,
            name=name,
            default_branch=repository.default_branch,
            private=repository.private,
        ),
        issue=IssueRef(
            number=issue.number,
            title=issue.title,
            body=issue.body,
            labels=issue.labels,
            user=Actor(issue.author, issue.author_type),
            state=issue.state,
            is_pull_request=False,
        ),
    )
    run_id = await start_run(bosun, port, recorded.id, event, config, decision, recorded.permission)
    if run_id is None:
        return "refused", f"a run is already active on {repository.full_name}#{number}", None
    return "accepted", None, run_id


def _decide_start(
    bosun: JobContext,
    recorded: ControlCommand,
    repository: Repository,
    number: int,
    config: RepoConfig,
    profile: str | None,
) -> StartRun | str:
    """A client's start judged by the trigger rules a label or ``/bosun run`` meets; a string
    says why it is refused."""
    asked = json.loads(recorded.args)
    request = TriggerRequest(
        kind="start",
        source=CLIENT_SOURCES.get(recorded.source, "api"),
        requester=recorded.actor,
        requester_type="User",
        repository=repository.full_name,
        issue_number=number,
        profile=profile or None,
        instructions=str(asked.get("instructions") or ""),
    )
    decision = decide(
        request,
        config,
        recorded.permission,
        server_allowed_users=frozenset(bosun.settings.allowed_users),
        known_profiles=frozenset(bosun.settings.agent_profiles()),
        server_default_profile=config.default_profile or bosun.settings.default_profile,
    )
    if isinstance(decision, StartRun):
        return decision
    return str(getattr(decision, "reply", None) or getattr(decision, "reason", "not started"))


async def _start_task(
    bosun: JobContext, recorded: ControlCommand, repository: Repository, number: int
) -> tuple[str, str | None, str | None]:
    """A new run on a local task: the task is a row of Bosun's, not an issue to fetch, and it
    names the profile its runs use unless the start names another. Decided by the same
    trigger rules, born in ``create_run`` like every run."""
    asked = json.loads(recorded.args)
    if not repository.enabled:
        return "refused", f"{repository.full_name} is disabled in Bosun", None
    port = bosun.forge(repository)
    try:
        config, config_error = await load_repo_config(port, repository.default_branch)
    except ForgeError as exc:
        return "refused", str(exc), None
    if config_error is not None:
        return (
            "refused",
            f"the repository's config on {repository.default_branch} is invalid: {config_error}",
            None,
        )
    if "allow_self_approval" not in config.approval.model_fields_set:
        # One person usually both asks for and reviews a local repository's runs.
        approval = config.approval.model_copy(update={"allow_self_approval": True})
        config = config.model_copy(update={"approval": approval})
    async with bosun.services.sessions() as session:
        task = (
            await session.execute(
                select(Task).where(Task.repository_id == repository.id, Task.issue_number == number)
            )
        ).scalar_one_or_none()
    if task is None:
        return "refused", f"{repository.full_name} has no task #{number}", None
    if task.state != "open":
        return "refused", f"task {repository.full_name}#{number} is closed; reopen it first", None
    decision = _decide_start(
        bosun, recorded, repository, number, config, asked.get("profile") or task.profile
    )
    if isinstance(decision, str):
        return "refused", decision, None
    async with bosun.services.sessions.begin() as session:
        row = await session.get(Task, task.id, with_for_update=True)
        assert row is not None
        if await active_run(session, row.id) is not None:
            return "refused", f"a run is already active on {repository.full_name}#{number}", None
        if not row.branch:
            row.branch = branch_name(config.branch.prefix, number, row.title)
        run = await create_run(
            session,
            row,
            RunRequest(
                profile=decision.profile,
                workflow=run_workflow(bosun.settings, decision.profile, config),
                trigger=decision.source,
                requester=decision.requester,
                branch=row.branch,
                repository=repository.full_name,
                repo_config=config.model_dump(mode="json"),
                author=row.author,
                instructions=decision.instructions,
                delivery_id=recorded.id,
                first_events=[
                    (
                        "policy",
                        {
                            "rule": decision.rule,
                            "decision": "allow",
                            "permission": recorded.permission,
                            "message": f"@{decision.requester} may start runs",
                        },
                    )
                ],
            ),
        )
        run_id = run.id
    await queue_run(bosun.services, run_id)
    return "accepted", None, run_id


__all__ = ["api_command"]
