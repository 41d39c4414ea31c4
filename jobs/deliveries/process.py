"""``process_delivery``: turn one recorded webhook delivery into decisions and their effects.

Parse at the edge (``bot.domain.payloads``), decide purely (``bot.domain.triggers``), then act:
keep the installation tables current, start or cancel runs, reply to refused requesters once. A
delivery is processed at most once; a transient GitHub failure retries the job.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq import Retry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.control.start import RunRequest, active_run, create_run, queue_run
from bot.db.models import Delivery, Installation, Repository, Run, Task
from bot.db.runlog import append_event
from bot.db.upsert import insert_ignore
from bot.domain.payloads import (
    EventParseError,
    IgnoredEvent,
    ParsedEvent,
    RepositoryRef,
    parse_event,
)
from bot.domain.prompt import PromptComment, branch_name
from bot.domain.repoconfig import CONFIG_PATH, RepoConfig, RepoConfigError, parse_repo_config
from bot.domain.states import ACTIVE, DeliveryStatus
from bot.domain.triggers import (
    CancelRuns,
    Decision,
    IgnoreRequest,
    RefuseStart,
    StartRun,
    UnknownProfile,
    app_slug,
    decide,
    trigger_request,
    trusted_by,
)
from bot.errors import ConflictError
from bot.forge.port import CommentInfo, Forge, ForgeError, ForgeUnavailable
from bot.github.permissions import cached_permission
from bot.profiles import ProfileConfig, effective_profile
from bot.settings import Settings
from jobs.admission.cancel import signal_cancel
from jobs.context import JobContext, job_context
from jobs.resilience import db_disconnected
from jobs.review.green import handle_checks_changed
from jobs.review.handle import (
    handle_button,
    handle_commands,
    handle_push,
    handle_review,
    trace_failed_delivery,
)
from jobs.run.image import image_refusal
from jobs.run.prepare import prefetch_base

log = structlog.get_logger("jobs.deliveries.process")

_EARLY_COMMENTS: dict[str, asyncio.Future[list[CommentInfo]]] = {}
"""Comment listings started while a delivery is decided, by delivery id (``start_run``)."""

DELIVERY_TRIES = 5
"""Tries of one delivery (``max_tries`` of ``process_delivery`` in ``jobs.worker``)."""
FORGE_OUTAGE_PATIENCE = timedelta(hours=1)
"""How long after it arrived a delivery the forge keeps failing (5xx, network) is tried
again, at each reconciler pass once its job's tries are spent, before it is failed."""
REVIEW_EVENTS = {
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "check_run",
    "check_suite",
    "status",
}
CONFIG_ERROR_MARKER = "<!-- bosun:config-error -->"
IMAGE_MARKER = "<!-- bosun:image-refused -->"
REFUSED_MARKER = "<!-- bosun:refused user={login} -->"
TRIGGER_EVENTS = {"issues", "issue_comment"}


async def process_delivery(ctx: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    bosun = job_context(ctx)
    structlog.contextvars.bind_contextvars(delivery_id=delivery_id)
    tries = int(ctx.get("job_try") or 1)
    try:
        async with bosun.services.sessions.begin() as session:
            delivery = await session.get(Delivery, delivery_id)
            if delivery is None:
                return {"delivery": delivery_id, "outcome": "unknown delivery"}
            if delivery.status in (DeliveryStatus.PROCESSED, DeliveryStatus.IGNORED):
                return {"delivery": delivery_id, "outcome": f"already {delivery.status.value}"}
            delivery.status = DeliveryStatus.PROCESSING
            delivery.attempts += 1
            event_name, payload = delivery.event, delivery.payload
            received_at = delivery.received_at
    except Exception as exc:
        if db_disconnected(exc):
            raise _database_away(exc, tries) from exc
        raise
    structlog.contextvars.bind_contextvars(
        installation_id=delivery.installation_id, repo=delivery.repository
    )
    parsed: ParsedEvent | IgnoredEvent | None = None
    try:
        parsed = parse_event(event_name, payload)
        outcome = await route(bosun, delivery_id, parsed)
    except EventParseError as exc:
        await _finish(bosun, delivery_id, DeliveryStatus.FAILED, f"unparseable: {exc}")
        return {"delivery": delivery_id, "outcome": "failed", "error": str(exc)}
    except ConflictError as exc:
        # The run was busy or moved under the decision: decide again later, on its new state.
        if tries < DELIVERY_TRIES:
            log.info("delivery_conflict_retry", error=str(exc)[:300], job_try=tries)
            raise Retry(defer=conflict_backoff(tries)) from exc
        await _failed(bosun, delivery_id, parsed, repr(exc))
        return {"delivery": delivery_id, "outcome": "failed", "error": str(exc)}
    except ForgeError as exc:
        if tries < DELIVERY_TRIES:
            log.warning("delivery_retry", error=repr(exc)[:300], job_try=tries)
            raise Retry(defer=min(60, 2**tries)) from exc
        if isinstance(exc, ForgeUnavailable) and _within_outage_patience(received_at):
            # GitHub is down for longer than this job's tries: hand the delivery back to the
            # reconciler, which enqueues it again at each pass until GitHub answers.
            await _finish(bosun, delivery_id, DeliveryStatus.RECEIVED, repr(exc)[:1000])
            log.warning("delivery_waits_for_forge", error=repr(exc)[:300])
            return {"delivery": delivery_id, "outcome": "waiting for the forge"}
        await _failed(bosun, delivery_id, parsed, repr(exc))
        raise
    except Exception as exc:
        if db_disconnected(exc):  # not the delivery's fault: decide it once the database is back
            raise _database_away(exc, tries) from exc
        log.exception("delivery_failed")
        await _failed(bosun, delivery_id, parsed, repr(exc))
        raise
    status = DeliveryStatus.IGNORED if outcome.startswith("ignored") else DeliveryStatus.PROCESSED
    await _finish(
        bosun, delivery_id, status, None if status is DeliveryStatus.PROCESSED else outcome
    )
    log.info("delivery_processed", gh_event=event_name, outcome=outcome)
    return {"delivery": delivery_id, "outcome": outcome}


def _within_outage_patience(received_at: datetime) -> bool:
    """Whether a delivery GitHub's outage keeps from being decided is still worth trying."""
    received = received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
    return datetime.now(UTC) - received < FORGE_OUTAGE_PATIENCE


def _database_away(exc: BaseException, tries: int) -> Retry:
    """Try the delivery again later (a delivery out of tries stays ``processing`` and the
    reconciler enqueues it again, so an outage never fails one)."""
    log.warning("delivery_database_unreachable", error=str(exc)[:300], job_try=tries)
    return Retry(defer=min(30, 2**tries))


def conflict_backoff(tries: int) -> float:
    """Seconds before a delivery that met a busy or moving run is tried again: doubling from
    half a second, at most 30, with jitter so a flood on one run spreads out."""
    return float(min(30.0, 0.5 * 2 ** (tries - 1)) * random.uniform(0.5, 1.0))


async def _failed(
    bosun: JobContext,
    delivery_id: str,
    parsed: ParsedEvent | IgnoredEvent | None,
    error: str,
) -> None:
    """A delivery that finally failed: recorded as failed and, when it concerns a run, left
    as a visible trace on it (an ``error`` event and a note in the status comment)."""
    await _finish(bosun, delivery_id, DeliveryStatus.FAILED, error[:1000])
    if not isinstance(parsed, ParsedEvent) or parsed.event not in REVIEW_EVENTS:
        return
    if parsed.installation_id is None or parsed.repository is None:
        return
    port = bosun.repo(parsed.installation_id, parsed.repository.full_name)
    try:
        await trace_failed_delivery(bosun, port, parsed, delivery_id, error)
    except Exception:
        log.exception("delivery_trace_failed")


async def _finish(
    bosun: JobContext, delivery_id: str, status: DeliveryStatus, error: str | None
) -> None:
    async with bosun.services.sessions.begin() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(status=status, error=error, processed_at=datetime.now(UTC))
        )


async def route(bosun: JobContext, delivery_id: str, parsed: ParsedEvent | IgnoredEvent) -> str:
    if isinstance(parsed, IgnoredEvent):
        return f"ignored: {parsed.reason}"
    if parsed.event in ("installation", "installation_repositories"):
        return await sync_installation(bosun, parsed)
    if parsed.event == "ping":
        return "processed: ping"
    if parsed.installation_id is None or parsed.repository is None:
        return f"ignored: {parsed.key} without an installation"
    port = bosun.repo(parsed.installation_id, parsed.repository.full_name)

    async def permission(login: str) -> str:
        return await permission_of(bosun, port, login)

    if parsed.key == "issue_comment.created" and parsed.comment and parsed.issue:
        if parsed.comment.user.is_bot:
            return "ignored: comments by bots are never commands"
        body = parsed.comment.body.lower()
        slug = app_slug(bosun.settings.github.bot_login).lower()
        if not parsed.issue.is_pull_request and ("/bosun" in body or f"@{slug}" in body):
            outcome = await handle_trigger(bosun, delivery_id, parsed)
            if not outcome.startswith("ignored"):
                return outcome
        return await handle_commands(bosun, port, delivery_id, parsed, permission)
    if parsed.event == "issues" and parsed.issue and not parsed.issue.is_pull_request:
        return await handle_trigger(bosun, delivery_id, parsed)
    if parsed.key == "pull_request_review.submitted" and parsed.review:
        return await handle_review(bosun, port, delivery_id, parsed, permission)
    if parsed.key == "pull_request.synchronize" and parsed.pull_request:
        return await handle_push(bosun, port, parsed, delivery_id)
    if parsed.checks_changed is not None:
        return await handle_checks_changed(bosun, port, parsed)
    if parsed.event == "check_run" and parsed.check_run:
        return await handle_button(bosun, port, delivery_id, parsed, permission)
    return f"ignored: {parsed.key} is not acted on"


# -- installations --------------------------------------------------------------------------


async def sync_installation(bosun: JobContext, event: ParsedEvent) -> str:
    installation = event.installation
    if installation is None:
        return "ignored: no installation in payload"
    async with bosun.services.sessions.begin() as session:
        # Not get-or-add: another worker may be recording the same new installation from a
        # delivery of its own (an issue event's upsert_repository) at this very moment.
        await insert_ignore(
            session, Installation, {"id": installation.id, "account_login": ""}, ["id"]
        )
        row = await session.get(Installation, installation.id, populate_existing=True)
        assert row is not None
        if installation.account is not None:
            row.account_login = installation.account.login
            row.account_type = installation.account.type
        row.deleted = event.action == "deleted"
        row.suspended = event.action == "suspend"
        await session.flush()
        for ref in event.repositories_added:
            await upsert_repository(session, ref, installation.id)
        for ref in event.repositories_removed:
            await session.execute(
                update(Repository)
                .where(Repository.full_name == ref.full_name)
                .values(active=False, installation_id=None)
            )
    return (
        f"processed: installation {installation.id} {event.action}: "
        f"+{len(event.repositories_added)} -{len(event.repositories_removed)} repositories"
    )


async def upsert_repository(
    session: AsyncSession, ref: RepositoryRef, installation_id: int | None
) -> Repository:
    if installation_id is not None:
        # Installed before Bosun saw the installation event: record it from what we know.
        await insert_ignore(
            session, Installation, {"id": installation_id, "account_login": ref.owner}, ["id"]
        )
    await insert_ignore(
        session, Repository, {"full_name": ref.full_name, "github_id": ref.id}, ["full_name"]
    )
    repo = (
        await session.execute(select(Repository).where(Repository.full_name == ref.full_name))
    ).scalar_one()
    repo.github_id = ref.id
    repo.installation_id = installation_id
    repo.private = ref.private
    repo.active = True
    if ref.default_branch:
        repo.default_branch = ref.default_branch
    await session.flush()
    return repo


# -- triggers ------------------------------------------------------------------------------


async def permission_of(bosun: JobContext, port: Forge, login: str) -> str:
    """The requester's collaborator permission, checked live and cached briefly (signed, so a
    value written to Redis by anyone but Bosun is ignored: ``bot.github.permissions``)."""
    return await cached_permission(bosun.settings, bosun.services.redis, port, login)


async def load_repo_config(port: Forge, default_branch: str) -> tuple[RepoConfig, str | None]:
    """The repository's config from its default branch (the first of the forge's config
    paths that exists), or defaults and the error text."""
    text = None
    for path in port.config_paths:
        text = await port.file_text(path, default_branch)
        if text is not None:
            break
    try:
        return parse_repo_config(text), None
    except RepoConfigError as exc:
        return RepoConfig(), str(exc)


async def handle_trigger(bosun: JobContext, delivery_id: str, event: ParsedEvent) -> str:
    assert event.repository is not None and event.issue is not None
    if event.installation_id is None:
        return "ignored: no installation id"
    port = bosun.repo(event.installation_id, event.repository.full_name)
    default_branch = event.repository.default_branch or "main"
    profiles = bosun.settings.agent_profiles()
    known = frozenset(profiles)
    bot_login = bosun.settings.github.bot_login
    # Cheap pre-check with defaults, so most deliveries cost no API call.
    early = trigger_request(event, RepoConfig(), bot_login, known_profiles=known)
    if early is None and event.key not in ("issues.labeled", "issues.unlabeled"):
        return f"ignored: {event.key} asks nothing of Bosun"
    if early is not None and early.kind == "start":  # the run's reads, while this decides
        prefetch_base(bosun, port, delivery_id, default_branch)
        _list_comments_early(port, delivery_id, event.issue.number)
    config, config_error = await load_repo_config(port, default_branch)
    request = trigger_request(event, config, bot_login, known_profiles=known)
    if request is None:
        return f"ignored: {event.key} asks nothing of Bosun"
    if config_error is not None and request.kind == "start":
        await _reply_once(
            bosun,
            port,
            event.issue.number,
            CONFIG_ERROR_MARKER,
            f"Bosun cannot start: `{CONFIG_PATH}` on `{default_branch}` is invalid.\n\n"
            f"```\n{config_error}\n```\nFix the file on the default branch, then try again.",
        )
        return "processed: refused, repository config invalid"
    permission = None
    if request.source != "close":
        permission = await permission_of(bosun, port, request.requester)
    decision = decide(
        request,
        config,
        permission,
        server_allowed_users=frozenset(bosun.settings.allowed_users),
        known_profiles=known,
        server_default_profile=config.default_profile or bosun.settings.default_profile,
    )
    log.info("trigger_decided", decision=decision.kind, rule=decision.rule)
    if isinstance(decision, StartRun):
        refusal = await image_refusal(bosun.settings, port, config, default_branch)
        if refusal is not None:  # one comment on the issue, and no run
            await _reply_once(bosun, port, event.issue.number, IMAGE_MARKER, refusal.message)
            if event.comment is not None:
                await port.react("-1", comment_id=event.comment.id, issue=None)
            return "processed: refused, repository image not allowed"
    return await apply_decision(bosun, port, delivery_id, event, config, decision, permission)


async def _reply_once(bosun: JobContext, port: Forge, number: int, marker: str, body: str) -> bool:
    """Post ``body`` on ``number`` unless a comment with ``marker`` is there already.

    A Redis claim closes the race between two deliveries processed at the same moment; the
    marker search keeps the rule when Redis forgets."""
    claim = bosun.settings.redis.key("reply", port.full_name, str(number), marker)
    try:
        first = await bosun.services.redis.set(claim, "1", nx=True, ex=7 * 86400)
    except Exception:  # noqa: BLE001 -- fall back to the marker search alone
        first = True
    if not first or await port.find_comment(number, marker) is not None:
        return False
    await port.create_comment(number, f"{marker}\n{body}")
    return True


async def apply_decision(
    bosun: JobContext,
    port: Forge,
    delivery_id: str,
    event: ParsedEvent,
    config: RepoConfig,
    decision: Decision,
    permission: str | None,
) -> str:
    assert event.issue is not None and event.repository is not None
    number = event.issue.number
    comment_id = event.comment.id if event.comment else None
    match decision:
        case IgnoreRequest():
            return f"ignored: {decision.reason} ({decision.rule})"
        case RefuseStart() | UnknownProfile():
            marker = REFUSED_MARKER.format(login=decision.requester.lower())
            if isinstance(decision, UnknownProfile):
                marker = f"<!-- bosun:unknown-profile delivery={delivery_id} -->"
            replied = await _reply_once(bosun, port, number, marker, decision.reply)
            if comment_id:
                await port.react("-1", comment_id=comment_id, issue=None)
            return f"processed: refused ({decision.rule}){'' if replied else ', already told'}"
        case CancelRuns():
            cancelled = await cancel_runs(bosun, event, decision.requester, decision.reason)
            return f"processed: cancel requested for {cancelled} run(s) ({decision.rule})"
        case StartRun():
            run_id = await start_run(bosun, port, delivery_id, event, config, decision, permission)
            if comment_id and run_id:
                await port.react("eyes", comment_id=comment_id, issue=None)
            return (
                f"processed: run {run_id} queued"
                if run_id
                else "processed: a run is already active"
            )
    return "ignored: unknown decision"


async def cancel_runs(bosun: JobContext, event: ParsedEvent, actor: str, reason: str) -> int:
    assert event.repository is not None and event.issue is not None
    async with bosun.services.sessions.begin() as session:
        rows = await session.execute(
            select(Run)
            .join(Repository, Repository.id == Run.repository_id)
            .join(Task, Task.id == Run.task_id)
            .where(
                Repository.full_name == event.repository.full_name,
                Task.issue_number == event.issue.number,
                Run.state.in_(list(ACTIVE)),
            )
        )
        runs = list(rows.scalars())
        for run in runs:
            run.cancel_requested = True
            run.cancel_actor = actor
            await append_event(
                session, run.id, "command", {"command": "cancel", "actor": actor, "reason": reason}
            )
    await signal_cancel(bosun, [run.id for run in runs], actor)
    return len(runs)


def _list_comments_early(port: Forge, delivery_id: str, number: int) -> None:
    """Start listing the issue's comments while the delivery is decided (a start is likely):
    ``start_run`` takes the listing instead of asking again; one not taken within a minute
    is dropped."""
    task = asyncio.ensure_future(port.list_comments(number))
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    _EARLY_COMMENTS[delivery_id] = task
    asyncio.get_running_loop().call_later(60, _EARLY_COMMENTS.pop, delivery_id, None)


async def _trusted_comments(
    bosun: JobContext,
    port: Forge,
    number: int,
    config: RepoConfig,
    listed: Awaitable[list[CommentInfo]] | None = None,
) -> list[PromptComment]:
    comments = await (listed if listed is not None else port.list_comments(number))
    bot_login = bosun.settings.github.bot_login
    authors = sorted(
        {c.author for c in comments if not (c.author == bot_login or c.author_type == "Bot")}
    )  # each author's permission once, all at once
    permissions = await asyncio.gather(*(permission_of(bosun, port, a) for a in authors))
    permission_by_author = dict(zip(authors, permissions, strict=True))
    out: list[PromptComment] = []
    for comment in comments:
        if comment.author == bot_login or comment.author_type == "Bot":
            continue
        permission = permission_by_author[comment.author]
        trusted = trusted_by(
            comment.author,
            comment.author_type,
            config,
            permission,
            server_allowed_users=frozenset(bosun.settings.allowed_users),
        )
        out.append(PromptComment(comment.author, comment.body, trusted is not None, permission))
    return out


def run_workflow(settings: Settings, profile: str, config: RepoConfig) -> str:
    """The workflow a new run goes through: its profile's, as the repository narrows it."""
    server = settings.agent_profiles().get(profile) or ProfileConfig()
    return effective_profile(profile, server, config)[0].workflow


async def start_run(
    bosun: JobContext,
    port: Forge,
    delivery_id: str,
    event: ParsedEvent,
    config: RepoConfig,
    decision: StartRun,
    permission: str | None,
) -> str | None:
    assert event.repository is not None and event.issue is not None
    issue = event.issue
    listed = _EARLY_COMMENTS.pop(delivery_id, None)
    comments = await _trusted_comments(bosun, port, issue.number, config, listed)
    async with bosun.services.sessions.begin() as session:
        repo = await upsert_repository(session, event.repository, event.installation_id)
        await insert_ignore(
            session,
            Task,
            {"repository_id": repo.id, "issue_number": issue.number},
            ["repository_id", "issue_number"],
        )
        task = (
            await session.execute(
                select(Task).where(Task.repository_id == repo.id, Task.issue_number == issue.number)
            )
        ).scalar_one()
        task.title, task.body = issue.title, issue.body
        await session.flush()
        active = await active_run(session, task.id)
        if active is not None:
            await append_event(
                session,
                active,
                "command",
                {
                    "command": "start",
                    "actor": decision.requester,
                    "outcome": "ignored: already active",
                },
            )
            return None
        run = await create_run(
            session,
            task,
            RunRequest(
                profile=decision.profile,
                workflow=run_workflow(bosun.settings, decision.profile, config),
                trigger=decision.source,
                requester=decision.requester,
                branch=task.branch or branch_name(config.branch.prefix, issue.number, issue.title),
                repository=repo.full_name,
                repo_config=config.model_dump(mode="json"),
                author=issue.user.login,
                instructions=decision.instructions,
                comments=comments,
                delivery_id=delivery_id,
                first_events=[
                    (
                        "policy",
                        {
                            "rule": decision.rule,
                            "decision": "allow",
                            "permission": permission,
                            "message": f"@{decision.requester} may start runs",
                        },
                    )
                ],
            ),
        )
        run_id = run.id
    await queue_run(bosun.services, run_id)
    return run_id
