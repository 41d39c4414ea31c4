"""The review loop's effects (SPEC §8): PR and issue comment commands, check-run buttons and
GitHub reviews become decisions (``bot.domain.review``, pure) applied here — approvals bound to the
head SHA, merge, reject, retry with lineage, cancel, hold, budget — each recorded in the
command audit table and as a ``command``/``policy`` event of the run, and the run's
``manifest.json`` rewritten with its approvals and audit.

Every decision is one serialised step (``jobs.review.step``): the collaborator permission is
read first (it may be slow), then, under the run's lock, the run is read as it is now, the
command decided on it, the decision committed with the run's version, and its effects applied.

Neighbours: ``review_merge`` (approval → partial-approval revert → merge or conflict),
``partial_approval`` (the host-side git for both), ``review_push`` (pushes: same tree or not),
``review_records`` (reading the run back, the manifest, the status comment's review section).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.control.start import RunRequest, create_run, queue_run
from bot.db.models import Approval, CommandAudit, Run, Task
from bot.db.runlog import append_event, transition
from bot.domain.commands import Command, mention_retry, parse_commands
from bot.domain.limits import clip
from bot.domain.payloads import ParsedEvent
from bot.domain.repoconfig import RepoConfig
from bot.domain.review import (
    Approve,
    Cancel,
    FoldFeedback,
    Hold,
    IgnoreCommand,
    RaiseBudget,
    RefuseCommand,
    Reject,
    ReplyHelp,
    ReplyStatus,
    Resume,
    RetryRun,
    ReviewDecision,
    RevokeApproval,
    RunSnapshot,
    Steer,
    Unhold,
    approval_status,
    button_command,
    decide_command,
    decide_review,
    head_when_written,
)
from bot.domain.review.checks import AWAITING_CHECKS
from bot.domain.states import ACTIVE, TERMINAL, RunState
from bot.domain.steering import fold_into_prompt
from bot.forge.port import Forge
from jobs.admission.cancel import signal_cancel
from jobs.context import JobContext
from jobs.review.merge import complete_approval, waiting_note
from jobs.review.push import handle_push
from jobs.review.records import find_run, note_on_status, record_ended, rewrite_manifest
from jobs.review.step import claim, serialised, written_at
from jobs.run.steering import STEER_TTL_SECONDS, steer_wake_key

log = structlog.get_logger("jobs.review.handle")


@dataclass(frozen=True)
class Given:
    """What a command was given on: an exact commit (a button's check run, a review's PR
    head), or for a comment the time it was written (the head then is read in the step)."""

    sha: str | None = None
    written_at: datetime | None = None

    def head(self, shot: RunSnapshot) -> str | None:
        if self.written_at is not None:
            return head_when_written(shot, self.written_at)
        return self.sha


@dataclass(frozen=True)
class Origin:
    """Where a command came from, for the audit row and the replies."""

    delivery_id: str
    actor: str
    actor_type: str
    comment_id: int | None
    number: int


async def handle_commands(
    bosun: JobContext, port: Forge, delivery_id: str, event: ParsedEvent, permission_of: Any
) -> str:
    """Comments on an issue or PR that Bosun works on: run the one command they hold."""
    assert event.issue is not None and event.comment is not None and event.sender is not None
    parsed = parse_commands(event.comment.body)
    command = parsed.action or (parsed.queries[0] if parsed.queries else None)
    if command is None and event.issue.is_pull_request and not parsed.reply():
        # "@<app-slug> please also cover the empty case" on a Bosun PR: a /retry with it.
        command = mention_retry(event.comment.body, bosun.settings.github.bot_login)
    if command is None:
        if parsed.reply():
            await port.create_comment(event.issue.number, str(parsed.reply()))
            return "processed: command correction sent"
        return "ignored: no command"
    found = await find_run(bosun, port.full_name, event.issue.number)
    if found is None:
        return "ignored: no Bosun run on this issue or PR"
    run, task = found
    written = await written_at(bosun, delivery_id, event.comment.created_at)
    origin = Origin(
        delivery_id, event.sender.login, event.sender.type, event.comment.id, event.issue.number
    )
    return await execute_command(
        bosun, port, run, task, command, origin, permission_of, Given(written_at=written)
    )


async def handle_button(
    bosun: JobContext, port: Forge, delivery_id: str, event: ParsedEvent, permission_of: Any
) -> str:
    assert event.check_run is not None and event.sender is not None
    identifier = (
        "rerequested" if event.action == "rerequested" else event.check_run.requested_action
    )
    command = button_command(identifier or "", head_sha=event.check_run.head_sha)
    if command is None:
        return "ignored: not a Bosun button"
    async with bosun.services.sessions() as session:
        row = (
            await session.execute(
                select(Run, Task)
                .join(Task, Task.id == Run.task_id)
                .where(Run.check_run_id == event.check_run.id)
            )
        ).first()
    if row is None:
        return "ignored: check run of no known run"
    run, task = row
    number = task.pr_number or task.issue_number or 0
    origin = Origin(delivery_id, event.sender.login, event.sender.type, None, number)
    given = Given(sha=event.check_run.head_sha)
    return await execute_command(bosun, port, run, task, command, origin, permission_of, given)


async def handle_review(
    bosun: JobContext, port: Forge, delivery_id: str, event: ParsedEvent, permission_of: Any
) -> str:
    assert event.review is not None and event.pull_request is not None
    found = await find_run(bosun, port.full_name, event.pull_request.number)
    if found is None:
        return "ignored: no Bosun run on this PR"
    run, task = found
    config = RepoConfig.model_validate(run.repo_config or {})
    review, pr_head = event.review, event.pull_request.head_sha
    permission = await permission_of(review.user.login)
    command = Command(verb="approve", args="", raw_line="(review)", line_no=0, source="review")
    line_comments: list[tuple[str, int | None, str]] = []
    if review.state == "changes_requested":  # a /retry carrying the review and its comments
        command = Command(verb="retry", args="", raw_line="(review)", line_no=0, source="review")
        line_comments = [
            (c.path, c.line, c.body)
            for c in await port.review_comments(event.pull_request.number, review.id)
        ]
    origin = Origin(
        delivery_id, review.user.login, review.user.type, None, event.pull_request.number
    )

    async def step(row: Run, shot: RunSnapshot) -> str:
        if await _already_decided(bosun, origin.delivery_id, row.id):
            return await _resume(bosun, port, row.id, config, origin)
        decision = decide_review(
            review, shot, permission, config, now_sha=pr_head, line_comments=line_comments
        )
        if isinstance(decision, RetryRun | FoldFeedback):
            audited = replace(command, args=decision.feedback)
        else:
            audited = command
        return await apply(bosun, port, shot, task, audited, decision, origin, permission, config)

    return await serialised(bosun, run.id, step)


async def execute_command(
    bosun: JobContext,
    port: Forge,
    run: Run,
    task: Task,
    command: Command,
    origin: Origin,
    permission_of: Any,
    given: Given,
) -> str:
    """Decide ``command`` on the run as it is when its turn comes, and apply it."""
    config = RepoConfig.model_validate(run.repo_config or {})
    permission = await permission_of(origin.actor)  # outside the lock: GitHub may be slow

    async def step(row: Run, shot: RunSnapshot) -> str:
        if await _already_decided(bosun, origin.delivery_id, row.id):
            return await _resume(bosun, port, row.id, config, origin)
        decision = decide_command(
            command,
            shot,
            origin.actor,
            permission,
            config,
            now_sha=given.head(shot),
            actor_type=origin.actor_type,
        )
        return await apply(bosun, port, shot, task, command, decision, origin, permission, config)

    return await serialised(bosun, run.id, step)


async def _already_decided(bosun: JobContext, delivery_id: str, run_id: str) -> bool:
    """Whether this delivery's command was decided and committed already (a retried job)."""
    async with bosun.services.sessions() as session:
        found = await session.execute(
            select(CommandAudit.id)
            .where(CommandAudit.delivery_id == delivery_id, CommandAudit.run_id == run_id)
            .limit(1)
        )
        return found.first() is not None


async def _resume(
    bosun: JobContext, port: Forge, run_id: str, config: RepoConfig, origin: Origin
) -> str:
    """A retried delivery whose decision is committed: finish what it left undone (an
    approved run's merge), never decide it twice."""
    await complete_approval(bosun, port, run_id, config, origin.actor, origin.number)
    return "processed: resumed a decision already made"


async def _audit(
    session: AsyncSession,
    shot: RunSnapshot,
    repo: str,
    command: Command,
    decision: ReviewDecision,
    origin: Origin,
    permission: str | None,
) -> None:
    reason = getattr(decision, "reply", None) or getattr(decision, "reason", None)
    session.add(
        CommandAudit(
            delivery_id=origin.delivery_id,
            comment_id=origin.comment_id,
            run_id=shot.run_id,
            repository=repo,
            actor=origin.actor,
            permission=permission,
            sha=shot.head_sha,
            command=command.name,
            source=command.source,
            args=command.args[:2000],
            outcome=decision.outcome,
            reason=reason[:4000] if reason else None,
        )
    )
    await append_event(
        session,
        shot.run_id,
        "command",
        {
            "command": command.name,
            "actor": origin.actor,
            "outcome": decision.outcome,
            "source": command.source,
            "delivery_id": origin.delivery_id,
        },
    )
    await append_event(session, shot.run_id, "policy", _bounded(decision.as_policy_event()))


def _bounded(data: dict[str, Any]) -> dict[str, Any]:
    """A policy event's payload with user-sized fields kept small (the decision's paths and
    texts may come from a 65 KB comment)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, str):
            out[key] = value[:2000]
        elif isinstance(value, (list, tuple)) and len(value) > 50:
            out[key] = [*value[:50], f"… and {len(value) - 50} more"]
        else:
            out[key] = value
    return out


async def _commit(
    bosun: JobContext,
    port: Forge,
    shot: RunSnapshot,
    task: Task,
    command: Command,
    decision: ReviewDecision,
    origin: Origin,
    permission: str | None,
    config: RepoConfig,
) -> tuple[bool, list[str], str | None]:
    """Write the decision in one transaction that first claims the run's version: the audit
    row, its events and what the decision changes. Returns (approved now, runs superseded by
    a retry, the follow-up run's id)."""
    approved, follow_up = False, None
    superseded: list[str] = []
    async with bosun.services.sessions.begin() as session:
        await claim(session, shot.run_id, shot.version)
        await _audit(session, shot, port.full_name, command, decision, origin, permission)
        row = await session.get(Run, shot.run_id, populate_existing=True)
        assert row is not None
        match decision:
            case Approve():
                session.add(
                    Approval(
                        run_id=row.id,
                        actor=decision.actor,
                        sha=decision.sha,
                        paths=list(decision.paths),
                        general=decision.general,
                        source=command.source,
                    )
                )
                after = replace(shot, approvals=(*shot.approvals, decision.as_snapshot()))
                if approval_status(after, config).satisfied:
                    await transition(
                        session, row, RunState.APPROVED, actor=origin.actor, reason="approved"
                    )
                    approved = True
            case RevokeApproval():
                now = datetime.now(UTC)
                await session.execute(
                    update(Approval)
                    .where(
                        Approval.run_id == row.id,
                        Approval.actor == decision.actor,
                        Approval.invalidated_at.is_(None),
                    )
                    .values(invalidated_at=now, invalidated_reason="approval withdrawn")
                )
                left = tuple(
                    a for a in shot.approvals if a.actor.casefold() != decision.actor.casefold()
                )
                if (
                    row.state is RunState.APPROVED
                    and not approval_status(replace(shot, approvals=left), config).satisfied
                ):
                    if row.phase == AWAITING_CHECKS:
                        row.phase = None  # nothing waits to merge any more
                    await transition(
                        session,
                        row,
                        RunState.REVIEW_READY,
                        actor=origin.actor,
                        reason="approval withdrawn",
                    )
            case Reject():
                reason = clip(decision.reason, 500) or "rejected"
                await transition(session, row, RunState.REJECTED, actor=origin.actor, reason=reason)
            case RetryRun() | Resume():
                feedback = decision.feedback if isinstance(decision, RetryRun) else ""
                follow_up, superseded = await _follow_up(
                    session, port, row, task, origin.actor, feedback, config
                )
            case FoldFeedback():
                task_row = await session.get(Task, task.id)
                if task_row is not None:
                    task_row.pending_feedback = [
                        *(task_row.pending_feedback or []),
                        decision.feedback,
                    ]
            case Steer():
                if decision.folded:
                    row.prompt = fold_into_prompt(row.prompt, decision.actor, decision.message)
                await append_event(
                    session,
                    row.id,
                    "steer",
                    {
                        "actor": decision.actor,
                        "message": decision.message,
                        "folded": decision.folded,
                        "source": command.source,
                        "delivery_id": origin.delivery_id,
                    },
                )
            case Cancel():
                row.cancel_requested, row.cancel_actor = True, origin.actor
            case Hold() | Unhold():
                row.on_hold = isinstance(decision, Hold)
            case RaiseBudget():
                row.budget_usd = decision.new_budget_usd
    return approved, superseded, follow_up


async def apply(
    bosun: JobContext,
    port: Forge,
    shot: RunSnapshot,
    task: Task,
    command: Command,
    decision: ReviewDecision,
    origin: Origin,
    permission: str | None,
    config: RepoConfig,
) -> str:
    """Commit ``decision`` (made on ``shot``), then apply its effects on GitHub."""
    approved, superseded, follow_up = await _commit(
        bosun, port, shot, task, command, decision, origin, permission, config
    )
    actor, number, run_id = origin.actor, origin.number, shot.run_id
    react = "eyes"
    note = ""
    match decision:
        case IgnoreCommand():
            return f"ignored: {decision.reason}"
        case RefuseCommand():
            await port.create_comment(number, decision.reply)
            react = "-1"
        case ReplyStatus() | ReplyHelp():
            await port.create_comment(number, decision.text)
        case Approve():
            react = "+1"
            if approved:
                await complete_approval(bosun, port, run_id, config, actor, number)
            else:
                note = await waiting_note(bosun, run_id, decision, config)
                await port.create_comment(number, note)
                note = f"@{actor} approved"
        case RevokeApproval():
            note = f"@{actor} withdrew their approval."
            if shot.state is RunState.APPROVED and await _state(bosun, run_id) is not (
                RunState.APPROVED
            ):
                note += " The run is back in review."
            await port.create_comment(number, note)
        case Reject():
            note = f"Run `{run_id}` rejected by @{actor}."
            await port.create_comment(number, note)
            await port.close_pull(number, delete_branch=config.branch.delete_on_reject)
        case RetryRun() | Resume():
            await signal_cancel(bosun, superseded, "superseded")
            assert follow_up is not None
            await queue_run(bosun.services, follow_up)
            await port.create_comment(number, f"Started run `{follow_up}` (follows `{run_id}`).")
        case FoldFeedback():
            pass
        case Steer():
            if not decision.folded:  # wakes the run's watch; the message is read from the DB
                key = steer_wake_key(bosun.settings, run_id)
                await bosun.services.redis.set(key, "1", ex=STEER_TTL_SECONDS)
        case Cancel():
            await signal_cancel(bosun, [run_id], actor)
        case Hold() | Unhold():
            if isinstance(decision, Hold):
                note = f"Run `{run_id}` is on hold (@{actor}): nothing is merged until `/unhold`."
            else:
                note = f"Hold lifted by @{actor}."
            await port.create_comment(number, note)
            if isinstance(decision, Unhold) and shot.state is RunState.APPROVED:
                await complete_approval(bosun, port, run_id, config, actor, number)
        case RaiseBudget():
            await bosun.services.redis.set(
                bosun.settings.redis.key("budget", run_id), str(decision.amount), ex=86400
            )
            cap = decision.new_budget_usd
            note = f"Budget raised by ${decision.amount:.2f} by @{actor}" + (
                f", to ${cap:.2f}." if cap is not None else " (the run had no cap)."
            )
            await port.create_comment(number, note)
    if origin.comment_id:
        await port.react(react, comment_id=origin.comment_id, issue=None)
    if note:
        await note_on_status(bosun, port, await _row(bosun, run_id), note)
    await rewrite_manifest(bosun, run_id)  # approvals and the command audit (SPEC §4.3)
    ended = isinstance(decision, Reject | RetryRun | Resume)  # a merge records its own end
    if ended and shot.state not in TERMINAL and await _state(bosun, run_id) in TERMINAL:
        await record_ended(bosun, run_id)  # rejected, or superseded by a retry
    return f"processed: {decision.kind} ({decision.rule})"


async def _row(bosun: JobContext, run_id: str) -> Run:
    async with bosun.services.sessions() as session:
        row = await session.get(Run, run_id)
    assert row is not None
    return row


async def _state(bosun: JobContext, run_id: str) -> RunState:
    return (await _row(bosun, run_id)).state


async def _follow_up(
    session: AsyncSession,
    port: Forge,
    parent: Run,
    task: Task,
    actor: str,
    feedback: str,
    config: RepoConfig,
) -> tuple[str, list[str]]:
    """A new run continuing ``parent``'s branch and PR, with the feedback in its prompt;
    returns its id and the queued older runs it supersedes."""
    row = await session.get(Task, task.id)
    assert row is not None
    notes = [*(row.pending_feedback or []), *([feedback] if feedback else [])]
    row.pending_feedback = []
    if parent.state is RunState.REVIEW_READY:
        await transition(
            session, parent, RunState.REJECTED, actor=actor, reason="superseded by a retry"
        )
    superseded: list[str] = []
    for older in (
        await session.execute(
            select(Run).where(Run.task_id == row.id, Run.state == RunState.QUEUED)
        )
    ).scalars():
        older.cancel_requested, older.cancel_actor = True, "superseded"
        superseded.append(older.id)
    run = await create_run(
        session,
        row,
        RunRequest(
            profile=parent.profile,
            workflow=parent.workflow,
            trigger="retry",
            requester=actor,
            branch=row.branch or parent.branch,
            repository=port.full_name,
            repo_config=config.model_dump(mode="json"),
            author=parent.requester,
            instructions=parent.instructions or "",
            feedback=notes,
            parent=parent,
            budget_usd=parent.budget_usd,
        ),
    )
    return run.id, superseded


async def trace_failed_delivery(
    bosun: JobContext, port: Forge, event: ParsedEvent, delivery_id: str, error: str
) -> bool:
    """A review delivery that finally failed: an ``error`` event on its run and a note in the
    status comment's review section, so nobody is left believing it was acted on."""
    number = (
        event.pull_request.number
        if event.pull_request
        else event.issue.number
        if event.issue
        else None
    )
    run: Run | None = None
    if number is not None:
        found = await find_run(bosun, port.full_name, number)
        run = found[0] if found else None
    elif event.check_run is not None:
        async with bosun.services.sessions() as session:
            run = (
                await session.execute(select(Run).where(Run.check_run_id == event.check_run.id))
            ).scalar_one_or_none()
    if run is None:
        return False
    async with bosun.services.sessions.begin() as session:
        await append_event(
            session,
            run.id,
            "error",
            {"delivery_id": delivery_id, "event": event.key, "error": error[:1000]},
        )
    who = f" from @{event.sender.login}" if event.sender else ""
    note = (
        f"A `{event.key}`{who} could not be processed after several tries "
        f"({clip(error, 200)}); it changed nothing. Please try again."
    )
    await note_on_status(bosun, port, run, note)
    return True


__all__ = [
    "ACTIVE",
    "handle_button",
    "handle_commands",
    "handle_push",
    "handle_review",
    "trace_failed_delivery",
]
