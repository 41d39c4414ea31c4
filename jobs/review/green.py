"""Merge when green, the waiting side: an approved run whose merge waits for required checks
(``jobs.review.merge``, phase ``awaiting checks``) is looked at again when a check reports —
``check_run.completed``, ``check_suite.completed`` and ``status`` webhooks on its head — and
by a slow timer (``recheck_waiting``, a worker cron job) that catches a webhook GitHub never
delivered and ends a wait that lasted too long. Nothing polls inside a job: a waiting run
holds no worker slot.

Each look is one serialised step (``jobs.review.step``): under the run's lock, on the run as
it is now, ``complete_approval`` reads the checks again and merges, keeps waiting, or sends the
run back to review naming the failed check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from bot.db.models import Approval, Repository, Run
from bot.domain.payloads import ParsedEvent
from bot.domain.repoconfig import RepoConfig
from bot.domain.review.checks import AWAITING_CHECKS
from bot.domain.states import RunState
from bot.errors import ConflictError
from bot.forge.port import Forge, ForgeError
from jobs.context import JobContext, job_context
from jobs.review.merge import back_to_review, complete_approval
from jobs.review.step import serialised

log = structlog.get_logger("jobs.review.green")


async def handle_checks_changed(bosun: JobContext, port: Forge, event: ParsedEvent) -> str:
    """A check reported on a commit: look again at the approved runs waiting on it."""
    changed = event.checks_changed
    assert changed is not None
    own = bosun.settings.github.app_id
    if changed.app_id is not None and own is not None and changed.app_id == own:
        return "ignored: Bosun's own check"
    runs = await _waiting(bosun, repository=port.full_name, sha=changed.sha)
    if not runs:
        return f"ignored: no run waits for checks on {changed.sha[:12]}"
    for run_id in runs:
        await recheck(bosun, port, run_id)
    return f"processed: checks re-read for {len(runs)} waiting run(s)"


async def recheck(bosun: JobContext, port: Forge, run_id: str) -> str:
    """Read the checks of one waiting run again (merge, wait on, or back to review)."""

    async def step(row: Run, _shot: Any) -> str:
        if row.state is not RunState.APPROVED or row.phase != AWAITING_CHECKS:
            return "not waiting"
        config = RepoConfig.model_validate(row.repo_config or {})
        number = row.pr_number or 0
        limit = timedelta(hours=bosun.settings.worker.merge_wait_hours)
        since = row.state_since
        if since is not None and _utc(since) + limit < datetime.now(UTC):
            hours = bosun.settings.worker.merge_wait_hours
            why = (
                f"nothing was merged: the required checks did not all pass within {hours:g} "
                "hours of the approval. `/approve` again to wait once more."
            )
            await back_to_review(bosun, port, row, number, why)
            return "wait ended"
        await complete_approval(bosun, port, row.id, config, await _approver(bosun, row), number)
        return "re-checked"

    return await serialised(bosun, run_id, step)


async def recheck_waiting(ctx: dict[str, Any]) -> dict[str, Any]:
    """The slow timer: every approved run waiting for checks is looked at once."""
    bosun = job_context(ctx)
    done = 0
    for run_id in await _waiting(bosun):
        async with bosun.services.sessions() as session:
            run = await session.get(Run, run_id)
            repository = await session.get(Repository, run.repository_id) if run else None
        if repository is None:
            continue
        try:
            await recheck(bosun, bosun.forge(repository), run_id)
            done += 1
        except (ConflictError, ForgeError) as exc:  # busy or GitHub away: the next tick
            log.warning("merge_recheck_failed", run_id=run_id, error=repr(exc)[:300])
    return {"rechecked": done}


async def _waiting(
    bosun: JobContext, *, repository: str | None = None, sha: str | None = None
) -> list[str]:
    query = select(Run.id).where(Run.state == RunState.APPROVED, Run.phase == AWAITING_CHECKS)
    if repository is not None:
        query = query.join(Repository, Repository.id == Run.repository_id).where(
            Repository.full_name == repository
        )
    if sha is not None:
        query = query.where(Run.head_sha == sha)
    async with bosun.services.sessions() as session:
        return list((await session.execute(query.limit(200))).scalars())


async def _approver(bosun: JobContext, run: Run) -> str:
    """Who the merge is credited to: the latest valid approval's author."""
    async with bosun.services.sessions() as session:
        actor = (
            await session.execute(
                select(Approval.actor)
                .where(Approval.run_id == run.id, Approval.invalidated_at.is_(None))
                .order_by(Approval.id.desc())
                .limit(1)
            )
        ).scalar()
    return actor or "bosun"


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
