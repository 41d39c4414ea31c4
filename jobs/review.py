"""The review loop's effects (SPEC §8): PR and issue comment commands, check-run buttons and
GitHub reviews become decisions (``bot.review``, pure) applied here — approvals bound to the
head SHA, merge, reject, retry with lineage, cancel, hold, budget — each recorded in the
command audit table and as a ``command``/``policy`` event of the run, and the run's
``manifest.json`` rewritten with its approvals and audit.

Neighbours: ``review_merge`` (approval → partial-approval revert → merge or conflict),
``partial_approval`` (the host-side git for both), ``review_push`` (pushes: same tree or not),
``review_records`` (reading the run back, the manifest, the status comment's review section).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update

from bot.commands import Command, parse_commands
from bot.db.models import Approval, CommandAudit, Run, RunState, Task
from bot.events import ParsedEvent
from bot.github.repo import RepoPort
from bot.prompt import build_prompt
from bot.repoconfig import RepoConfig
from bot.review import (
    Approve,
    Cancel,
    FoldFeedback,
    Hold,
    Ignore,
    RaiseBudget,
    Refuse,
    Reject,
    ReplyHelp,
    ReplyStatus,
    Resume,
    Retry,
    ReviewDecision,
    RevokeApproval,
    Unhold,
    approval_status,
    button_command,
    decide_command,
    decide_review,
)
from bot.runs import ACTIVE, append_event, new_run_id, transition
from jobs.cancel import signal_cancel
from jobs.context import JobContext
from jobs.reconcile import run_job_id
from jobs.review_merge import complete_approval, move, record_approval
from jobs.review_push import handle_push
from jobs.review_records import find_run, note_on_status, rewrite_manifest, snapshot

log = structlog.get_logger("jobs.review")


async def handle_commands(
    bosun: JobContext, port: RepoPort, delivery_id: str, event: ParsedEvent, permission_of: Any
) -> str:
    """Comments on an issue or PR that Bosun works on: run the one command they hold."""
    assert event.issue is not None and event.comment is not None and event.sender is not None
    parsed = parse_commands(event.comment.body)
    command = parsed.action or (parsed.queries[0] if parsed.queries else None)
    if command is None:
        if parsed.reply():
            await port.create_comment(event.issue.number, str(parsed.reply()))
            return "processed: command correction sent"
        return "ignored: no command"
    found = await find_run(bosun, port.full_name, event.issue.number)
    if found is None:
        return "ignored: no Bosun run on this issue or PR"
    run, task = found
    return await execute_command(
        bosun,
        port,
        delivery_id,
        run,
        task,
        command,
        event.sender.login,
        event.sender.type,
        permission_of,
        comment_id=event.comment.id,
        number=event.issue.number,
    )


async def handle_button(
    bosun: JobContext, port: RepoPort, delivery_id: str, event: ParsedEvent, permission_of: Any
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
    return await execute_command(
        bosun,
        port,
        delivery_id,
        run,
        task,
        command,
        event.sender.login,
        event.sender.type,
        permission_of,
        comment_id=None,
        number=number,
    )


async def handle_review(
    bosun: JobContext, port: RepoPort, delivery_id: str, event: ParsedEvent, permission_of: Any
) -> str:
    assert event.review is not None and event.pull_request is not None
    found = await find_run(bosun, port.full_name, event.pull_request.number)
    if found is None:
        return "ignored: no Bosun run on this PR"
    run, task = found
    config = RepoConfig.model_validate(run.repo_config or {})
    permission = await permission_of(event.review.user.login)
    decision = decide_review(
        event.review, await snapshot(bosun, run), permission, config, now_sha=run.head_sha or ""
    )
    command = Command(verb="approve", args="", raw_line="(review)", line_no=0, source="review")
    return await apply(
        bosun,
        port,
        delivery_id,
        run,
        task,
        command,
        decision,
        event.review.user.login,
        permission,
        comment_id=None,
        number=event.pull_request.number,
        config=config,
    )


async def execute_command(
    bosun: JobContext,
    port: RepoPort,
    delivery_id: str,
    run: Run,
    task: Task,
    command: Command,
    actor: str,
    actor_type: str,
    permission_of: Any,
    *,
    comment_id: int | None,
    number: int,
) -> str:
    config = RepoConfig.model_validate(run.repo_config or {})
    permission = await permission_of(actor)
    decision = decide_command(
        command,
        await snapshot(bosun, run),
        actor,
        permission,
        config,
        now_sha=run.head_sha or "",
        actor_type=actor_type,
    )
    return await apply(
        bosun,
        port,
        delivery_id,
        run,
        task,
        command,
        decision,
        actor,
        permission,
        comment_id=comment_id,
        number=number,
        config=config,
    )


async def _audit(
    bosun: JobContext,
    delivery_id: str,
    run: Run,
    repo: str,
    command: Command,
    decision: ReviewDecision,
    actor: str,
    permission: str | None,
    comment_id: int | None,
) -> None:
    async with bosun.services.sessions.begin() as session:
        session.add(
            CommandAudit(
                delivery_id=delivery_id,
                comment_id=comment_id,
                run_id=run.id,
                repository=repo,
                actor=actor,
                permission=permission,
                sha=run.head_sha,
                command=command.name,
                args=command.args[:2000],
                outcome=decision.outcome,
                reason=getattr(decision, "reply", None) or getattr(decision, "reason", None),
            )
        )
        await append_event(
            session,
            run.id,
            "command",
            {
                "command": command.name,
                "actor": actor,
                "outcome": decision.outcome,
                "source": command.source,
                "delivery_id": delivery_id,
            },
        )
        await append_event(session, run.id, "policy", dict(decision.as_policy_event()))


async def apply(
    bosun: JobContext,
    port: RepoPort,
    delivery_id: str,
    run: Run,
    task: Task,
    command: Command,
    decision: ReviewDecision,
    actor: str,
    permission: str | None,
    *,
    comment_id: int | None,
    number: int,
    config: RepoConfig,
) -> str:
    await _audit(
        bosun, delivery_id, run, port.full_name, command, decision, actor, permission, comment_id
    )
    react = "eyes"
    note = ""
    match decision:
        case Ignore():
            return f"ignored: {decision.reason}"
        case Refuse():
            await port.create_comment(number, decision.reply)
            react = "-1"
        case ReplyStatus() | ReplyHelp():
            await port.create_comment(number, decision.text)
        case Approve():
            await record_approval(bosun, port, run, decision, config, number, command.source)
            react = "+1"
        case RevokeApproval():
            note = await _revoke(bosun, run, actor, config)
            await port.create_comment(number, note)
        case Reject():
            if await move(bosun, run, RunState.REJECTED, actor, decision.reason or "rejected"):
                note = f"Run `{run.id}` rejected by @{actor}."
            else:
                note = f"@{actor}, the run is already {run.state.value.replace('_', ' ')}."
            await port.create_comment(number, note)
        case Retry() | Resume():
            feedback = decision.feedback if isinstance(decision, Retry) else ""
            new_id = await start_follow_up(bosun, port, run, task, actor, feedback, config)
            await port.create_comment(number, f"Started run `{new_id}` (follows `{run.id}`).")
        case FoldFeedback():
            async with bosun.services.sessions.begin() as session:
                row = await session.get(Task, task.id)
                if row is not None:
                    row.pending_feedback = [*(row.pending_feedback or []), decision.feedback]
        case Cancel():
            async with bosun.services.sessions.begin() as session:
                await session.execute(
                    update(Run)
                    .where(Run.id == run.id)
                    .values(cancel_requested=True, cancel_actor=actor)
                )
            await signal_cancel(bosun, [run.id], actor)
        case Hold() | Unhold():
            held = isinstance(decision, Hold)
            async with bosun.services.sessions.begin() as session:
                await session.execute(update(Run).where(Run.id == run.id).values(on_hold=held))
            run.on_hold = held
            if held:
                note = f"Run `{run.id}` is on hold (@{actor}): nothing is merged until `/unhold`."
            else:
                note = f"Hold lifted by @{actor}."
            await port.create_comment(number, note)
            if not held and run.state is RunState.APPROVED:
                await complete_approval(bosun, port, run.id, config, actor, number)
        case RaiseBudget():
            async with bosun.services.sessions.begin() as session:
                await session.execute(
                    update(Run).where(Run.id == run.id).values(budget_usd=decision.new_budget_usd)
                )
            await bosun.services.redis.set(
                bosun.settings.redis.key("budget", run.id), str(decision.amount), ex=86400
            )
            cap = decision.new_budget_usd
            note = f"Budget raised by ${decision.amount:.2f} by @{actor}" + (
                f", to ${cap:.2f}." if cap is not None else " (the run had no cap)."
            )
            await port.create_comment(number, note)
    if comment_id:
        await port.react(react, comment_id=comment_id, issue=None)
    if note:
        await note_on_status(bosun, port, run, note)
    await rewrite_manifest(bosun, run.id)  # approvals and the command audit (SPEC §4.3)
    return f"processed: {decision.kind} ({decision.rule})"


async def _revoke(bosun: JobContext, run: Run, actor: str, config: RepoConfig) -> str:
    """Withdraw ``actor``'s approvals; an approved run whose approvals no longer suffice goes
    back to review."""
    await _set_approvals_invalid(bosun, run.id, actor, "approval withdrawn")
    note = f"@{actor} withdrew their approval."
    if run.state is RunState.APPROVED:
        async with bosun.services.sessions() as session:
            current = await session.get(Run, run.id, populate_existing=True)
        assert current is not None
        if not approval_status(await snapshot(bosun, current), config).satisfied:
            await move(bosun, run, RunState.REVIEW_READY, actor, "approval withdrawn")
            note += " The run is back in review."
    return note


async def _set_approvals_invalid(bosun: JobContext, run_id: str, actor: str, why: str) -> None:
    async with bosun.services.sessions.begin() as session:
        await session.execute(
            update(Approval)
            .where(
                Approval.run_id == run_id,
                Approval.actor == actor,
                Approval.invalidated_at.is_(None),
            )
            .values(invalidated_at=datetime.now(UTC), invalidated_reason=why)
        )


async def start_follow_up(
    bosun: JobContext,
    port: RepoPort,
    parent: Run,
    task: Task,
    actor: str,
    feedback: str,
    config: RepoConfig,
) -> str:
    """A new run continuing ``parent``'s branch and PR, with the feedback in its prompt."""
    async with bosun.services.sessions.begin() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        notes = [*(row.pending_feedback or []), *([feedback] if feedback else [])]
        row.pending_feedback = []
        prompt = build_prompt(
            row.title,
            row.body,
            parent.requester,
            [],
            parent.instructions,
            notes,
            repository=port.full_name,
            issue_number=row.issue_number,
        )
        parent_row = await session.get(Run, parent.id)
        assert parent_row is not None
        if parent_row.state is RunState.REVIEW_READY:
            await transition(
                session, parent_row, RunState.REJECTED, actor=actor, reason="superseded by a retry"
            )
        superseded: list[str] = []
        for older in (
            await session.execute(
                select(Run).where(Run.task_id == row.id, Run.state == RunState.QUEUED)
            )
        ).scalars():
            older.cancel_requested, older.cancel_actor = True, "superseded"
            superseded.append(older.id)
        run = Run(
            id=new_run_id(),
            task_id=row.id,
            repository_id=parent.repository_id,
            parent_run_id=parent.id,
            profile=parent.profile,
            workflow=parent.workflow,
            trigger="retry",
            requester=actor,
            instructions=parent.instructions,
            prompt=prompt,
            branch=row.branch or parent.branch,
            repo_config=config.model_dump(mode="json"),
            budget_usd=parent.budget_usd,
        )
        session.add(run)
        await session.flush()
        await append_event(
            session,
            run.id,
            "status",
            {"from": None, "to": "queued", "actor": actor, "reason": "retry", "parent": parent.id},
        )
        new_id = run.id
    await signal_cancel(bosun, superseded, "superseded")
    await bosun.services.redis.enqueue_job("execute_run", new_id, _job_id=run_job_id(new_id))
    return new_id


__all__ = ["ACTIVE", "handle_button", "handle_commands", "handle_push", "handle_review"]
