"""The run manifest (``manifest.json``), the summary artifact and the metrics JSONL line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bot.db.models import Repository, Run, Task
from bot.domain.status import RunView, gates_passed
from bot.profiles import ProfileConfig

MANIFEST_VERSION = 1


def build_manifest(
    run: Run,
    task: Task,
    repository: Repository,
    view: RunView,
    timings: dict[str, float],
    policy: list[dict[str, Any]],
    profile: ProfileConfig,
    approvals: list[dict[str, Any]] | None = None,
    commands: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run.id,
        "parent_run_id": run.parent_run_id,
        "state": view.state.value,
        "reason": view.reason or None,
        "repository": repository.full_name,
        "issue_number": task.issue_number,
        "pr_number": view.pr_number,
        "branch": view.branch,
        "base_sha": view.base_sha,
        "head_sha": view.head_sha,
        "requester": run.requester,
        "trigger": run.trigger,
        "delivery_id": run.delivery_id,
        "profile": {"name": run.profile, **profile.model_dump(exclude={"env"})},
        "workflow": run.workflow,
        "phases": {name: {"state": s, "note": n} for name, (s, n) in view.phases.items()},
        "gates": [
            {
                "name": g.name,
                "passed": g.passed,
                "exit_code": g.exit_code,
                "duration_s": g.duration_s,
            }
            for g in view.gates
        ],
        "gates_passed": gates_passed(view),
        "diff": {
            "files_changed": view.files_changed,
            "lines_added": view.lines_added,
            "lines_removed": view.lines_removed,
            "files": [
                {"path": p, "status": s, "added": a, "removed": r} for p, s, a, r in view.file_stats
            ],
        },
        "policy": policy,
        "approvals": approvals or [],
        "commands": commands or [],
        "cost": {"usd": view.cost_usd, "tokens_in": view.tokens_in, "tokens_out": view.tokens_out},
        "timings_s": timings,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "written_at": datetime.now(UTC),
    }


def with_review(
    manifest: dict[str, Any],
    *,
    state: str,
    reason: str | None,
    head_sha: str | None,
    approvals: list[dict[str, Any]],
    commands: list[dict[str, Any]],
    review: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``manifest`` as the review loop left the run: its state, head, approvals (actor, SHA,
    valid or invalidated, when), the command audit, and what a partial approval or merge did
    (``review``). Everything the pipeline wrote stays as it was."""
    out = {**manifest, "state": state, "reason": reason, "head_sha": head_sha}
    out["approvals"], out["commands"] = approvals, commands
    if review:
        out["review"] = {**(manifest.get("review") or {}), **review}
    out["written_at"] = datetime.now(UTC)
    return out


def summary_markdown(view: RunView, agent_summary: str) -> str:
    lines = [
        f"# Run {view.run_id}: {view.state.value}",
        "",
        f"- Repository: {view.repo}" + (f"#{view.issue_number}" if view.issue_number else ""),
        f"- Requested by: @{view.requester} (profile `{view.profile}`)",
        f"- Branch: `{view.branch}`",
        f"- Base: `{view.base_sha}` → head: `{view.head_sha}`",
        f"- Change: {view.files_changed} file(s), +{view.lines_added} -{view.lines_removed}",
    ]
    if view.pr_number:
        lines.append(f"- Pull request: #{view.pr_number}")
    if view.reason:
        lines += ["", f"**{view.reason}**"]
    if view.gates:
        lines += ["", "## Gates", ""]
        lines += [f"- {g.name}: {'passed' if g.passed else 'failed'}" for g in view.gates]
    if agent_summary:
        lines += ["", "## Agent output (last lines)", "", "```", agent_summary[-3000:], "```"]
    return "\n".join(lines) + "\n"


def metrics_line(run: Run, repository: Repository, view: RunView, timings: dict[str, float]) -> str:
    duration = None
    if run.started_at and run.finished_at:
        duration = (run.finished_at - run.started_at).total_seconds()
    return json.dumps(
        {
            "run_id": run.id,
            "repository": repository.full_name,
            "state": view.state.value,
            "profile": run.profile,
            "duration_s": duration,
            "cost_usd": view.cost_usd,
            "tokens_in": view.tokens_in,
            "tokens_out": view.tokens_out,
            "gates_passed": gates_passed(view) if view.gates else None,
            "files_changed": view.files_changed,
            "timings_s": timings,
            "finished_at": (run.finished_at or datetime.now(UTC)).isoformat(),
        }
    )
