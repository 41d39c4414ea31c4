"""A push to a run's PR branch (``pull_request.synchronize``): approvals are bound to the head
SHA, and a push that changes the tree invalidates them (SPEC §8). A push that keeps the tree
(an empty amend, a rebase to the same content) rebinds them to the new head instead.

Trees are compared through the Git data API (``GET /repos/{o}/{r}/git/commits/{sha}`` →
``tree.sha``): the commit the approvals were bound to against the new head.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from sqlalchemy import update

from bot.db.models import Approval, Run, RunState
from bot.events import ParsedEvent
from bot.github.repo import RepoPort
from bot.review import REVIEWABLE
from bot.runs import append_event, transition
from jobs.context import JobContext
from jobs.review_records import find_run, note_on_status, rewrite_manifest

log = structlog.get_logger("jobs.review_push")


async def same_tree(port: RepoPort, old: str | None, new: str) -> tuple[bool, str | None]:
    """Whether commits ``old`` and ``new`` hold the same tree, and the new tree's SHA. An
    unknown commit counts as a change (approvals are only kept when provably unchanged)."""
    new_tree = await port.commit_tree(new)
    if not old or new_tree is None:
        return False, new_tree
    return await port.commit_tree(old) == new_tree, new_tree


async def handle_push(bosun: JobContext, port: RepoPort, event: ParsedEvent) -> str:
    """Rebind approvals to a same-tree head, or invalidate them and send an approved run back
    to review; the status comment's review section says which."""
    assert event.pull_request is not None
    number = event.pull_request.number
    found = await find_run(bosun, port.full_name, number)
    if found is None:
        return "ignored: no Bosun run on this PR"
    run = found[0]
    new_head = event.pull_request.head_sha
    if new_head == run.head_sha:
        return "ignored: Bosun's own push"
    if run.state not in REVIEWABLE:
        # Before review the pipeline owns the branch and its head; after the end nothing binds.
        return f"ignored: the run is {run.state.value}"
    old_head = run.head_sha
    unchanged, tree = await same_tree(port, old_head, new_head)
    now = datetime.now(UTC)
    async with bosun.services.sessions.begin() as session:
        row = await session.get(Run, run.id, populate_existing=True)
        assert row is not None
        if row.head_sha == new_head:
            return "ignored: Bosun's own push"
        live = (Approval.run_id == run.id) & Approval.invalidated_at.is_(None)
        if unchanged:
            result = await session.execute(
                update(Approval).where(live, Approval.sha == (old_head or "")).values(sha=new_head)
            )
        else:
            result = await session.execute(
                update(Approval)
                .where(live)
                .values(
                    invalidated_at=now,
                    invalidated_reason=f"the branch moved to {new_head[:12]}, changing the files",
                )
            )
        count: int = result.rowcount  # type: ignore[attr-defined]
        row.head_sha = new_head
        await append_event(
            session,
            run.id,
            "policy",
            {
                "rule": "approval.bound_to_tree",
                "decision": "rebind" if unchanged else "invalidate",
                "from_sha": old_head,
                "head_sha": new_head,
                "tree_sha": tree,
                "approvals": count,
            },
        )
        if row.state is RunState.APPROVED and not unchanged:
            await transition(
                session,
                row,
                RunState.REVIEW_READY,
                actor="bosun",
                reason="a push changed the files; approvals must be given again",
            )
        run.state, run.head_sha = row.state, row.head_sha
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
    await note_on_status(bosun, port, run, note)
    await rewrite_manifest(bosun, run.id)
    log.info("run_head_moved", head=new_head, tree_changed=not unchanged, approvals=count)
    verdict = "kept" if unchanged else "invalidated"
    return f"processed: head moved, {count} approval(s) {verdict}"
