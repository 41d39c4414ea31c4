"""From approval to merge (SPEC §8): once the approvals on the head suffice the run is
``approved``; completing it keeps only the approved files of a partial approval (a revert
commit pushed before the merge) and merges — or, on a conflict, names the conflicting paths
and leaves the run ``review_ready``.

Merge only what was approved. Completing an approval runs inside the run's serialised step
(``jobs.review.step``: the caller holds the run's lock), and right before the merge call it
reads the run again and re-checks that the approvals it counts cover exactly the head it is
about to merge (``bot.domain.review.merge_refusal``). The merge names that head (GitHub's ``sha``
parameter): if the branch moved meanwhile GitHub refuses with 409, Bosun adopts the new head
as a push would (invalidating the approvals when the files changed) and merges nothing.
Exactly one merge: every approval of a run is decided in turn on the run as it is then.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update

from bot.db.models import Repository, Run, RunEvent
from bot.db.runlog import IllegalTransition, append_event, transition
from bot.domain.limits import clip, listing
from bot.domain.repoconfig import RepoConfig
from bot.domain.review import Approve, RunSnapshot, approval_status, merge_refusal, sha_matches
from bot.domain.review.checks import AWAITING_CHECKS, Green, Waiting, checks_verdict
from bot.domain.states import RunState
from bot.domain.status import CHECK_NAME, CheckRunUpdate
from bot.forge.port import (
    Conflict,
    Forge,
    ForgeError,
    HeadMoved,
    Merged,
    MergeOutcome,
    merge_reason,
)
from jobs.context import JobContext
from jobs.review.push import sync_head
from jobs.review.records import note_on_status, read_run, record_ended, rewrite_manifest
from sandboxes.errors import WorkspaceError
from sandboxes.revert import (
    BranchMoved,
    NothingApproved,
    Revert,
    conflicting_paths,
    revert_unapproved,
    scratch_clone,
)

log = structlog.get_logger("jobs.review.merge")

MERGE_ATTEMPTS = 3
"""Merges tried in one step: a push that keeps the files rebinds the approvals to the new
head, and the merge is tried again at that head."""


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


async def waiting_note(
    bosun: JobContext, run_id: str, decision: Approve, config: RepoConfig
) -> str:
    """The reply to an approval that does not suffice yet."""
    found = await read_run(bosun, run_id)
    assert found is not None
    status = approval_status(found[1], config)
    missing = " ".join(
        f"`{clip(glob, 120)}` still needs one of {listing(owners, show=_at) or 'nobody'}."
        for glob, owners in list(status.missing_path_approvers.items())[:10]
    )
    return (
        f"Approval by @{decision.actor} recorded ({status.have}/{status.need}); "
        f"waiting for more. {missing}"
    ).strip()


def _at(login: str) -> str:
    return f"@{clip(login, 60)}"


async def complete_approval(
    bosun: JobContext, port: Forge, run_id: str, config: RepoConfig, actor: str, number: int
) -> None:
    """An ``approved`` run: unless on hold, keep only the approved files and merge (when
    ``merge.auto_merge``). The caller holds the run's lock; a run that is not ``approved``
    (merged already, rejected, back in review) is left as it is."""
    for _attempt in range(MERGE_ATTEMPTS):
        found = await read_run(bosun, run_id)
        if found is None:
            return
        run, shot = found
        if shot.state is not RunState.APPROVED:
            return
        if shot.on_hold:
            note = "Approved; the run is on hold, so nothing is merged until `/unhold`."
            await port.create_comment(number, note)
            await note_on_status(bosun, port, run, note)
            await rewrite_manifest(bosun, run.id)
            return
        if not await _complete(bosun, port, run, shot, config, actor, number):
            return
    why = (
        "the branch kept moving while Bosun was merging; nothing was merged. Once it is "
        "quiet, `/approve` again."
    )
    found = await read_run(bosun, run_id)
    if found is not None and found[1].state is RunState.APPROVED:
        await back_to_review(bosun, port, found[0], number, why)


async def _complete(
    bosun: JobContext,
    port: Forge,
    run: Run,
    shot: RunSnapshot,
    config: RepoConfig,
    actor: str,
    number: int,
) -> bool:
    """One try at completing ``run``; True when the head moved to one the approvals still
    cover (same files) and merging should be tried again there."""
    head = shot.head_sha or ""
    approved = await _approved_head(bosun, run.id, head)
    refusal = merge_refusal(shot, config, approved, head)
    if refusal is not None:
        await back_to_review(bosun, port, run, number, f"nothing was merged: {refusal}.")
        return False
    async with bosun.services.sessions() as session:
        repository = await session.get(Repository, run.repository_id)
    base_branch = repository.default_branch if repository else "main"
    if run.pr_number is not None:
        base_branch = (await port.get_pull(run.pr_number)).base_ref
    review: dict[str, Any] = {}
    merge_sha = head
    if approved == head and _partial(shot):
        try:
            revert = await _revert(bosun, port, run, shot, config, base_branch)
        except (BranchMoved, NothingApproved, WorkspaceError) as exc:
            why = (
                f"could not keep only the approved files: {clip(str(exc), 500)}. Nothing was "
                "merged; review and `/approve` again."
            )
            await back_to_review(bosun, port, run, number, why)
            return False
        merge_sha = revert.commit or approved
        review["partial_approval"] = {
            "approved_sha": revert.approved_sha,
            "revert_commit": revert.commit,
            "base_sha": revert.base_sha,
            "kept": list(revert.kept),
            "reverted": list(revert.reverted),
        }
        if revert.commit:
            await port.create_comment(
                number,
                f"Kept only the approved files: reverted {listing(revert.reverted)} to the "
                f"base in `{revert.commit[:12]}`.",
            )
    method = port.merge_method(config)
    if method is None or run.pr_number is None:
        note = f"Approved by @{actor}; merging is left to you (`{port.merge_setting}` is off)."
        await port.create_comment(number, note)
        await note_on_status(bosun, port, run, note)
        await rewrite_manifest(bosun, run.id, review)
        return False
    if not await _checks_pass(bosun, port, run, merge_sha, base_branch, number, review):
        return False  # waiting for required checks (re-checked on their webhooks), or failed
    # The re-check inside the step that merges: the run read now is still approved, at the
    # head about to be merged, and the approvals counted cover exactly the approved head.
    now = await read_run(bosun, run.id)
    refusal = (
        "the run is gone" if now is None else merge_refusal(now[1], config, approved, merge_sha)
    )
    if refusal is not None:
        await back_to_review(bosun, port, run, number, f"nothing was merged: {refusal}.")
        return False
    outcome = await _merge(port, run.pr_number, merge_sha, method)
    if isinstance(outcome, Merged):
        await _merged(bosun, run.id, actor, outcome.sha, merge_sha)
        review["merge"] = {
            "sha": outcome.sha,
            "method": method,
            "head_sha": merge_sha,
            "approved_sha": approved,
        }
        await note_on_status(
            bosun,
            port,
            run,
            f"Merged #{run.pr_number} at `{merge_sha[:12]}` (approved by @{actor}).",
        )
        await rewrite_manifest(bosun, run.id, review)
        return False
    if isinstance(outcome, HeadMoved):
        return await _head_moved(bosun, port, run, number, merge_sha, review, outcome)
    conflicts: list[str] = []
    if isinstance(outcome, Conflict):
        conflicts = list(outcome.paths) or await _conflicts(bosun, port, merge_sha, base_branch)
    review["merge"] = {
        "failed": outcome.message,
        "status": outcome.status,
        "reason": merge_reason(outcome),
        "conflicts": conflicts,
    }
    if conflicts:
        why = (
            f"merging #{run.pr_number} into `{base_branch}` conflicts on {listing(conflicts)}. "
            "Update the branch (or `/retry` with instructions), then `/approve` again."
        )
    else:
        code = f" ({outcome.status})" if outcome.status is not None else ""
        why = f"merging #{run.pr_number} failed{code}: {clip(outcome.message, 300)}"
    await back_to_review(bosun, port, run, number, why, review)
    return False


async def _checks_pass(
    bosun: JobContext,
    port: Forge,
    run: Run,
    sha: str,
    base_branch: str,
    number: int,
    review: dict[str, Any],
) -> bool:
    """Merge when green: True when every check the base branch requires passed on ``sha``
    (and Bosun's gates did). Otherwise the run waits, ``approved``, marked ``awaiting
    checks`` and shown so in the status comment and check run (re-checked when a check
    reports: ``jobs.review.green``), or goes back to review naming the failed check."""
    report = await port.checks(sha, base_branch)
    verdict = checks_verdict(
        report, gates_passed=run.gates_passed, own_app_id=bosun.settings.github.app_id
    )
    was_waiting = run.phase == AWAITING_CHECKS
    if isinstance(verdict, Green):
        # A base branch that requires `bosun` itself merges only on a passing one: say so.
        if was_waiting or CHECK_NAME in report.required:
            await _set_phase(bosun, run, None)
            passed = listing(verdict.passed) if verdict.passed else "none were required"
            await _show_check(
                bosun,
                port,
                run,
                sha,
                CheckRunUpdate(
                    title="Required checks passed",
                    summary=f"Passed: {passed}. Merging `{sha[:12]}`.",
                    status="completed",
                    conclusion="success",
                ),
                opened=was_waiting,
            )
        return True
    if isinstance(verdict, Waiting):
        text = f"Approved; {verdict.describe()}. Bosun merges `{sha[:12]}` once they pass."
        if not was_waiting or await _last_wait(bosun, run.id) != text:
            await _set_phase(bosun, run, AWAITING_CHECKS)
            async with bosun.services.sessions.begin() as session:
                await append_event(
                    session,
                    run.id,
                    "policy",
                    {"rule": "merge.checks", "decision": "wait", "message": text[:2000]},
                )
            await note_on_status(bosun, port, run, text)
            update_ = CheckRunUpdate(
                title="Waiting for required checks", summary=text, status="in_progress"
            )
            await _show_check(bosun, port, run, sha, update_, opened=was_waiting)
        return False
    await _set_phase(bosun, run, None)  # (was_waiting, read before, says whose check run is open)
    if verdict.name == CHECK_NAME:
        why = (
            "nothing was merged: Bosun's own gates did not pass on this change. `/retry` with "
            "instructions, then `/approve` again."
        )
    else:
        why = (
            f"nothing was merged: {verdict.describe()} on `{sha[:12]}`. Fix it (or `/retry` "
            "with instructions), then `/approve` again."
        )
    review["merge"] = {"blocked_by": verdict.name, "detail": verdict.detail, "head_sha": sha}
    async with bosun.services.sessions.begin() as session:
        await append_event(
            session,
            run.id,
            "policy",
            {
                "rule": "merge.checks",
                "decision": "refuse",
                "check": verdict.name[:200],
                "detail": verdict.detail[:100],
            },
        )
    failed = CheckRunUpdate(
        title=f"Required check {clip(verdict.name, 80)} did not pass",
        summary=why[0].upper() + why[1:],
        status="completed",
        conclusion="failure",
    )
    await _show_check(bosun, port, run, sha, failed, opened=was_waiting)
    await back_to_review(bosun, port, run, number, why, review)
    return False


async def _set_phase(bosun: JobContext, run: Run, phase: str | None) -> None:
    async with bosun.services.sessions.begin() as session:
        await session.execute(update(Run).where(Run.id == run.id).values(phase=phase))
    run.phase = phase


async def _last_wait(bosun: JobContext, run_id: str) -> str | None:
    """The text of the run's latest "waiting for checks" note (shown only when it changes)."""
    async with bosun.services.sessions() as session:
        events = await session.execute(
            select(RunEvent.data)
            .where(RunEvent.run_id == run_id, RunEvent.kind == "policy")
            .order_by(RunEvent.seq.desc())
            .limit(20)
        )
        for data in events.scalars():
            if data.get("rule") == "merge.checks":
                return str(data.get("message")) if data.get("decision") == "wait" else None
    return None


async def _show_check(
    bosun: JobContext, port: Forge, run: Run, sha: str, update_: CheckRunUpdate, *, opened: bool
) -> None:
    """The `bosun` check run says what the merge waits for, or why it did not happen.

    GitHub never reopens a completed check run (its status and conclusion are final), and the
    pipeline completed the run's own: the first note of a merge gets a new check run on the
    head (it becomes the run's, buttons included), which later notes update (``opened``)."""
    fields = replace(update_, title=clip(update_.title, 200), summary=update_.summary[:60000])
    try:
        if opened and run.check_run_id:
            await port.update_check_run(run.check_run_id, fields)
            return
        check_id = await port.create_check_run(sha, fields)
    except ForgeError as exc:
        log.warning("merge_check_run_failed", error=repr(exc)[:300])
        return
    async with bosun.services.sessions.begin() as session:
        await session.execute(update(Run).where(Run.id == run.id).values(check_run_id=check_id))
    run.check_run_id = check_id


async def _merge(port: Forge, pr: int, sha: str, method: str) -> MergeOutcome:
    """Merge ``pr`` if its head is ``sha``. An answer lost on the way (the forge failed after
    retries, or says the change is no longer mergeable) is settled by reading the change."""
    try:
        outcome = await port.merge_pull(pr, sha=sha, method=method)
    except ForgeError:
        pull = await port.get_pull(pr)  # raises too: the delivery is retried and resumes
        if not (pull.merged and pull.head_sha == sha):
            raise
        return Merged(None, "merged (the answer was lost)")
    if isinstance(outcome, Conflict) and not outcome.paths:
        pull = await port.get_pull(pr)
        if pull.merged and pull.head_sha == sha:  # an earlier try of this merge went through
            return Merged(None, "merged by an earlier try")
    return outcome


async def _merged(
    bosun: JobContext, run_id: str, actor: str, merge_commit: str | None, head: str
) -> None:
    async with bosun.services.sessions.begin() as session:
        row = await session.get(Run, run_id, populate_existing=True)
        assert row is not None
        row.merged_sha = merge_commit
        try:
            await transition(
                session,
                row,
                RunState.MERGED,
                actor=actor,
                reason=f"merged {head} as {merge_commit}",
            )
        except IllegalTransition as exc:  # only if something outside the review loop moved it
            log.error("merged_run_moved", error=str(exc))
            await append_event(
                session,
                run_id,
                "error",
                {"error": f"merged on GitHub at {head}, but the run had moved: {exc}"},
            )
            return
    await record_ended(bosun, run_id)


async def _head_moved(
    bosun: JobContext,
    port: Forge,
    run: Run,
    number: int,
    merge_sha: str,
    review: dict[str, Any],
    outcome: HeadMoved,
) -> bool:
    """The forge refused the merge (GitHub: 409): the head is no longer ``merge_sha``. Adopt
    the new head as a push would; merge again only if the approvals still cover it (same
    files)."""
    assert run.pr_number is not None
    found = await read_run(bosun, run.id)
    if found is not None:
        await sync_head(bosun, port, found[1], number)
        found = await read_run(bosun, run.id)
    if found is not None and found[1].state is RunState.APPROVED:
        return True  # same files: the approvals follow the new head; merge there
    head = found[1].head_sha if found else None
    review["merge"] = {"refused": "head moved", "status": outcome.status, "head_sha": merge_sha}
    why = (
        f"{port.forge_name} refused to merge #{run.pr_number}: the branch moved from the approved "
        f"`{merge_sha[:12]}` to `{(head or 'another commit')[:12]}` before the merge. Nothing "
        "was merged; review the new commits and `/approve` again."
    )
    await port.create_comment(number, why)
    await note_on_status(bosun, port, run, why)
    await rewrite_manifest(bosun, run.id, review)
    return False


async def _approved_head(bosun: JobContext, run_id: str, head: str) -> str:
    """The head the approvals were given on: ``head``, unless ``head`` is the revert commit
    Bosun itself pushed for a partial approval (then the commit it was made on)."""
    async with bosun.services.sessions() as session:
        events = await session.execute(
            select(RunEvent.data)
            .where(RunEvent.run_id == run_id, RunEvent.kind == "policy")
            .order_by(RunEvent.seq.desc())
        )
        for data in events.scalars():
            if data.get("rule") == "approval.partial" and data.get("commit") == head:
                return str(data.get("approved_sha") or head)
    return head


def _partial(shot: RunSnapshot) -> bool:
    return any(
        a.paths and a.valid and a.general and sha_matches(a.sha, shot.head_sha)
        for a in shot.approvals
    )


async def _revert(
    bosun: JobContext,
    port: Forge,
    run: Run,
    shot: RunSnapshot,
    config: RepoConfig,
    base_branch: str,
) -> Revert:
    """Push the revert commit of the files the partial approvals leave out."""
    approved = shot.head_sha or ""

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
                "kept": list(revert.kept)[:200],
                "reverted": list(revert.reverted)[:200],
            },
        )
    log.info("partial_approval_applied", commit=revert.commit, reverted=len(revert.reverted))
    return revert


async def _set_head(bosun: JobContext, run: Run, sha: str) -> None:
    """Record the PR head Bosun is about to push (its own ``synchronize`` is then recognised);
    the run's version moves with it, and comments written before now are not about it."""
    async with bosun.services.sessions.begin() as session:
        await session.execute(
            update(Run)
            .where(Run.id == run.id)
            .values(head_sha=sha, head_since=datetime.now(UTC), version=Run.version + 1)
        )
    run.head_sha = sha


async def _conflicts(bosun: JobContext, port: Forge, head: str, base_branch: str) -> list[str]:
    """A conflict the forge names no paths for (GitHub's 405): compute them on the host with
    ``git merge-tree``."""
    try:
        auth = await port.git_auth_header()
        async with scratch_clone(bosun.workspaces, port.full_name, port.clone_url(), auth) as c:
            return await conflicting_paths(c, base_branch, head)
    except WorkspaceError as exc:
        log.warning("conflict_paths_failed", error=str(exc)[:300])
        return []


async def back_to_review(
    bosun: JobContext,
    port: Forge,
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
