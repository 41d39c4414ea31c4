"""Diff policy before push (SPEC §7): path rules, size limits and the secret scanner, turned
into one verdict with a ``policy`` decision per rule that decided."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.policy import ChangedFile, check_diff
from bot.repoconfig import RepoConfig
from sandboxes.workspace import Changes


@dataclass
class DiffVerdict:
    allowed: bool
    summary: str
    decisions: list[dict[str, Any]] = field(default_factory=list)


def evaluate_diff(changes: Changes, config: RepoConfig) -> DiffVerdict:
    files = [
        ChangedFile(
            path=f.path,
            status=f.status,
            added=f.added or 0,
            removed=f.removed or 0,
            binary=f.binary,
            old_path=f.old_path,
        )
        for f in changes.files
    ]
    result = check_diff(files, config, diff_text=changes.diff)
    decisions: list[dict[str, Any]] = []
    for violation in result.violations:
        decision: dict[str, Any] = {
            "rule": violation.rule,
            "path": violation.path,
            "decision": "deny",
            "message": violation.message,
        }
        decisions.append(decision)
    if not decisions:
        decisions.append(
            {
                "rule": "diff_policy",
                "decision": "allow",
                "message": f"{len(files)} file(s), +{changes.lines_added} -{changes.lines_removed}"
                " within limits; no secrets found",
            }
        )
        return DiffVerdict(True, "passed", decisions)
    lines = []
    for d in decisions[:20]:
        where = d.get("path") or ""
        if d.get("line"):
            where += f":{d['line']}"
        lines.append(f"{where} ({d['rule']}): {d['message']}" if where else d["message"])
    more = f" (+{len(decisions) - 20} more)" if len(decisions) > 20 else ""
    return DiffVerdict(False, "; ".join(lines) + more, decisions)
