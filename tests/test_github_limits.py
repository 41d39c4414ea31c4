"""Replies within GitHub's limits whatever the input: the summarising helpers, and the
repository port cutting any comment to 65,536 characters (the emulator, like GitHub, refuses
a longer one with 422)."""

from __future__ import annotations

from bot.domain.limits import COMMENT_MAX, TRUNCATED, clip, fit_comment, listing
from tests.review_harness import Review


def test_listing_names_the_first_few_and_counts_the_rest() -> None:
    assert listing([]) == ""
    assert listing(["a.py"]) == "`a.py`"
    assert listing(["a.py", "b.py"]) == "`a.py`, `b.py`"
    many = listing([f"f{i}.py" for i in range(5000)])
    assert many.startswith("`f0.py`, `f1.py`") and many.endswith("`f9.py` and 4990 more")
    assert len(listing(["x" * 100_000] * 3)) < 500  # each item is clipped too


def test_clip_keeps_quoted_text_short_and_on_one_line() -> None:
    assert clip("a\nb   c") == "a b c"
    assert clip("y" * 1000, 10) == "y" * 9 + "…"


def test_fit_comment_cuts_with_a_note() -> None:
    assert fit_comment("short") == "short"
    cut = fit_comment("z" * (COMMENT_MAX + 1))
    assert len(cut) == COMMENT_MAX and cut.endswith(TRUNCATED)


async def test_the_port_never_sends_github_a_comment_it_would_refuse(review: Review) -> None:
    run = await review.ready_run(status_comment=False)
    comment_id = await review.port.create_comment(run.issue, "é" * 100_000)
    await review.port.update_comment(comment_id, "ü" * 70_000)
    (body,) = await review.comments(run.issue)
    assert len(body) == COMMENT_MAX and body.startswith("ü") and body.endswith(TRUNCATED)
