"""The review section of the status comment: approvals and the latest review event, kept
between hidden markers so it is edited in place (never a new comment)."""

from __future__ import annotations

from bot.domain.limits import clip, listing
from bot.domain.review.approvals import sha_matches
from bot.domain.review.model import RunSnapshot

REVIEW_START = "<!-- bosun:review -->"
REVIEW_END = "<!-- /bosun:review -->"
SECTION_APPROVALS = 20
"""Approvals the section lists (the latest); it stays small whatever happened on the run."""
NOTE_CHARS = 2000


def review_section(run: RunSnapshot, note: str = "") -> str:
    """The section for ``run``: its review state, each approval with the commit it is bound to
    and whether it still counts, and ``note`` (what just happened). Bounded: the latest
    ``SECTION_APPROVALS`` approvals, a few paths each, the note cut to ``NOTE_CHARS``."""
    state = run.state.value.replace("_", " ")
    lines = [REVIEW_START, "", f"**Review** · **{state}**" + (" · on hold" if run.on_hold else "")]
    shown = run.approvals[-SECTION_APPROVALS:]
    if len(run.approvals) > len(shown):
        lines.append(f"- … {len(run.approvals) - len(shown)} earlier approval(s) not shown")
    for approval in shown:
        paths = f" (only {listing(approval.paths)})" if approval.paths else ""
        if not approval.valid:
            verdict = "no longer counts"
        elif sha_matches(approval.sha, run.head_sha):
            verdict = "counts"
        else:
            verdict = "on an earlier commit"
        lines.append(f"- @{approval.actor} approved `{approval.sha[:12]}`{paths}: {verdict}")
    if not run.approvals:
        lines.append("- no approvals yet")
    if note:
        lines += ["", f"> {clip(note, NOTE_CHARS)}"]
    lines.append(REVIEW_END)
    return "\n".join(lines)


def review_section_of(body: str) -> str | None:
    """The review section ``body`` carries, if any."""
    start = body.find(REVIEW_START)
    end = body.find(REVIEW_END, start)
    if start == -1 or end == -1:
        return None
    return body[start : end + len(REVIEW_END)]


def with_review_section(body: str, section: str) -> str:
    """``body`` with its review section replaced by ``section`` (appended when it has none)."""
    start = body.find(REVIEW_START)
    end = body.find(REVIEW_END, start)
    if start == -1 or end == -1:
        return body.rstrip("\n") + "\n\n" + section
    return body[:start] + section + body[end + len(REVIEW_END) :]
