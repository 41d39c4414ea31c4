"""The serialised step itself (``jobs.review.step``), on SQLite and the test Redis: a decision
that lost a race is made again on the new state, the lock keeps a second step out, and a
delivery that GitHub keeps failing ends with a visible trace on its run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from bot.db.models import Delivery, Run, RunEvent
from bot.domain.review import RunSnapshot
from bot.domain.states import RunState
from bot.forge.port import ForgeError
from jobs.deliveries.process import DELIVERY_TRIES, FORGE_OUTAGE_PATIENCE, process_delivery
from jobs.review.step import RunBusy, StaleRun, claim, run_lock, serialised
from tests.review_harness import Review


async def test_a_decision_that_lost_the_race_is_made_again_on_the_new_state(
    review: Review,
) -> None:
    run = await review.ready_run(status_comment=False)
    sessions = review.bosun.services.sessions
    seen: list[tuple[int, bool]] = []

    async def step(_row: Run, shot: RunSnapshot) -> str:
        seen.append((shot.version, shot.on_hold))
        if len(seen) == 1:  # something outside the step moves the run meanwhile
            async with sessions.begin() as session:
                await session.execute(
                    update(Run)
                    .where(Run.id == shot.run_id)
                    .values(on_hold=True, version=Run.version + 1)
                )
        async with sessions.begin() as session:
            await claim(session, shot.run_id, shot.version)
        return "decided"

    assert await serialised(review.bosun, run.run_id, step) == "decided"
    first, second = seen
    assert second == (first[0] + 1, True)  # decided again, on the run as it became


async def test_a_step_that_keeps_losing_gives_up_with_a_conflict(review: Review) -> None:
    run = await review.ready_run(status_comment=False)

    async def step(_row: Run, shot: RunSnapshot) -> str:
        raise StaleRun(shot.run_id)

    with pytest.raises(StaleRun):
        await serialised(review.bosun, run.run_id, step)


async def test_the_lock_keeps_a_second_step_out_until_released(review: Review) -> None:
    run = await review.ready_run(status_comment=False)
    async with run_lock(review.bosun, run.run_id):
        with pytest.raises(RunBusy):
            async with run_lock(review.bosun, run.run_id, wait=0.1):
                pass
        waiting = asyncio.ensure_future(_hold_briefly(review, run.run_id))
        await asyncio.sleep(0.1)
        assert not waiting.done()
    await asyncio.wait_for(waiting, 5)


async def test_a_lapsed_holder_never_releases_the_lock_someone_else_now_holds(
    review: Review,
) -> None:
    """The merge runs under the run's lock: its release is owner-checked (redis-py's ``Lock``
    token), so a holder whose lease lapsed while it worked cannot free the lock another step
    took meanwhile (a blind ``DEL`` would let a third step in beside it)."""
    run = await review.ready_run(status_comment=False)
    redis = review.bosun.services.redis
    key = review.bosun.settings.redis.key("review", run.run_id)
    async with run_lock(review.bosun, run.run_id):
        mine = await redis.get(key)
        assert mine  # a random token of this holder, not a constant
        await redis.set(key, b"another-holder", px=30_000)  # lapsed, and taken by another step
    assert await redis.get(key) == b"another-holder"
    with pytest.raises(RunBusy):
        async with run_lock(review.bosun, run.run_id, wait=0.1):
            pass
    await redis.delete(key)


async def _hold_briefly(review: Review, run_id: str) -> None:
    async with run_lock(review.bosun, run_id, wait=5):
        pass


async def test_a_delivery_github_keeps_failing_leaves_a_trace_on_its_run(review: Review) -> None:
    run = await review.ready_run()
    review.em.fault(
        "error", method="GET", path="/repos/*/*/collaborators/bob/permission", count=None
    )
    hook = await review.comment(run.pr, "/approve", "bob")
    # Failing through all five tries: handed back to the reconciler, which tries it again at
    # each pass while GitHub may come back (an outage loses no delivery)...
    assert await review.process(hook) == "waiting for the forge"
    assert (await review.deliveries())[hook.guid] == "received"
    assert len(review.retries) == 4  # five tries in all
    # ... and still failing an hour after it arrived: failed, with a trace on its run.
    async with review.bosun.services.sessions.begin() as session:
        aged = datetime.now(UTC) - FORGE_OUTAGE_PATIENCE - timedelta(minutes=1)
        await session.execute(
            update(Delivery).where(Delivery.id == hook.guid).values(received_at=aged)
        )
    with pytest.raises(ForgeError, match="502"):
        await process_delivery({"bosun": review.bosun, "job_try": DELIVERY_TRIES}, hook.guid)
    assert (await review.deliveries())[hook.guid] == "failed"
    async with review.bosun.services.sessions() as session:
        errors = (
            await session.execute(
                select(RunEvent.data).where(RunEvent.run_id == run.run_id, RunEvent.kind == "error")
            )
        ).scalars()
        (error,) = list(errors)
    assert error["delivery_id"] == hook.guid and error["event"] == "issue_comment.created"
    status = next(c for c in await review.comments(run.issue) if "bosun:status" in c)
    assert (
        "A `issue_comment.created` from @bob could not be processed after several tries" in status
    )
    assert (await review.run(run.run_id)).state is RunState.REVIEW_READY
    assert await review.approvals(run.run_id) == []
