"""How the ``bosun`` commands print the API's read models for people: aligned tables, short
SHAs, relative times, one readable line per run event. Pure functions of their arguments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bot.control.views import (
    ActionOut,
    DiffOut,
    EventOut,
    ProfileOut,
    RunDetail,
    RunSummary,
    TokenOut,
)

SHA = 10
"""Characters of a SHA a table shows."""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on the widest cell; the last column is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def short(sha: str | None) -> str:
    return sha[:SHA] if sha else "-"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """``42s ago``, ``5m ago``, ``3h ago``, ``2d ago`` (``-`` for none)."""
    if when is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = int((now - _aware(when)).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def usd(amount: float | None) -> str:
    return "-" if amount is None else f"${amount:.2f}"


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def target(run: RunSummary) -> str:
    """``owner/name#12`` (or the task id of a run without an issue)."""
    return f"{run.repository}#{run.issue_number}" if run.issue_number else run.repository


def state_of(run: RunSummary) -> str:
    flags = [f for f, on in (("on hold", run.on_hold), ("cancelling", run.cancel_requested)) if on]
    return run.state + (f" ({', '.join(flags)})" if flags else "")


def runs_table(runs: Sequence[RunSummary], now: datetime | None = None) -> str:
    if not runs:
        return "no runs"
    rows = [
        [
            r.id,
            state_of(r),
            target(r),
            f"#{r.pr_number}" if r.pr_number else "-",
            r.profile,
            r.requester,
            short(r.head_sha),
            usd(r.cost_usd),
            ago(r.created_at, now),
            clip(r.title, 50),
        ]
        for r in runs
    ]
    headers = ["RUN", "STATE", "TARGET", "PR", "PROFILE", "BY", "HEAD", "COST", "CREATED", "TITLE"]
    return table(headers, rows)


def run_fields(run: RunSummary, now: datetime | None = None) -> list[tuple[str, str]]:
    budget = f" of {usd(run.budget_usd)}" if run.budget_usd is not None else ""
    gates = {None: "not run", True: "passed", False: "failed"}[run.gates_passed]
    fields = [
        ("run", run.id),
        ("state", state_of(run) + (" (terminal)" if run.terminal else "")),
        ("target", f"{target(run)}  {run.title}"),
        ("pull request", f"#{run.pr_number}" if run.pr_number else "-"),
        ("branch", run.branch or "-"),
        ("base → head", f"{short(run.base_sha)} → {short(run.head_sha)}"),
        ("profile", f"{run.profile} ({run.workflow})"),
        ("requested by", f"{run.requester} via {run.trigger}"),
        ("gates", gates),
        ("cost", f"{usd(run.cost_usd)}{budget}, {run.tokens_in} in / {run.tokens_out} out"),
        ("created", f"{ago(run.created_at, now)}  ({_iso(run.created_at)})"),
        ("finished", f"{ago(run.finished_at, now)}" if run.finished_at else "-"),
    ]
    if run.parent_run_id:
        fields.insert(1, ("retry of", run.parent_run_id))
    if run.reason:
        fields.append(("reason", run.reason))
    return fields


def fields_text(fields: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in fields)


def status_text(run: RunDetail, now: datetime | None = None) -> str:
    """The short answer to "where is this run?"."""
    fields = run_fields(run, now)
    fields.insert(2, ("phase", run.phase or "-"))
    return fields_text(fields)


def detail_text(run: RunDetail, now: datetime | None = None) -> str:
    """Everything ``runs show`` prints: the summary, lineage, gates, approvals, artifacts."""
    parts = [status_text(run, now)]
    if run.lineage.children:
        parts.append("retried as: " + ", ".join(run.lineage.children))
    if run.gates:
        rows = [
            [
                g.name,
                "passed" if g.passed else ("timed out" if g.timed_out else "FAILED"),
                "-" if g.exit_code is None else str(g.exit_code),
                "-" if g.duration_s is None else f"{g.duration_s:.1f}s",
            ]
            for g in run.gates
        ]
        parts.append(table(["GATE", "RESULT", "EXIT", "TIME"], rows))
    if run.approvals:
        rows = [
            [
                a.actor,
                short(a.sha),
                ", ".join(a.paths) or "(all)",
                "valid" if a.valid else f"invalid: {a.invalidated_reason or '-'}",
                ago(a.created_at, now),
            ]
            for a in run.approvals
        ]
        parts.append(table(["APPROVED BY", "SHA", "PATHS", "STATUS", "WHEN"], rows))
    if run.artifacts:
        rows = [[a.name, str(a.size), a.content_type] for a in run.artifacts]
        parts.append(table(["ARTIFACT", "BYTES", "TYPE"], rows))
    if run.prompt_instructions:
        parts.append("instructions:\n" + _indent(run.prompt_instructions))
    return "\n\n".join(parts)


def event_line(event: EventOut) -> str:
    """``HH:MM:SS label  text`` for one run event (local time)."""
    label, text = _describe(event.kind, event.data)
    stamp = _aware(event.created_at).astimezone().strftime("%H:%M:%S")
    lines = text.splitlines() or [""]
    pad = " " * (len(stamp) + 10)
    return "\n".join([f"{stamp} {label:<8} {lines[0]}", *(pad + line for line in lines[1:])])


def _describe(kind: str, d: dict[str, Any]) -> tuple[str, str]:
    match kind:
        case "log":
            return str(d.get("stream") or "log"), str(d.get("line", ""))
        case "message":
            return "agent", str(d.get("text", ""))
        case "status":
            text = f"{d['from']} → {d.get('to', '?')}" if d.get("from") else str(d.get("to"))
            text += f" by {d['actor']}" if d.get("actor") else ""
            return "status", text + (f": {d['reason']}" if d.get("reason") else "")
        case "tool":
            return "tool", _tool(d)
        case "gate_result":
            result = "passed" if d.get("passed") else "FAILED"
            notes = [f"exit {d['exit_code']}"] if d.get("exit_code") is not None else []
            notes += [f"{d['duration_s']}s"] if d.get("duration_s") is not None else []
            notes += ["timed out"] if d.get("timed_out") else []
            text = f"{d.get('name', '?')} {result}"
            return "gate", text + (f" ({', '.join(notes)})" if notes else "")
        case "error":
            text = d.get("message") or d.get("line") or d.get("error") or json.dumps(d)
            return "error", str(text)
        case "progress":
            return "phase", _progress(d)
        case "command":
            text = f"{d.get('command', '?')} by {d.get('actor', '?')}"
            text += f": {d['outcome']}" if d.get("outcome") else ""
            return "command", text + (f" ({d['reason']})" if d.get("reason") else "")
        case "policy":
            text = " ".join(str(d[k]) for k in ("rule", "decision", "path") if d.get(k))
            return "policy", text + (f": {d['message']}" if d.get("message") else "")
        case "artifact":
            return "artifact", f"{d.get('name', '?')} ({d.get('size', '?')} bytes)"
        case "cost":
            if d.get("source") == "budget":
                return "cost", f"budget {usd(d.get('budget_usd'))}"
            model = f" {d['model']}" if d.get("model") else ""
            spent = f", spent {usd(d['spent_usd'])}" if d.get("spent_usd") is not None else ""
            tokens = f"{d.get('tokens_in', 0)} in / {d.get('tokens_out', 0)} out"
            return "cost", f"{_cents(d.get('usd'))}{model} ({tokens}){spent}"
    return kind, json.dumps(d, sort_keys=True, default=str)


def _tool(d: dict[str, Any]) -> str:
    """``Bash: {"command": …}`` for a call, ``result Bash (exit 1, error): …`` for a result."""
    name = str(d.get("name") or "")
    if d.get("phase") != "result":
        return f"{name or '?'}: {clip(str(d.get('input') or ''), 200)}"
    notes = [f"exit {d['exit_code']}"] if d.get("exit_code") is not None else []
    notes += ["error"] if d.get("is_error") else []
    head = " ".join(["result", *([name] if name else [])])
    head += f" ({', '.join(notes)})" if notes else ""
    output = clip(str(d.get("output") or ""), 200)
    return f"{head}: {output or '(no output)'}"


def _cents(amount: float | None) -> str:
    """A model call's cost: small amounts keep four decimals."""
    if amount is None:
        return "-"
    return f"${amount:.4f}" if amount < 1 else f"${amount:.2f}"


def _progress(d: dict[str, Any]) -> str:
    notes = []
    if d.get("step") and d.get("of"):
        notes.append(f"step {d['step']}/{d['of']}")
    if d.get("exit_code") is not None:
        notes.append(f"exit {d['exit_code']}")
    if d.get("duration_s") is not None:
        notes.append(f"{d['duration_s']}s")
    notes += [label for key, label in _FLAGS if d.get(key)]
    return str(d.get("phase", "?")) + (f" ({', '.join(notes)})" if notes else "")


_FLAGS = (("timed_out", "timed out"), ("oom_killed", "out of memory"), ("resumed", "resumed"))


def diff_stat(diff: DiffOut) -> str:
    """Like ``git diff --stat``: one line per file, then the totals."""
    if not diff.files:
        return "no changes"
    width = max(len(_path(f.path, f.old_path)) for f in diff.files)
    lines = []
    for f in diff.files:
        change = "binary" if f.binary else f"+{f.added or 0} -{f.removed or 0}"
        lines.append(f" {_path(f.path, f.old_path).ljust(width)} | {f.status:<2} {change}")
    lines.append(
        f" {len(diff.files)} file(s) changed, {diff.lines_added} insertion(s)(+), "
        f"{diff.lines_removed} deletion(s)(-)"
    )
    return "\n".join(lines)


def _path(path: str, old: str | None) -> str:
    return f"{old} → {path}" if old and old != path else path


def profiles_table(profiles: Sequence[ProfileOut]) -> str:
    if not profiles:
        return "no profiles"
    rows = []
    for p in profiles:
        caps = [
            name
            for name, on in (
                ("streaming", p.capabilities.streaming),
                ("cost", p.capabilities.cost_reporting),
                ("resume", p.capabilities.session_resume),
                ("tools", p.capabilities.tool_allowlist),
            )
            if on
        ]
        rows.append(
            [
                p.name + (" *" if p.default else ""),
                p.runner,
                p.model or "-",
                p.workflow,
                usd(p.budget_usd),
                "-" if p.timeout is None else f"{p.timeout}s",
                ", ".join(caps) or "-",
            ]
        )
    headers = ["PROFILE", "RUNNER", "MODEL", "WORKFLOW", "BUDGET", "TIMEOUT", "CAPABILITIES"]
    return table(headers, rows) + "\n(* the default profile)"


def action_text(action: ActionOut) -> str:
    text = f"{action.command} {action.run_id}: {action.outcome}"
    if action.reason:
        text += f" ({action.reason})"
    if action.new_run_id:
        text += f"\nnew run: {action.new_run_id}"
    if action.outcome == "pending":
        text += f"\nthe worker has not decided yet; see `bosun status {action.run_id}`"
    elif action.run is not None:
        text += f"\nrun is now {state_of(action.run)}"
    return text


def tokens_table(tokens: Sequence[TokenOut], now: datetime | None = None) -> str:
    if not tokens:
        return "no tokens"
    now = now or datetime.now(UTC)
    rows = [
        [
            t.name,
            t.prefix + "…",
            t.scope,
            ", ".join(t.repos) or "(all)",
            _token_state(t, now),
            _iso(t.expires_at) if t.expires_at else "never",
            ago(t.last_used_at, now) if t.last_used_at else "never",
        ]
        for t in tokens
    ]
    headers = ["NAME", "PREFIX", "SCOPE", "REPOSITORIES", "STATE", "EXPIRES", "LAST USED"]
    return table(headers, rows)


def _token_state(token: TokenOut, now: datetime) -> str:
    if token.revoked:
        return "revoked"
    if token.expires_at is not None and _aware(token.expires_at) <= now:
        return "expired"
    return "active"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str:
    if value is None:
        return "-"
    return _aware(value).astimezone().strftime("%Y-%m-%d %H:%M")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
