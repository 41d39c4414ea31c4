"""Merge when green: an approved run waits for the checks its base branch requires, merges
when they pass and goes back to review naming the one that failed. The rules are pure
(``checks_verdict``); the loop runs through the review harness (Bosun's own delivery
processing against the emulator, deliveries handed over by the test)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import update

from bot.db.models import Run
from bot.domain.review.checks import (
    AWAITING_CHECKS,
    CheckResult,
    ChecksReport,
    Green,
    Red,
    Waiting,
    checks_verdict,
)
from bot.domain.states import RunState
from bot.domain.status import CheckRunUpdate
from jobs.review.green import recheck_waiting
from tests.review_harness import REPO, STATUS_MARKER, Hook, ReadyRun, Review

# --- the rules --------------------------------------------------------------------------


def result(name: str, state: str, detail: str = "", app_id: int | None = 7) -> CheckResult:
    return CheckResult(name, state, detail or state, None, app_id)  # type: ignore[arg-type]


def test_nothing_required_is_green_and_unrequired_failures_do_not_count() -> None:
    report = ChecksReport((), (result("lint", "failure"),))
    assert checks_verdict(report, gates_passed=None) == Green(())


def test_required_checks_wait_pass_and_fail() -> None:
    required = ("test", "ci/lint")
    waiting = checks_verdict(
        ChecksReport(required, (result("test", "success"),)), gates_passed=True
    )
    assert waiting == Waiting(("ci/lint",), ("test",))
    assert "`ci/lint` (1 of 2 passed)" in waiting.describe()
    running = checks_verdict(
        ChecksReport(required, (result("test", "pending"), result("ci/lint", "success"))),
        gates_passed=True,
    )
    assert isinstance(running, Waiting) and running.pending == ("test",)
    green = checks_verdict(
        ChecksReport(required, (result("test", "success"), result("ci/lint", "success"))),
        gates_passed=True,
    )
    assert green == Green(("test", "ci/lint"))
    red = checks_verdict(
        ChecksReport(required, (result("test", "success"), result("ci/lint", "failure", "error"))),
        gates_passed=True,
    )
    assert isinstance(red, Red) and (red.name, red.detail) == ("ci/lint", "error")
    assert red.describe() == "the required check `ci/lint` errored"


def test_a_check_reported_twice_under_one_name_must_pass_both_times() -> None:
    report = ChecksReport(("test",), (result("test", "success"), result("test", "failure")))
    assert isinstance(checks_verdict(report, gates_passed=None), Red)


def test_bosuns_own_check_stands_for_its_gates() -> None:
    own = ChecksReport(("bosun", "test"), (result("bosun", "pending", app_id=1),))
    waiting = checks_verdict(own, gates_passed=True, own_app_id=1)
    assert waiting == Waiting(("test",), ())  # never waits on itself
    failed = checks_verdict(ChecksReport(), gates_passed=False)
    assert isinstance(failed, Red) and failed.name == "bosun"
    # Another App's check named `bosun` is not Bosun's: it counts like any other.
    impostor = ChecksReport(("bosun",), (result("bosun", "failure", app_id=99),))
    assert checks_verdict(impostor, gates_passed=True, own_app_id=1) == Green(())


# --- the loop, through the emulator -----------------------------------------------------


async def _hooks(review: Review, since: int, event: str) -> list[Hook]:
    return [h for h in review._hooks(since) if h.event == event]


async def _process_all(review: Review, since: int, *events: str) -> list[str]:
    """Process, in order, every delivery of ``events`` GitHub sent since ``since``."""
    outcomes = []
    for hook in review._hooks(since):
        if hook.event in events:
            outcomes.append(await review.process(hook))
    return outcomes


async def _with_check_run(review: Review, run: ReadyRun) -> int:
    """The run's `bosun` check run, as the pipeline leaves it at review_ready."""
    check = await review.port.create_check_run(
        run.head,
        CheckRunUpdate(
            title="Ready for review",
            summary="Gates passed.",
            status="completed",
            conclusion="success",
        ),
    )
    async with review.bosun.services.sessions.begin() as session:
        await session.execute(
            update(Run).where(Run.id == run.run_id).values(check_run_id=check, gates_passed=True)
        )
    return check


def _check(state: dict[str, Any], check_id: int) -> dict[str, Any]:
    return dict(next(c for c in state["check_runs"] if c["id"] == check_id))


async def _current_check(review: Review, run: ReadyRun) -> dict[str, Any]:
    """The run's check run now: the merge's own once it noted something (GitHub never
    reopens a completed one, so the merge starts a new `bosun` check run on the head)."""
    check_id = (await review.run(run.run_id)).check_run_id
    assert check_id is not None
    return _check(await _state(review), check_id)


async def _state(review: Review) -> dict[str, Any]:
    return dict(await asyncio.to_thread(review.em.state, "octo", "hello"))


async def _status_comment(review: Review, issue: int) -> str:
    return next(c for c in await review.comments(issue) if STATUS_MARKER in c)


async def test_an_approved_run_waits_for_required_checks_then_merges(review: Review) -> None:
    review.em.protect(REPO, "main", ["test", "ci/lint"])
    run = await review.ready_run()
    check_id = await _with_check_run(review, run)

    outcome = await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert outcome == "processed: approve (approval.approvers>=write)"  # the job returned
    row = await review.run(run.run_id)
    assert (row.state, row.phase) == (RunState.APPROVED, AWAITING_CHECKS)
    assert await review.merges(run.pr) == []
    status = await _status_comment(review, run.issue)
    assert "waiting for required checks: `test`, `ci/lint` (0 of 2 passed)" in status
    bosun_check = await _current_check(review, run)
    assert bosun_check["status"] == "in_progress" and bosun_check["id"] != check_id
    assert bosun_check["output"]["title"] == "Waiting for required checks"
    assert bosun_check["name"] == "bosun" and bosun_check["head_sha"] == run.head
    assert _check(await _state(review), check_id)["conclusion"] == "success"  # left as it was

    # The CI reports `test`: looked at again at once, still waiting for `ci/lint`.
    mark = review._mark()
    review.em.ci_check(REPO, run.head, "test", None, status="in_progress")
    review.em.ci_check(REPO, run.head, "test", "success")
    outcomes = await _process_all(review, mark, "check_run", "check_suite")
    assert "processed: checks re-read for 1 waiting run(s)" in outcomes
    assert await review.merges(run.pr) == []
    assert "`ci/lint` (1 of 2 passed)" in await _status_comment(review, run.issue)

    # Bosun's own check-run updates are not a reason to look again.
    own = [
        h
        for h in await _hooks(review, 0, "check_run")
        if h.payload["check_run"]["app"]["id"] == review.app.app_id and h.action == "completed"
    ]
    assert own and await review.process(own[-1]) == "ignored: Bosun's own check"

    # The last required check is a commit status: its webhook merges the approved head.
    mark = review._mark()
    review.em.commit_status(REPO, run.head, "ci/lint", "success", user="alice")
    assert await _process_all(review, mark, "status") == [
        "processed: checks re-read for 1 waiting run(s)"
    ]
    row = await review.run(run.run_id)
    assert row.state is RunState.MERGED and row.phase is None
    pull = await review.pull(run.pr)
    assert pull["merged"] is True and pull["head_sha"] == run.head
    assert await review.merges(run.pr) == [200]
    bosun_check = await _current_check(review, run)
    assert (bosun_check["status"], bosun_check["conclusion"]) == ("completed", "success")
    assert bosun_check["output"]["title"] == "Required checks passed"
    assert "src/feature.py" in await review.main_files()


async def test_a_failing_required_check_blocks_the_merge_and_is_named(review: Review) -> None:
    review.em.protect(REPO, "main", ["test"])
    run = await review.ready_run()
    check_id = await _with_check_run(review, run)
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.run(run.run_id)).state is RunState.APPROVED

    mark = review._mark()
    review.em.ci_check(REPO, run.head, "test", "failure")
    await _process_all(review, mark, "check_run", "check_suite")
    row = await review.run(run.run_id)
    assert (row.state, row.phase) == (RunState.REVIEW_READY, None)
    assert await review.merges(run.pr) == [] and (await review.pull(run.pr))["merged"] is False
    reply = (await review.comments(run.pr))[-1]
    assert reply.startswith("Nothing was merged: the required check `test` failed")
    assert "`test` failed" in await _status_comment(review, run.issue)
    bosun_check = await _current_check(review, run)
    assert (bosun_check["status"], bosun_check["conclusion"]) == ("completed", "failure")
    assert bosun_check["id"] != check_id  # a new run: the waiting one, completed
    assert bosun_check["output"]["title"] == "Required check test did not pass"
    manifest = await review.manifest(run.run_id)
    assert manifest["review"]["merge"]["blocked_by"] == "test"

    # Fixed and approved again once the check passes: merged.
    mark = review._mark()
    review.em.ci_check(REPO, run.head, "test", "success")
    assert all(o.startswith("ignored") for o in await _process_all(review, mark, "check_run"))
    await review.process(await review.comment(run.pr, "/approve", "carol"))
    assert (await review.run(run.run_id)).state is RunState.MERGED


async def test_the_timer_catches_a_check_whose_webhook_never_came(review: Review) -> None:
    review.em.protect(REPO, "main", ["ci/lint"])
    run = await review.ready_run()
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.run(run.run_id)).phase == AWAITING_CHECKS
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 1}
    assert (await review.run(run.run_id)).state is RunState.APPROVED  # still pending
    review.em.commit_status(REPO, run.head, "ci/lint", "success", user="alice")  # not handed over
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 1}
    assert (await review.run(run.run_id)).state is RunState.MERGED
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 0}


async def test_a_wait_that_lasts_too_long_goes_back_to_review(review: Review) -> None:
    review.em.protect(REPO, "main", ["never-reports"])
    run = await review.ready_run()
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    from datetime import UTC, datetime, timedelta

    async with review.bosun.services.sessions.begin() as session:
        await session.execute(
            update(Run)
            .where(Run.id == run.run_id)
            .values(state_since=datetime.now(UTC) - timedelta(hours=25))
        )
    await recheck_waiting({"bosun": review.bosun})
    assert (await review.run(run.run_id)).state is RunState.REVIEW_READY
    assert "did not all pass within 24 hours" in (await review.comments(run.pr))[-1]


@pytest.mark.parametrize("conclusion", ["neutral", "skipped"])
async def test_neutral_and_skipped_checks_pass(review: Review, conclusion: str) -> None:
    review.em.protect(REPO, "main", ["docs"])
    run = await review.ready_run()
    review.em.ci_check(REPO, run.head, "docs", conclusion)
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.run(run.run_id)).state is RunState.MERGED


def test_a_check_bound_to_an_app_counts_only_that_apps_runs() -> None:
    report = ChecksReport(
        ("test",),
        (result("test", "success", app_id=None), result("test", "failure", app_id=99)),
        required_apps=(("test", 7),),
    )
    assert checks_verdict(report, gates_passed=None) == Waiting(("test",), ())
    passed = ChecksReport(
        ("test",), (*report.results, result("test", "success", app_id=7)), (("test", 7),)
    )
    assert checks_verdict(passed, gates_passed=None) == Green(("test",))


async def test_a_status_posing_as_a_check_bound_to_the_ci_does_not_merge(review: Review) -> None:
    """Branch protection binds `test` to the CI App: anyone's commit status named `test` (or
    another App's check run) neither passes nor fails it; the CI's own check run does."""
    review.em.protect(REPO, "main", ["test"], apps={"test": "ci"})
    run = await review.ready_run()
    review.em.commit_status(REPO, run.head, "test", "success", user="mallory")
    review.em.ci_check(REPO, run.head, "test", "failure", app="other-ci")
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    row = await review.run(run.run_id)
    assert (row.state, row.phase) == (RunState.APPROVED, AWAITING_CHECKS)
    mark = review._mark()
    review.em.ci_check(REPO, run.head, "test", "success", app="ci")
    await _process_all(review, mark, "check_run", "check_suite")
    assert (await review.run(run.run_id)).state is RunState.MERGED


async def test_a_push_while_waiting_ends_the_wait_and_merges_nothing(review: Review) -> None:
    review.em.protect(REPO, "main", ["test"])
    run = await review.ready_run()
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.run(run.run_id)).phase == AWAITING_CHECKS
    pushed, synchronize = await review.push(run.branch, {"src/late.py": "x = 1\n"})
    assert synchronize is not None
    await review.process(synchronize)
    row = await review.run(run.run_id)
    assert (row.state, row.phase, row.head_sha) == (RunState.REVIEW_READY, None, pushed)
    # The CI passing on the old head, or the new one, merges nothing: no approval covers it.
    mark = review._mark()
    review.em.ci_check(REPO, run.head, "test", "success")
    review.em.ci_check(REPO, pushed, "test", "success")
    outcomes = await _process_all(review, mark, "check_run", "check_suite")
    assert outcomes and all(o.startswith("ignored") for o in outcomes)
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 0}
    assert await review.merges(run.pr) == [] and (await review.pull(run.pr))["merged"] is False


async def test_an_installation_without_the_statuses_permission_still_reads_check_runs(
    review: Review,
) -> None:
    """The Commit statuses permission is new: until an owner accepts it, GitHub refuses a
    token asking for it (422). Check runs are still read; a required commit status waits, and
    the status comment says which permission to accept."""
    granted = {
        "checks": "write",
        "contents": "write",
        "issues": "write",
        "metadata": "read",
        "pull_requests": "write",
        "members": "read",
    }
    review.em.grant(granted)
    review.em.protect(REPO, "main", ["test", "ci/lint"])
    run = await review.ready_run()
    review.em.ci_check(REPO, run.head, "test", "success")
    review.em.commit_status(REPO, run.head, "ci/lint", "success", user="alice")
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.run(run.run_id)).phase == AWAITING_CHECKS
    status = await _status_comment(review, run.issue)
    assert "`ci/lint` (1 of 2 passed)" in status and "*Commit statuses: read*" in status
    review.em.grant({**granted, "statuses": "read"})  # the owner accepts it
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 1}
    assert (await review.run(run.run_id)).state is RunState.MERGED


async def test_a_branch_that_requires_bosun_itself_gets_a_passing_bosun_check(
    review: Review,
) -> None:
    """`bosun` in the required checks stands for Bosun's gates: with them passed the run
    merges, and a new passing `bosun` check run on the head (the pipeline's own is completed
    and GitHub never changes a completed one) lets GitHub's protection agree."""
    review.em.protect(REPO, "main", ["bosun"])
    run = await review.ready_run()
    first = await _with_check_run(review, run)
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    row = await review.run(run.run_id)
    assert row.state is RunState.MERGED and row.check_run_id != first
    check = await _current_check(review, run)
    assert (check["name"], check["status"], check["conclusion"]) == (
        "bosun",
        "completed",
        "success",
    )
    assert check["head_sha"] == run.head


async def test_a_rulesets_required_checks_are_waited_for_too(review: Review) -> None:
    """Required status checks come from rulesets as well as from classic branch protection
    (here: no protection at all, a ruleset requiring `e2e` from the CI App)."""
    review.em.ruleset(REPO, "main", ["e2e"], apps={"e2e": "ci"})
    run = await review.ready_run()
    await review.process(await review.comment(run.pr, "/approve", "bob"))
    assert (await review.run(run.run_id)).phase == AWAITING_CHECKS
    assert "`e2e` (0 of 1 passed)" in await _status_comment(review, run.issue)
    review.em.commit_status(REPO, run.head, "e2e", "success", user="mallory")  # not the CI
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 1}
    assert (await review.run(run.run_id)).state is RunState.APPROVED
    review.em.ci_check(REPO, run.head, "e2e", "success", app="ci")
    assert await recheck_waiting({"bosun": review.bosun}) == {"rechecked": 1}
    assert (await review.run(run.run_id)).state is RunState.MERGED
