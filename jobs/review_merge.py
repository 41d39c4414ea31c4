"""From approval to merge (SPEC §8): record an approval, move the run to ``approved`` once the
approvals on the head suffice, keep only the approved files of a partial approval (a revert
commit pushed before the merge), and merge — or, on a conflict, name the conflicting paths and
leave the run ``review_ready``.

Exactly one merge: the move to ``approved`` is a compare-and-set (one of two concurrent
approvals wins it), and completing an approval holds a short Redis lock and re-reads the run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog
from sqlalchemy import update

from bot.db.models import Approval, Repository, Run, RunState
from bot.github.repo import RepoPort
from bot.repoconfig import RepoConfig
from bot.review import Approve, RunSnapshot, approval_status, sha_matches
from bot.runs import IllegalTransition, append_event, transition
from jobs.context import JobContext
from jobs.partial_approval import (
    BranchMoved,
    NothingApproved,
    Revert,
    conflicting_paths,
    revert_unapproved,
    scratch_clone,
)
from jobs.review_records import note_on_status, rewrite_manifest, snapshot
from sandboxes.errors import WorkspaceError

log = structlog.get_logger("jobs.review_merge")

MERGE_LOCK_SECONDS = 600


async def move(bosun: JobContext, run: Run, target: RunState, actor: str, reason: str) -> bool:
    """Move ``run`` to ``target``; False (and nothing changed) when the state machine refuses,
    e.g. because a concurrent command moved it first."""
    async with bosun.services.sessions.begin() as session:
        row = await session.get(Run, run.id, populate_existing=True)
        assert row is not None
        try:
            await transition(session, row, target, actor=actor, reason=reason)
        except IllegalTransition as exc:
            log.info("run_transition_refused", target=target.value, error=str(exc))
            run.state = row.state
            return False
        run.state = row.state
    return True


async def record_approval(
    bosun: JobContext,
    port: RepoPort,
    run: Run,
    decision: Approve,
    config: RepoConfig,
    number: int,
    source: str,
) -> None:
    """Store the approval; once the approvals on the head suffice, approve the run and complete
    it (revert the files left out, merge)."""
    async with bosun.services.sessions.begin() as session:
        session.add(
            Approval(
                run_id=run.id,
                actor=decision.actor,
                sha=decision.sha,
                paths=list(decision.paths),
                general=decision.general,
                source=source,
            )
        )
    status = approval_status(await snapshot(bosun, run), config)
    if not status.satisfied:
        missing = "".join(
            f" `{glob}` still needs one of {', '.join(f'@{o}' for o in owners) or 'nobody'}."
            for glob, owners in status.missing_path_approvers.items()
        )
        await port.create_comment(
            number,
            f"Approval by @{decision.actor} recorded ({status.have}/{status.need}); "
            f"waiting for more.{missing}",
        )
        await note_on_status(bosun, port, run, f"@{decision.actor} approved")
        return
    if not await move(bosun, run, RunState.APPROVED, decision.actor, "approvals satisfied"):
        await port.create_comment(
            number,
            f"@{decision.actor}, your approval is recorded; the run is already "
            f"{run.state.value.replace('_', ' ')}.",
        )
        return
    await complete_approval(bosun, port, run.id, config, decision.actor, number)


async def complete_approval(
    bosun: JobContext, port: RepoPort, run_id: str, config: RepoConfig, actor: str, number: int
) -> None:
    """An ``approved`` run: unless on hold, keep only the approved files and merge (when
    ``merge.auto_merge``). Safe to call twice: one caller holds the lock, the other returns."""
    redis = bosun.services.redis
    lock = bosun.settings.redis.key("merging", run_id)
    if not await redis.set(lock, actor, nx=True, ex=MERGE_LOCK_SECONDS):
        log.info("approval_completion_busy", run_id=run_id)
        return
    try:
        async with bosun.services.sessions() as session:
            run = await session.get(Run, run_id, populate_existing=True)
            repository = await session.get(Repository, run.repository_id) if run else None
        if run is None or repository is None or run.state is not RunState.APPROVED:
            return
        if run.on_hold:
            note = "Approved; the run is on hold, so nothing is merged until `/unhold`."
            await port.create_comment(number, note)
            await note_on_status(bosun, port, run, note)
            await rewrite_manifest(bosun, run.id)
            return
        await _complete(bosun, port, run, repository, config, actor, number)
    finally:
        await redis.delete(lock)


async def _complete(
    bosun: JobContext,
    port: RepoPort,
    run: Run,
    repository: Repository,
    config: RepoConfig,
    actor: str,
    number: int,
) -> None:
    base_branch = repository.default_branch
    if run.pr_number is not None:
        base_branch = (await port.get_pull(run.pr_number)).base_ref
    shot = await snapshot(bosun, run)
    review: dict[str, Any] = {}
    if _partial(shot):
        try:
            revert = await _revert(bosun, port, run, shot, config, base_branch)
        except (BranchMoved, NothingApproved, WorkspaceError) as exc:
            await _back_to_review(
                bosun,
                port,
                run,
                number,
                f"could not keep only the approved "
                f"files: {exc}. Nothing was merged; review and `/approve` again.",
            )
            return
        review["partial_approval"] = {
            "approved_sha": revert.approved_sha,
            "revert_commit": revert.commit,
            "base_sha": revert.base_sha,
            "kept": list(revert.kept),
            "reverted": list(revert.reverted),
        }
        if revert.commit:
            reverted = ", ".join(f"`{p}`" for p in revert.reverted)
            await port.create_comment(
                number,
                f"Kept only the approved files: reverted {reverted} to the base in "
                f"`{revert.commit[:12]}`.",
            )
    if not config.merge.auto_merge or run.pr_number is None:
        note = f"Approved by @{actor}; merging is left to you (`merge.auto_merge` is off)."
        await port.create_comment(number, note)
        await note_on_status(bosun, port, run, note)
        await rewrite_manifest(bosun, run.id, review)
        return
    head = run.head_sha or ""
    outcome = await port.merge_pull(run.pr_number, sha=head, method=config.merge.method)
    if not outcome.merged and (await port.get_pull(run.pr_number)).merged:
        outcome = replace(outcome, merged=True)  # merged meanwhile (by a human or a retry)
    if outcome.merged:
        await move(bosun, run, RunState.MERGED, actor, f"merged as {outcome.sha or head}")
        review["merge"] = {"sha": outcome.sha, "method": config.merge.method, "head_sha": head}
        await note_on_status(bosun, port, run, f"Merged #{run.pr_number} (approved by @{actor}).")
        await rewrite_manifest(bosun, run.id, review)
        return
    conflicts: list[str] = []
    if outcome.status == 405:
        conflicts = await _conflicts(bosun, port, head, base_branch)
    review["merge"] = {"failed": outcome.message, "status": outcome.status, "conflicts": conflicts}
    if conflicts:
        names = ", ".join(f"`{p}`" for p in conflicts)
        why = (
            f"merging #{run.pr_number} into `{base_branch}` conflicts on {names}. Update the "
            f"branch (or `/retry` with instructions), then `/approve` again."
        )
    else:
        why = f"merging #{run.pr_number} failed ({outcome.status}): {outcome.message}"
    await _back_to_review(bosun, port, run, number, why, review)


def _partial(shot: RunSnapshot) -> bool:
    return any(
        a.paths and a.valid and a.general and sha_matches(a.sha, shot.head_sha)
        for a in shot.approvals
    )


async def _revert(
    bosun: JobContext,
    port: RepoPort,
    run: Run,
    shot: RunSnapshot,
    config: RepoConfig,
    base_branch: str,
) -> Revert:
    """Push the revert commit of the files the partial approvals leave out."""
    approved = run.head_sha or ""

    def split(paths: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        status = approval_status(replace(shot, changed_paths=tuple(paths)), config)
        return status.keep, status.revert

    def message(keep: tuple[str, ...], revert: tuple[str, ...]) -> str:
        approvers = sorted({f"@{a.actor}" for a in shot.approvals if a.valid and a.paths})
        return "\n".join(
            [
                f"Keep only the approved files (#{run.pr_number})",
                "",
                "Kept: " + ", ".join(keep),
                "Reverted to the base: " + ", ".join(revert),
                "",
                f"Bosun-Run: {run.id}",
                *(f"Approved-by: {a}" for a in approvers),
            ]
        )

    async def before_push(commit: str) -> None:
        await _set_head(bosun, run, commit)

    auth = await port.git_auth_header()
    async with scratch_clone(bosun.workspaces, port.full_name, port.clone_url(), auth) as clone:
        try:
            revert = await revert_unapproved(
                clone,
                branch=run.branch or "",
                base_branch=base_branch,
                approved_sha=approved,
                split=split,
                message=message,
                identity=bosun.commit_identity(),
                before_push=before_push,
            )
        except BaseException:
            if run.head_sha != approved:
                await _set_head(bosun, run, approved)
            raise
    async with bosun.services.sessions.begin() as session:
        await append_event(
            session,
            run.id,
            "policy",
            {
                "rule": "approval.partial",
                "decision": "revert" if revert.commit else "keep_all",
                "approved_sha": approved,
                "commit": revert.commit,
                "kept": list(revert.kept),
                "reverted": list(revert.reverted),
            },
        )
    log.info("partial_approval_applied", commit=revert.commit, reverted=len(revert.reverted))
    return revert


async def _set_head(bosun: JobContext, run: Run, sha: str) -> None:
    """Record the PR head Bosun is about to push, so its own ``synchronize`` is recognised."""
    async with bosun.services.sessions.begin() as session:
        await session.execute(update(Run).where(Run.id == run.id).values(head_sha=sha))
    run.head_sha = sha


async def _conflicts(bosun: JobContext, port: RepoPort, head: str, base_branch: str) -> list[str]:
    """GitHub's 405 names no paths: compute them on the host with ``git merge-tree``."""
    try:
        auth = await port.git_auth_header()
        async with scratch_clone(bosun.workspaces, port.full_name, port.clone_url(), auth) as c:
            return await conflicting_paths(c, base_branch, head)
    except WorkspaceError as exc:
        log.warning("conflict_paths_failed", error=str(exc)[:300])
        return []


async def _back_to_review(
    bosun: JobContext,
    port: RepoPort,
    run: Run,
    number: int,
    why: str,
    review: dict[str, Any] | None = None,
) -> None:
    await move(bosun, run, RunState.REVIEW_READY, "bosun", why[:500])
    text = why[0].upper() + why[1:]
    await port.create_comment(number, text)
    await note_on_status(bosun, port, run, text)
    await rewrite_manifest(bosun, run.id, review)
