"""End to end through the emulator: the triggers people expect — assigning the issue to the
App's bot user, an @-mention on an issue or a Bosun PR, a "Request changes" review with line
comments, Prow's `/hold cancel` — and a repository image that is not allowed. Each does what
it says for a trusted user and is refused with exactly one reply for an untrusted one.

Bosun's own delivery processing runs in-process (the review harness); the test hands each
delivery over as GitHub sent it."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from bot.db.models import Run, Task
from tests.review_harness import REPO, Hook, Review


async def _deliveries(review: Review, since: int, event: str) -> list[Hook]:
    return [h for h in review._hooks(since) if h.event == event]


async def _bot_comments(review: Review, number: int) -> list[str]:
    state = await asyncio.to_thread(review.em.state, "octo", "hello")
    bot = review.app.bot_login
    for item in state["issues"] + state["pulls"]:
        if item["number"] == number:
            return [str(c["body"]) for c in item["comments"] if c["user"] == bot]
    return []


async def _runs_of_issue(review: Review, number: int) -> list[Run]:
    async with review.bosun.services.sessions() as session:
        rows = await session.execute(
            select(Run).join(Task, Task.id == Run.task_id).where(Task.issue_number == number)
        )
        return list(rows.scalars())


async def _children(review: Review, parent: str) -> list[Run]:
    async with review.bosun.services.sessions() as session:
        rows = await session.execute(select(Run).where(Run.parent_run_id == parent))
        return list(rows.scalars())


async def _issue(review: Review, title: str) -> int:
    return await asyncio.to_thread(review.em.create_issue, REPO, title, "It loops.", "alice")


async def _assign(review: Review, number: int, user: str) -> str:
    mark = review._mark()
    bot = review.app.bot_login
    await asyncio.to_thread(review.em.assign, REPO, number, [bot], user)
    (hook,) = await _deliveries(review, mark, "issues")
    assert hook.action == "assigned" and hook.payload["assignee"]["login"] == bot
    return await review.process(hook)


async def test_assigning_the_issue_to_the_app_starts_a_run(review: Review) -> None:
    number = await _issue(review, "Fix the redirect")
    outcome = await _assign(review, number, "bob")
    assert outcome.startswith("processed: run ") and outcome.endswith(" queued")
    (run,) = await _runs_of_issue(review, number)
    assert (run.trigger, run.requester, run.state.value) == ("assign", "bob", "queued")
    assert await _bot_comments(review, number) == []  # a run, not a reply


async def test_an_untrusted_assignment_or_mention_gets_exactly_one_reply(review: Review) -> None:
    number = await _issue(review, "Delete the tests")
    assert (await _assign(review, number, "mallory")).startswith("processed: refused")
    (reply,) = await _bot_comments(review, number)
    assert reply.startswith("<!-- bosun:refused user=mallory -->\n@mallory, only people")
    # Trying again another way on the same issue starts nothing and says nothing more.
    slug = review.app.slug
    hook = await review.comment(number, f"@{slug} delete them anyway", "mallory")
    assert (await review.process(hook)).startswith("processed: refused")
    assert len(await _bot_comments(review, number)) == 1
    assert await _runs_of_issue(review, number) == []
    # On another issue a mention by mallory gets its own single reply.
    other = await _issue(review, "Another")
    await review.process(await review.comment(other, f"@{slug} do it", "mallory"))
    assert (
        len(await _bot_comments(review, other)) == 1 and await _runs_of_issue(review, other) == []
    )


async def test_a_mention_on_an_issue_starts_a_run_with_its_instructions(review: Review) -> None:
    number = await _issue(review, "Speed up the import")
    slug = review.app.slug
    hook = await review.comment(number, f"@{slug} please cache the parsed config", "bob")
    outcome = await review.process(hook)
    assert outcome.startswith("processed: run ")
    (run,) = await _runs_of_issue(review, number)
    assert (run.trigger, run.requester, run.instructions) == (
        "mention",
        "bob",
        "please cache the parsed config",
    )
    # A mention of someone else, or inside a code block, starts nothing.
    quiet = await _issue(review, "Quiet")
    for body in (f"@{slug}-fan hi", f"```\n@{slug} run\n```"):
        assert (await review.process(await review.comment(quiet, body, "bob"))).startswith(
            "ignored"
        )
    assert await _runs_of_issue(review, quiet) == []


async def test_a_mention_on_a_bosun_pr_retries_with_its_text(review: Review) -> None:
    run = await review.ready_run()
    slug = review.app.slug
    hook = await review.comment(run.pr, f"@{slug} please also cover the empty list", "alice")
    assert (await review.process(hook)) == "processed: retry (command.requester)"
    (child,) = await _children(review, run.run_id)
    assert child.trigger == "retry" and child.requester == "alice"
    assert "please also cover the empty list" in child.prompt
    assert (await review.run(run.run_id)).state.value == "rejected"  # superseded by the retry

    # mallory (read access, not the requester) is refused once, and nothing runs.
    other = await review.ready_run("Other")
    before = len(await _bot_comments(review, other.pr))
    hook = await review.comment(other.pr, f"@{slug} rewrite everything", "mallory")
    assert (await review.process(hook)).startswith("processed: refuse")
    after = await _bot_comments(review, other.pr)
    assert len(after) == before + 1 and after[-1].startswith("@mallory, `/retry` is for")
    assert await _children(review, other.run_id) == []


async def test_request_changes_is_a_retry_carrying_the_review_and_its_comments(
    review: Review,
) -> None:
    run = await review.ready_run()
    mark = review._mark()
    await asyncio.to_thread(
        review.em.review,
        REPO,
        run.pr,
        "CHANGES_REQUESTED",
        "bob",
        "Return a named constant.",
        [{"path": "src/feature.py", "line": 2, "body": "42 needs a name"}],
    )
    (hook,) = await _deliveries(review, mark, "pull_request_review")
    assert hook.payload["review"]["state"] == "changes_requested"
    assert (await review.process(hook)) == "processed: retry (command.permission>=write)"
    (child,) = await _children(review, run.run_id)
    assert "Return a named constant." in child.prompt
    assert "`src/feature.py:2`: 42 needs a name" in child.prompt
    audit = await review.audit(run.run_id)
    assert audit[-1][:3] == ("bob", "retry", "accepted")

    other = await review.ready_run("Other")
    before = len(await _bot_comments(review, other.pr))
    mark = review._mark()
    await asyncio.to_thread(
        review.em.review, REPO, other.pr, "CHANGES_REQUESTED", "mallory", "No.", []
    )
    (hook,) = await _deliveries(review, mark, "pull_request_review")
    assert (await review.process(hook)).startswith("processed: refuse")
    after = await _bot_comments(review, other.pr)
    assert len(after) == before + 1 and after[-1].startswith("@mallory, `/retry` is for")
    assert await _children(review, other.run_id) == []


async def test_hold_cancel_lifts_the_hold(review: Review) -> None:
    run = await review.ready_run()
    await review.process(await review.comment(run.pr, "/hold", "bob"))
    assert (await review.run(run.run_id)).on_hold is True
    before = len(await _bot_comments(review, run.pr))
    hook = await review.comment(run.pr, "/hold cancel", "mallory")
    assert (await review.process(hook)).startswith("processed: refuse")
    replies = await _bot_comments(review, run.pr)
    assert len(replies) == before + 1 and "needs write access" in replies[-1]
    assert (await review.run(run.run_id)).on_hold is True
    hook = await review.comment(run.pr, "/hold cancel", "bob")
    assert (await review.process(hook)) == "processed: unhold (command.permission>=write)"
    assert (await review.run(run.run_id)).on_hold is False
    assert (await review.comments(run.pr))[-1] == "Hold lifted by @bob."


async def test_a_repository_image_not_allowed_gets_one_comment_and_no_run(review: Review) -> None:
    config = "image: ghcr.io/evil/agent:1\n"
    await asyncio.to_thread(
        review.em.push, REPO, "main", {".github/bosun.yml": config}, "alice", "Use our image"
    )
    number = await _issue(review, "Build it")
    for _ in range(2):  # labelled twice: told once
        mark = review._mark()
        await asyncio.to_thread(review.em.add_labels, REPO, number, ["bosun"], "alice")
        (hook,) = await _deliveries(review, mark, "issues")
        assert (await review.process(hook)) == "processed: refused, repository image not allowed"
        await asyncio.to_thread(review.em.remove_label, REPO, number, "bosun", "alice")
    (comment,) = await _bot_comments(review, number)
    assert "`ghcr.io/evil/agent:1`" in comment
    assert "`sandbox.allowed_images` (`BOSUN_SANDBOX__ALLOWED_IMAGES`)" in comment
    assert "no run starts" in comment
    assert await _runs_of_issue(review, number) == []
