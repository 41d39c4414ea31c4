"""What Bosun shows on GitHub, rendered purely from a ``RunView`` (SPEC §3.3): the check run's
output, the one status comment (found again by its hidden marker), and the PR body.

What the agent chose is shown, never rendered (``bot.domain.display``): file names through
``shown``, the transcript excerpt and the plan in a ``fence`` no line of theirs can close, and
reasons and phase notes (Bosun's sentences, whose agent-derived parts their authors passed
through ``shown``) kept on their line by ``one_line``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bot.domain.display import fence, one_line, shown
from bot.domain.states import RunState

MAX_TEXT = 65_535
STATUS_MARKER = "<!-- bosun:status -->"
CHECK_NAME = "bosun"

PhaseState = Literal["pending", "running", "done", "failed", "skipped"]
_ICONS = {"pending": "⏳", "running": "🔄", "done": "✅", "failed": "❌", "skipped": "⏭️"}
PHASES = ("prepare", "agent", "gates", "policy", "push", "pull request")


@dataclass
class GateView:
    name: str
    passed: bool
    exit_code: int | None
    duration_s: float
    excerpt: str = ""


@dataclass
class RunView:
    run_id: str
    state: RunState
    repo: str
    issue_number: int | None
    title: str
    requester: str
    profile: str
    branch: str | None = None
    base_sha: str | None = None
    head_sha: str | None = None
    pr_number: int | None = None
    phases: dict[str, tuple[PhaseState, str]] = field(default_factory=dict)
    gates: list[GateView] = field(default_factory=list)
    files_changed: int = 0
    lines_added: int = 0
    lines_removed: int = 0
    file_stats: list[tuple[str, str, int | None, int | None]] = field(default_factory=list)
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    unpriced_models: list[str] = field(default_factory=list)
    """Models no price list knew, charged at ``unknown_price`` (the cost says so)."""
    unknown_price: str = ""
    """That price, e.g. "$15 in / $75 out per million tokens"."""
    reason: str = ""
    transcript_tail: str = ""
    dashboard_url: str = ""
    queue_position: int | None = None
    waiting: str = ""
    """While a queued run may not start: why, e.g. "waiting: position 2 of 3 in the o/r queue"."""
    stalled: str = ""
    """While a running run has gone quiet: for how long, e.g. "no event for 6 minutes"."""
    agent_phases: tuple[str, ...] = ("agent",)
    """The agent's rows in the phase table: ``agent``, or one per workflow phase."""
    plan: str = ""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    """Failure annotations from the gates' output (``bot/domain/annotations.py``), for the check
    run."""
    egress_denied: list[tuple[str, int, int]] = field(default_factory=list)
    """``(host, port, attempts)`` the egress proxy refused (setup, or an agent granted it)."""

    def phase(self, name: str, state: PhaseState, note: str = "") -> None:
        self.phases[name] = (state, note)


def cap(text: str, limit: int = MAX_TEXT) -> str:
    """Truncate ``text`` to GitHub's limit with a visible note."""
    if len(text) <= limit:
        return text
    note = "\n\n… truncated (full output in the run's artifacts)"
    return text[: limit - len(note)] + note


def _phase_table(view: RunView) -> str:
    rows = ["| Phase | State | Notes |", "|---|---|---|"]
    for name in phase_names(view):
        state, note = view.phases.get(name, ("pending", ""))
        cell = one_line(note).replace("|", "\\|")
        rows.append(f"| {name} | {_ICONS[state]} {state} | {cell} |")
    return "\n".join(rows)


def phase_names(view: RunView) -> list[str]:
    """The phase rows in order, the agent's expanded into its workflow phases."""
    names: list[str] = []
    for name in PHASES:
        if name == "prepare" and "image" in view.phases:  # a repository or dev container image
            names.append("image")
        if name == "agent" and "setup" in view.phases:  # only runs that have a setup phase
            names.append("setup")
        names += list(view.agent_phases) if name == "agent" else [name]
    return names


MAX_DENIED_SHOWN = 20


def _egress_denied(view: RunView) -> list[str]:
    """The hosts the egress proxy refused, as Copilot's firewall lists them."""
    if not view.egress_denied:
        return []
    lines = [
        "## Blocked network requests",
        "",
        "The egress proxy refused these hosts (they are not on the run's allowlist; the "
        "operator's `egress.allow`, narrowed or extended by `egress` in `.github/bosun.yml`):",
        "",
    ]
    for host, port, attempts in view.egress_denied[:MAX_DENIED_SHOWN]:
        times = "1 request" if attempts == 1 else f"{attempts} requests"
        lines.append(f"- {shown(f'{host}:{port}', code=True)} ({times})")
    more = len(view.egress_denied) - MAX_DENIED_SHOWN
    if more > 0:
        lines.append(f"- … and {more} more (the run's `egress` events list them all)")
    return lines


def _gates_table(view: RunView) -> str:
    if not view.gates:
        return "_No gates configured._"
    rows = ["| Gate | Result | Exit | Time |", "|---|---|---|---|"]
    for gate in view.gates:
        verdict = "✅ passed" if gate.passed else "❌ failed"
        rows.append(f"| {gate.name} | {verdict} | {gate.exit_code} | {gate.duration_s:.1f}s |")
    return "\n".join(rows)


UNNAMED_MODEL = "(a model the response did not name)"
MAX_UNPRICED = 10
"""Models flagged one by one in a run; the agent names the model, and a new name on every
request must not make an event each."""


def flag_unpriced(view: RunView, model: str | None, price: str) -> dict[str, Any] | None:
    """Note on ``view`` that ``model``, which no price list knew, was charged at ``price``;
    the ``policy`` event to record the first time (``None`` when it is already noted, or
    ``MAX_UNPRICED`` models are)."""
    name = (model or UNNAMED_MODEL)[:120]
    if name in view.unpriced_models or len(view.unpriced_models) >= MAX_UNPRICED:
        return None
    view.unpriced_models.append(name)
    view.unknown_price = price
    return {
        "rule": "gateway.pricing",
        "decision": "flag",
        "model": name,
        "message": (
            f"no price is known for model {name!r}: its requests are charged at the "
            f"unknown-model price, {price} (gateway.unknown_model_price); set gateway.prices "
            "to price it"
        ),
        "source": "gateway",
    }


def _cost(view: RunView) -> str:
    if not (view.cost_usd or view.tokens_in or view.tokens_out):
        return "no model usage recorded"
    text = f"${view.cost_usd:.4f} ({view.tokens_in} tokens in, {view.tokens_out} out)"
    if view.unpriced_models:
        names = ", ".join(shown(name, code=True) for name in view.unpriced_models[:5])
        more = " and more" if len(view.unpriced_models) > 5 else ""
        text += (
            f" ⚠️ an estimate: no price is known for {names}{more}, charged at "
            f"{view.unknown_price or 'the unknown-model price'} (`gateway.unknown_model_price`; "
            "set `gateway.prices` to price it)"
        )
    return text


def gates_passed(view: RunView) -> bool:
    return all(g.passed for g in view.gates)


def check_conclusion(view: RunView) -> str | None:
    """The check run conclusion for the run's state, or ``None`` while it is in progress."""
    match view.state:
        case RunState.REVIEW_READY | RunState.APPROVED | RunState.MERGED:
            return "success" if gates_passed(view) else "failure"
        case RunState.FAILED | RunState.REJECTED:
            return "failure"
        case RunState.CANCELLED:
            return "cancelled"
        case RunState.TIMED_OUT:
            return "timed_out"
    return None


@dataclass(frozen=True)
class CheckAction:
    """A button on the check run; its ``identifier`` comes back as a ``check_run`` event."""

    label: str
    description: str
    identifier: str


@dataclass(frozen=True)
class CheckRunUpdate:
    """One create or update of the run's check run. ``None`` fields are left as they are
    (an update sends only what it sets); ``annotations`` are GitHub's annotation objects."""

    title: str
    summary: str
    text: str | None = None
    status: Literal["queued", "in_progress", "completed"] | None = None
    conclusion: str | None = None
    name: str | None = CHECK_NAME
    external_id: str | None = None
    details_url: str | None = None
    actions: tuple[CheckAction, ...] = ()
    annotations: tuple[dict[str, Any], ...] = ()

    def fields(self) -> dict[str, Any]:
        """The check-run body GitHub's REST API takes."""
        output: dict[str, Any] = {"title": self.title, "summary": self.summary}
        if self.text is not None:
            output["text"] = self.text
        if self.annotations:
            output["annotations"] = list(self.annotations)
        body: dict[str, Any] = {}
        for key in ("name", "external_id", "details_url", "status", "conclusion"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        body["output"] = output
        if self.actions:
            body["actions"] = [
                {"label": a.label, "description": a.description, "identifier": a.identifier}
                for a in self.actions[:3]
            ]
        return body


def check_run_update(view: RunView, *, actions: tuple[CheckAction, ...] = ()) -> CheckRunUpdate:
    """The check run for ``view``."""
    conclusion = check_conclusion(view)
    title = f"Bosun: {view.state.value.replace('_', ' ')}"
    summary = [
        f"Run `{view.run_id}` for {view.repo}"
        + (f"#{view.issue_number}" if view.issue_number else "")
        + f", requested by @{view.requester} (profile `{view.profile}`).",
        "",
        _phase_table(view),
    ]
    if view.reason:
        summary += ["", f"**{one_line(view.reason)}**"]
    if view.waiting and view.state is RunState.QUEUED:
        summary += ["", f"⏳ {view.waiting}; it starts when its turn comes."]
    if view.stalled:
        summary += ["", f"⚠️ Stalled: {view.stalled}. `/cancel` stops it."]
    if view.egress_denied:
        summary += ["", *_egress_denied(view)]
    if view.dashboard_url:
        summary += ["", f"[Open this run in the dashboard]({view.dashboard_url})"]
    text = ["## Gates", "", _gates_table(view), "", "## Cost", "", _cost(view)]
    status: Literal["queued", "in_progress", "completed"] = "completed"
    if conclusion is None:
        status = "queued" if view.state is RunState.QUEUED else "in_progress"
    return CheckRunUpdate(
        title=title,
        summary=cap("\n".join(summary)),
        text=cap("\n".join(text)),
        status=status,
        conclusion=conclusion,
        external_id=view.run_id,
        details_url=view.dashboard_url or None,
        actions=actions[:3],
    )


def check_run_fields(view: RunView, *, actions: tuple[CheckAction, ...] = ()) -> dict[str, Any]:
    """The body of a check-run create/update for ``view`` (GitHub's JSON)."""
    return check_run_update(view, actions=actions).fields()


def status_comment(view: RunView) -> str:
    """The one status comment on the issue, edited in place as the run goes."""
    state = view.state.value.replace("_", " ")
    lines = [STATUS_MARKER, f"**Bosun** · run `{view.run_id}` · **{state}**", ""]
    if view.waiting and view.state is RunState.QUEUED:
        lines.append(f"⏳ {view.waiting}; it starts when its turn comes.")
    if view.stalled:
        lines.append(f"⚠️ Stalled: {view.stalled}. `/cancel` stops it.")
    if view.pr_number:
        lines.append(f"Pull request: #{view.pr_number} (branch `{view.branch}`)")
    if view.reason:
        lines.append(f"> {one_line(view.reason)}")
    lines += ["", _phase_table(view)]
    if view.gates:
        lines += ["", _gates_table(view)]
    lines += ["", f"Cost: {_cost(view)}"]
    if view.dashboard_url:
        lines.append(f"[Run details]({view.dashboard_url})")
    if view.state is RunState.REVIEW_READY:
        lines += ["", "Reply `/approve`, `/retry <feedback>`, `/reject <reason>` or `/help`."]
    return cap("\n".join(lines))


def pr_body(view: RunView) -> str:
    """The PR description: summary, ``Closes #N``, gates, cost, link, transcript excerpt."""
    lines = [
        f"Bosun run `{view.run_id}` for #{view.issue_number}, requested by @{view.requester}.",
        "",
        f"Closes #{view.issue_number}" if view.issue_number else "",
        "",
        "## Summary of the change",
        "",
        f"{view.files_changed} file(s) changed, +{view.lines_added} -{view.lines_removed}.",
        "",
    ]
    for path, status, added, removed in view.file_stats[:100]:
        stats = "binary" if added is None else f"+{added} -{removed}"
        lines.append(f"- {shown(path, code=True)} ({status}, {stats})")
    if view.plan:
        lines += ["", "<details><summary>The plan the agent followed</summary>", ""]
        lines += [*fence(view.plan[:20_000], "markdown"), "", "</details>"]
    lines += ["", "## Gates", "", _gates_table(view), "", "## Cost", "", _cost(view)]
    if view.egress_denied:
        lines += ["", *_egress_denied(view)]
    if view.dashboard_url:
        lines += ["", f"[Run in the dashboard]({view.dashboard_url})"]
    if view.transcript_tail:
        excerpt = view.transcript_tail[-4000:]
        lines += [
            "",
            "<details><summary>Transcript excerpt</summary>",
            "",
            *fence(excerpt),
            "</details>",
        ]
    lines += ["", STATUS_MARKER.replace("status", f"pr run={view.run_id}")]
    return cap("\n".join(lines))
