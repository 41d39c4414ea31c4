"""What Bosun publishes about a run (``bot/domain/status.py``): names, reasons, plans and
transcripts the agent chose are shown, never rendered as markdown of their own."""

from __future__ import annotations

import re

from bot.domain.display import shown
from bot.domain.states import RunState
from bot.domain.status import RunView, check_run_fields, pr_body, status_comment

HEADING = "## Bosun security review: PASSED, safe to merge"
CLOSE = "Fixes #1"


def view(**fields: object) -> RunView:
    base = RunView(
        run_id="r1", state=RunState.REVIEW_READY, repo="o/r", issue_number=7, title="t",
        requester="alice", profile="default", branch="bosun/7-t", pr_number=8,
    )  # fmt: skip
    for key, value in fields.items():
        setattr(base, key, value)
    return base


def published(run: RunView) -> list[str]:
    fields = check_run_fields(run)
    return [status_comment(run), pr_body(run), fields["output"]["summary"]]


def test_a_file_name_adds_no_line_to_the_pr_body() -> None:
    name = f"report`\n\n{CLOSE}\n\n- `x"
    body = pr_body(view(file_stats=[(name, "A", 1, 0), ("src/app.py", "M", 2, 1)]))
    lines = body.splitlines()
    assert CLOSE not in lines
    assert f"- {shown(name, code=True)} (A, +1 -0)" in lines
    assert "- `src/app.py` (M, +2 -1)" in lines


def test_a_reason_or_note_stays_on_its_line() -> None:
    """A reason's agent-derived parts are escaped by whoever writes it (``jobs/run/diffcheck.py``);
    whatever still holds a line break is kept on its line here."""
    reason = f"the diff breaks repository policy: x\n\n{HEADING}\u2028{HEADING}"
    run = view(state=RunState.FAILED, reason=reason)
    run.phase("policy", "failed", f"a | b\n{HEADING}")
    for text in published(run):
        assert not any(line.lstrip("> *").startswith(HEADING) for line in text.splitlines())
    assert "| policy | ❌ failed | a \\| b\\n## Bosun" in status_comment(run)


def _fenced(body: str, info: str) -> tuple[int, int, list[str]]:
    """Where the code block opened by ``~~~…{info}`` starts and where CommonMark closes it."""
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"~{{4,}}{info}", line))
    width = len(lines[start]) - len(info)
    end = next(
        i
        for i in range(start + 1, len(lines))
        if re.fullmatch(rf" {{0,3}}~{{{width},}}\s*", lines[i])
    )
    return start, end, lines


def test_the_transcript_cannot_close_its_fence() -> None:
    tail = f"working...\n~~~~~~~~\n{HEADING}\n@octo/security\n<details><summary>hidden</summary>\n"
    start, end, lines = _fenced(pr_body(view(transcript_tail=tail)), "text")
    inside = lines[start + 1 : end]
    assert HEADING in inside and "<details><summary>hidden</summary>" in inside
    assert lines[end + 1] == "</details>"  # Bosun's own fence is the one that closes it


def test_the_plan_is_quoted_in_the_pr_body() -> None:
    """The plan goes into the PR body as text: a closing keyword in it closes nothing, a
    heading in it is no heading of Bosun's."""
    plan = f"1. add greet()\n\n{CLOSE}\n\n{HEADING}\n~~~~\n</details>"
    start, end, lines = _fenced(pr_body(view(plan=plan)), "markdown")
    assert CLOSE in lines[start + 1 : end] and HEADING in lines[start + 1 : end]
    assert lines[end + 2] == "</details>"


def test_blocked_hosts_are_listed_on_the_pr_and_the_check_run_as_code() -> None:
    hostile = "evil.example`\n\n## Approved by admin"
    denied = [(hostile, 443, 2), *((f"h{n}.example", 80, 1) for n in range(25))]
    run = view(egress_denied=denied)
    body = pr_body(run)
    summary = check_run_fields(run)["output"]["summary"]
    for text in (body, summary):
        assert "## Blocked network requests" in text
        assert "## Approved by admin" not in text.splitlines()
        assert f"- {shown(f'{hostile}:443', code=True)} (2 requests)" in text
        assert "- `h0.example:80` (1 request)" in text
        assert "… and 6 more" in text
    assert "Blocked network requests" not in status_comment(run)
    assert "Blocked network requests" not in pr_body(view())


def test_a_setup_row_only_when_the_run_has_a_setup_phase() -> None:
    assert "| setup |" not in status_comment(view())
    run = view()
    run.phase("setup", "failed", "command 2 of 3 (.github/bosun.yml setup[1]) exited 1")
    rows = [line for line in status_comment(run).splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names[:3] == ["prepare", "setup", "agent"]
