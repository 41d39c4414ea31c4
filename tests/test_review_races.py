"""Approvals that cannot be outrun: the review loop under deliberate interleavings.

Each test holds one of GitHub's answers (the emulator's ``hold`` fault) or hands deliveries
over in a chosen order, so the race it is about happens every time:

1. an ``/approve`` whose permission lookup is slow while a push lands — nothing unapproved
   reaches the default branch, whichever of the two Bosun hears of first;
2. ``/approve`` and ``/reject`` together, or a ``/reject`` while the merge call is in flight
   — one consistent end that GitHub and Bosun agree on, and an honest answer to the loser;
3. a push racing every step of an approval — its invalidation is never lost;
4. floods in a comment — every reply fits GitHub's limits.
"""

from __future__ import annotations

import asyncio

import pytest

from bot.domain.limits import COMMENT_MAX
from bot.domain.states import RunState
from tests.review_harness import Review

PERMISSION = "/repos/*/*/collaborators/{login}/permission"
MERGE = "/repos/*/*/pulls/*/merge"


# --- 1. an approval outrun by a push ---------------------------------------------------------


async def test_a_push_while_the_permission_lookup_is_slow_is_not_merged(review: Review) -> None:
    """The issue's case: ``/approve`` on head A, GitHub slow to answer the permission lookup,
    a push of B (a new file) lands and Bosun hears of it meanwhile."""
    run = await review.ready_run()
    hold = review.em.hold("GET", PERMISSION.format(login="bob"))
    approve = await review.comment(run.pr, "/approve", "bob")
    approving = review.start(approve)
    await review.wait_held(hold)

    pushed, synchronize = await review.push(run.branch, {"sneaky.py": "print('unreviewed')\n"})
    assert synchronize is not None
    assert await review.process(synchronize) == "processed: head moved, 0 approval(s) invalidated"
    review.em.release(hold)
    outcome = await approving

    assert outcome == "processed: refuse (approval.head_moved)"
    assert (await review.pull(run.pr))["merged"] is False and (await review.merges(run.pr)) == []
    assert "sneaky.py" not in (await review.main_files())
    row = await review.run(run.run_id)
    assert (row.state, row.head_sha) == (RunState.REVIEW_READY, pushed)
    assert await review.approvals(run.run_id) == []
    reply = (await review.comments(run.pr))[-1]
    assert reply.startswith("@bob, the PR head moved to") and pushed[:12] in reply

    # Having looked at B, bob approves it: B is merged, and the manifest binds the approval
    # to exactly the merged head.
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.pull(run.pr))["merged"] is True
    assert (await review.pull(run.pr))["head_sha"] == pushed
    manifest = await review.manifest(run.run_id)
    assert manifest["state"] == "merged"
    assert [a["sha"] for a in manifest["approvals"]] == [pushed]
    assert manifest["review"]["merge"]["head_sha"] == pushed


async def test_a_push_bosun_has_not_heard_of_yet_makes_github_refuse_the_merge(
    review: Review,
) -> None:
    """Same race, but the push's delivery is still on its way when the approval is decided:
    Bosun approves A and merges naming A; GitHub's head is B, so GitHub refuses (409), Bosun
    adopts B and invalidates the approval. The late delivery then changes nothing."""
    run = await review.ready_run()
    hold = review.em.hold("GET", PERMISSION.format(login="bob"))
    approving = review.start(await review.comment(run.pr, "/approve", "bob"))
    await review.wait_held(hold)
    pushed, synchronize = await review.push(run.branch, {"sneaky.py": "print('unreviewed')\n"})
    review.em.release(hold)
    await approving

    assert (await review.merges(run.pr)) == [409]
    assert (await review.pull(run.pr))["merged"] is False
    assert "sneaky.py" not in (await review.main_files())
    row = await review.run(run.run_id)
    assert (row.state, row.head_sha) == (RunState.REVIEW_READY, pushed)
    (approval,) = await review.approvals(run.run_id)
    assert approval.sha == run.head and approval.invalidated_at is not None
    assert any("GitHub refused to merge" in body for body in (await review.comments(run.pr)))

    assert synchronize is not None
    assert await review.process(synchronize) == (
        "ignored: the run is at this head already (Bosun's own push, or adopted)"
    )
    manifest = await review.manifest(run.run_id)
    assert manifest["review"]["merge"] == {
        "refused": "head moved",
        "status": 409,
        "head_sha": run.head,
    }
    assert [(a["sha"], a["valid"]) for a in manifest["approvals"]] == [(run.head, False)]


async def test_a_push_onto_the_revert_commit_of_a_partial_approval_is_not_merged(
    review: Review,
) -> None:
    """``/approve src/feature.py``: Bosun pushes the revert of the other files, then merges
    naming that commit. A push on top of it lands while the merge call waits: GitHub refuses,
    and neither the unapproved README change nor the new file reach the default branch."""
    run = await review.ready_run()
    hold = review.em.hold("PUT", MERGE)
    approving = review.start(await review.comment(run.pr, "/approve src/feature.py", "bob"))
    await review.wait_held(hold)
    revert = (await review.pull(run.pr))["head_sha"]
    assert revert != run.head  # Bosun's revert commit, on top of the approved head
    pushed, synchronize = await review.push(run.branch, {"sneaky.py": "print('unreviewed')\n"})
    review.em.release(hold)
    await approving

    assert (await review.merges(run.pr)) == [409]
    assert (await review.pull(run.pr))["merged"] is False
    assert (await review.main_files()) == ["README.md", "src/app.py"]
    row = await review.run(run.run_id)
    assert (row.state, row.head_sha) == (RunState.REVIEW_READY, pushed)
    assert all(a.invalidated_at is not None for a in await review.approvals(run.run_id))
    assert synchronize is not None
    await review.process(synchronize)
    assert (await review.run(run.run_id)).state is RunState.REVIEW_READY


# --- 2. approve and reject together ----------------------------------------------------------


@pytest.mark.parametrize("phase", ["request", "response"])
async def test_a_reject_while_the_merge_call_is_in_flight_is_told_it_was_merged(
    review: Review, phase: str
) -> None:
    """``phase=request``: the merge call waits before GitHub handles it; ``response``: GitHub
    has merged and its answer is on the way. Either way the ``/reject`` that arrives now
    waits for the outcome and is told the truth."""
    run = await review.ready_run()
    hold = review.em.hold("PUT", MERGE, phase=phase)
    approving = review.start(await review.comment(run.pr, "/approve", "bob"))
    await review.wait_held(hold)
    rejecting = review.start(await review.comment(run.pr, "/reject not like this", "carol"))
    await asyncio.sleep(0.3)
    assert not rejecting.done()  # it waits for the decision in flight
    review.em.release(hold)
    await approving
    assert await rejecting == "processed: refuse (state.merged)"

    pull = await review.pull(run.pr)
    row = await review.run(run.run_id)
    assert pull["merged"] is True and row.state is RunState.MERGED
    assert row.merged_sha == pull["merge_commit_sha"]
    reply = (await review.comments(run.pr))[-1]
    assert reply == (
        f"@carol, this run was already merged at `{row.merged_sha[:12]}`; "
        "there is nothing to reject."
    )
    assert [(a, c, o) for a, c, o, _ in await review.audit(run.run_id)] == [
        ("bob", "approve", "accepted"),
        ("carol", "reject", "refused"),
    ]


@pytest.mark.parametrize("first", ["approve", "reject"])
async def test_approve_and_reject_at_once_end_in_one_state_github_agrees_with(
    review: Review, first: str
) -> None:
    """Both comments are on GitHub before Bosun decides either, and both are processed at
    once (``first`` is started first, but either may reach the run's lock first): whichever
    is decided first wins, the other is answered with what happened, and GitHub agrees."""
    run = await review.ready_run()
    approve = await review.comment(run.pr, "/approve", "bob")
    reject = await review.comment(run.pr, "/reject too risky", "carol")
    order = [approve, reject] if first == "approve" else [reject, approve]
    done = await asyncio.gather(*(review.start(hook) for hook in order))
    outcome = dict(zip([hook.guid for hook in order], done, strict=True))

    pull = await review.pull(run.pr)
    row = await review.run(run.run_id)
    if row.state is RunState.MERGED:
        assert outcome[reject.guid] == "processed: refuse (state.merged)"
        assert "refuse" not in outcome[approve.guid]
        assert pull["merged"] is True and (await review.merges(run.pr)).count(200) == 1
    else:
        assert row.state is RunState.REJECTED, row.state
        assert outcome[approve.guid] == "processed: refuse (state.approve)"
        assert "refuse" not in outcome[reject.guid]
        assert pull["merged"] is False and (await review.merges(run.pr)) == []
    assert set((await review.deliveries()).values()) == {"processed"}


async def test_a_merge_whose_answer_is_lost_is_finished_by_the_retried_delivery(
    review: Review,
) -> None:
    """GitHub fails the merge call more often than Bosun's client retries: the delivery is
    retried, sees its decision is made, and finishes the merge — exactly one merge."""
    run = await review.ready_run()
    review.em.fault("error", method="PUT", path=MERGE, status=502, count=7)
    outcome = await review.process(await review.comment(run.pr, "/approve", "bob"))

    assert outcome == "processed: resumed a decision already made"
    assert review.retries  # arq retried the delivery
    assert (await review.merges(run.pr)).count(200) == 1
    assert (await review.run(run.run_id)).state is RunState.MERGED
    assert len(await review.audit(run.run_id)) == 1  # decided once


async def test_a_partial_approval_whose_merge_answer_is_lost_merges_its_revert_commit(
    review: Review,
) -> None:
    """The retried delivery finds the revert commit already pushed: it merges that commit,
    counting the approvals on the commit they were given on, and reverts nothing twice."""
    run = await review.ready_run()
    review.em.fault("error", method="PUT", path=MERGE, status=502, count=7)
    outcome = await review.process(await review.comment(run.pr, "/approve src/feature.py", "bob"))

    assert outcome == "processed: resumed a decision already made"
    pull = await review.pull(run.pr)
    assert pull["merged"] is True and (await review.merges(run.pr)).count(200) == 1
    assert await review.main_files() == ["README.md", "src/app.py", "src/feature.py"]
    row = await review.run(run.run_id)
    assert row.state is RunState.MERGED and row.head_sha == pull["head_sha"] != run.head
    (approval,) = await review.approvals(run.run_id)
    assert approval.sha == run.head and approval.invalidated_at is None
    reverts = [c for c in await review.comments(run.pr) if c.startswith("Kept only")]
    assert len(reverts) == 1


# --- 3. a push's invalidation is never lost --------------------------------------------------


STEPS = {
    "permission": ("GET", PERMISSION.format(login="bob")),
    "reply": ("POST", "/repos/*/*/issues/*/comments"),
    "reaction": ("POST", "/repos/*/*/issues/comments/*/reactions"),
    "status note": ("PATCH", "/repos/*/*/issues/comments/*"),
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_a_push_during_any_step_of_an_approval_invalidates_it(
    review: Review, step: str
) -> None:
    """``merge.auto_merge`` off: the approval leaves the run ``approved``. A push that
    changes the files lands while the approval is held at ``step``; its invalidation holds
    however the two interleave."""
    run = await review.ready_run(auto_merge=False)
    method, path = STEPS[step]
    hold = review.em.hold(method, path)
    approving = review.start(await review.comment(run.pr, "/approve", "bob"))
    await review.wait_held(hold)
    pushed, synchronize = await review.push(run.branch, {"later.py": "x = 1\n"})
    assert synchronize is not None
    pushing = review.start(synchronize)
    await asyncio.sleep(0.1)
    review.em.release(hold)
    await asyncio.gather(approving, pushing)

    row = await review.run(run.run_id)
    assert (row.state, row.head_sha) == (RunState.REVIEW_READY, pushed)
    assert all(a.invalidated_at is not None for a in await review.approvals(run.run_id))
    assert set((await review.deliveries()).values()) == {"processed"}
    assert (await review.pull(run.pr))["merged"] is False


async def test_pushes_processed_in_the_opposite_order_end_at_githubs_head(review: Review) -> None:
    run = await review.ready_run(auto_merge=False)
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    first, early = await review.push(run.branch, {"a.py": "a = 1\n"})
    second, late = await review.push(run.branch, {"b.py": "b = 2\n"})
    assert early is not None and late is not None
    assert await review.process(late) == "processed: head moved, 1 approval(s) invalidated"
    assert await review.process(early) == (
        "ignored: the head did not move (an older push, or Bosun's own)"
    )
    row = await review.run(run.run_id)
    assert (row.state, row.head_sha) == (RunState.REVIEW_READY, second)
    assert first != second


# --- 4. every reply fits GitHub's limits -----------------------------------------------------


async def test_an_approve_naming_thousands_of_paths_gets_a_short_refusal(review: Review) -> None:
    run = await review.ready_run()
    paths = [f"nope/file{i:05}.py" for i in range(3500)]
    body = "/approve " + " ".join(paths)
    assert len(body) <= COMMENT_MAX  # GitHub takes the comment
    outcome = await review.process(await review.comment(run.pr, body, "bob"))
    assert outcome == "processed: refuse (approval.partial_paths)"
    reply = (await review.comments(run.pr))[-1]
    assert len(reply) < 2000
    assert "`nope/file00000.py`" in reply and "and 3490 more match no changed file" in reply
    assert set((await review.deliveries()).values()) == {"processed"}


async def test_thousands_of_mistyped_commands_get_a_short_correction(review: Review) -> None:
    run = await review.ready_run()
    body = "\n".join("/aprove" for _ in range(8000))
    outcome = await review.process(await review.comment(run.pr, body, "bob"))
    assert outcome == "processed: command correction sent"
    reply = (await review.comments(run.pr))[-1]
    assert len(reply) < 2000
    assert reply.count("did you mean `/approve`?") == 10
    assert "- … and 7990 more like these" in reply


async def test_a_partial_approval_of_many_files_keeps_the_status_comment_small(
    review: Review,
) -> None:
    files = {f"pkg/module{i:04}.py": f"x = {i}\n" for i in range(1500)}
    run = await review.ready_run(files=files, auto_merge=False)
    globs = " ".join(sorted(files)[:-1])  # all but one: a partial approval of 1,499 paths
    await review.process(await review.comment(run.pr, f"/approve {globs}", "bob"))
    assert (await review.run(run.run_id)).state is RunState.APPROVED
    status = next(
        c for c in (await review.comments(run.issue)) if c.startswith("<!-- bosun:status")
    )
    assert len(status) < 5000 and "and 1489 more" in status
    bodies = (await review.comments(run.pr)) + (await review.comments(run.issue))
    assert max(len(b) for b in bodies) <= COMMENT_MAX
