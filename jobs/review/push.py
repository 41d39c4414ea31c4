"""A push to a run's PR branch (``pull_request.synchronize``): approvals are bound to the head
SHA, and a push that changes the tree invalidates them (SPEC §8). A push that keeps the tree
(an empty amend, a rebase to the same content) rebinds them to the new head instead.

A push is decided like a command, in the run's serialised step (``jobs.review.step``), on the
run as it is when its turn comes: an ``approved`` run goes back to review, a run merged
meanwhile ignores it, a ``review_ready`` run only loses the approvals. The head adopted is
the PR's head as GitHub reports it at that moment, so deliveries that arrive out of order,
twice or late all end at GitHub's head; a decision that lost a race is made again, never
turned into a failed delivery.

Trees are compared through the Git data API (``GET /repos/{o}/{r}/git/commits/{sha}`` →
``tree.sha``): the commit the approvals were bound to against the new head.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from sqlalchemy import update

from bot.db.models import Approval, Run
from bot.db.runlog import append_event, transition
from bot.domain.payloads import ParsedEvent
from bot.domain.review import REVIEWABLE, RunSnapshot, decide_push, sha_matches
from bot.domain.review.checks import AWAITING_CHECKS
from bot.domain.states import RunState
from bot.forge.port import Forge
from jobs.context import JobContext
from jobs.review.records import find_run, note_on_status, rewrite_manifest
from jobs.review.step import claim, received_at, serialised

log = structlog.get_logger("jobs.review.push")


async def same_tree(port: Forge, old: str | None, new: str) -> tuple[bool, str | None]:
    """Whether commits ``old`` and ``new`` hold the same tree, and the new tree's SHA. An
    unknown commit counts as a change (approvals are only kept when provably unchanged)."""
    new_tree = await port.commit_tree(new)
    if not old or new_tree is None:
        return False, new_tree
    return await port.commit_tree(old) == new_tree, new_tree


async def handle_push(
    bosun: JobContext, port: Forge, event: ParsedEvent, delivery_id: str = ""
) -> str:
    """Rebind approvals to a same-tree head, or invalidate them and send an approved run back
    to review; the status comment's review section says which."""
    assert event.pull_request is not None
    number = event.pull_request.number
    found = await find_run(bosun, port.full_name, number)
    if found is None:
        return "ignored: no Bosun run on this PR"
    run = found[0]
    if event.pull_request.head_sha == run.head_sha:
        return "ignored: the run is at this head already (Bosun's own push, or adopted)"
    if run.state not in REVIEWABLE:
        # Before review the pipeline owns the branch and its head; after the end nothing binds.
        return f"ignored: the run is {run.state.value}"
    announced = event.pull_request.head_sha
    received = await received_at(bosun, delivery_id) if delivery_id else None

    async def step(_row: Run, shot: RunSnapshot) -> str:
        return await sync_head(bosun, port, shot, number, announced=announced, received=received)

    return await serialised(bosun, run.id, step)


async def sync_head(
    bosun: JobContext,
    port: Forge,
    shot: RunSnapshot,
    number: int,
    *,
    announced: str | None = None,
    received: datetime | None = None,
) -> str:
    """Bring the run's head up to the PR's head on GitHub, deciding on ``shot`` (read in the
    caller's serialised step) what that does to the approvals. ``announced``/``received``: the
    head a push delivery named and when it arrived; the head is reviewable from then on (from
    now when GitHub's head is already a later one)."""
    if shot.state not in REVIEWABLE:
        return f"ignored: the run is {shot.state.value}"
    new_head = (await port.get_pull(number)).head_sha
    if sha_matches(new_head, shot.head_sha):
        return "ignored: the head did not move (an older push, or Bosun's own)"
    unchanged, tree = await same_tree(port, shot.head_sha, new_head)
    decision = decide_push(shot, new_head, same_tree=unchanged)
    if decision.kind == "ignore":
        return f"ignored: {decision.reason}"
    now = datetime.now(UTC)
    since = received if received is not None and new_head == announced else now
    ids = [a.id for a in decision.approvals if a.id is not None]
    async with bosun.services.sessions.begin() as session:
        await claim(session, shot.run_id, shot.version)
        if ids and unchanged:
            await session.execute(update(Approval).where(Approval.id.in_(ids)).values(sha=new_head))
        elif ids:
            await session.execute(
                update(Approval)
                .where(Approval.id.in_(ids))
                .values(
                    invalidated_at=now,
                    invalidated_reason=f"the branch moved to {new_head[:12]}, changing the files",
                )
            )
        row = await session.get(Run, shot.run_id, populate_existing=True)
        assert row is not None
        row.head_sha, row.head_since = new_head, since
        await append_event(
            session,
            shot.run_id,
            "policy",
            {
                "rule": decision.rule,
                "decision": decision.kind,
                "from_sha": shot.head_sha,
                "head_sha": new_head,
                "tree_sha": tree,
                "approvals": len(ids),
            },
        )
        if decision.back_to_review:
            if row.phase == AWAITING_CHECKS:
                row.phase = None  # approvals must be given again: nothing waits to merge
            await transition(
                session,
                row,
                RunState.REVIEW_READY,
                actor="bosun",
                reason="a push changed the files; approvals must be given again",
            )
    count = len(ids)
    if unchanged:
        note = (
            f"The branch moved to `{new_head[:12]}` with the same files (tree "
            f"`{(tree or '')[:12]}`): {count} approval(s) still count."
        )
    else:
        note = (
            f"The branch moved to `{new_head[:12]}` and the files changed: {count} approval(s) "
            "given on the previous head no longer count. Review the new changes and "
            "`/approve` again."
        )
        if count:
            await port.create_comment(number, note)
    await note_on_status(bosun, port, row, note)
    await rewrite_manifest(bosun, shot.run_id)
    log.info("run_head_moved", head=new_head, tree_changed=not unchanged, approvals=count)
    verdict = "kept" if unchanged else "invalidated"
    return f"processed: head moved, {count} approval(s) {verdict}"
