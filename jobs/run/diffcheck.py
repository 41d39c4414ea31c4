"""Diff policy before push (SPEC §7): path rules, size limits and the secret scanner, turned
into one verdict with a ``policy`` decision per rule that decided.

The verdict's summary is published (status comment, check run, the run's reason): every path
in it goes through ``bot.domain.display.shown``. A decision's ``path`` is recorded C-quoted as git
shows it (``bot.domain.display.c_quote``: the same text for an ordinary path, one line and no byte
that is not UTF-8 for any other)."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bot.domain.display import c_quote, shown
from bot.domain.policy import (
    AddedBinary,
    ChangedFile,
    PolicyResult,
    Violation,
    check_diff,
    check_tree_notes,
    with_scan,
)
from bot.domain.repoconfig import RepoConfig
from sandboxes.changes import Changes


@dataclass
class DiffVerdict:
    allowed: bool
    summary: str
    decisions: list[dict[str, Any]] = field(default_factory=list)


async def evaluate_diff(changes: Changes, config: RepoConfig) -> DiffVerdict:
    """Paths and size limits first (cheap, from git's counts and blob sizes); the secret scan
    only for a diff within the limits, and in a thread, so a large diff never holds the
    worker's event loop (other runs share it)."""
    files = [
        ChangedFile(
            path=f.path,
            status=f.status,
            added=f.added or 0,
            removed=f.removed or 0,
            binary=f.binary,
            old_path=f.old_path,
            size=f.size,
            old_size=f.old_size,
        )
        for f in changes.files
    ]
    result = check_diff(files, config, diff_bytes=changes.scan_bytes)
    notes = [(note.kind, note.path, note.size) for note in changes.notes]
    refused, skipped = check_tree_notes(notes, changes.paths, config)
    if refused:
        result = dataclasses.replace(result, violations=(*result.violations, *refused))
    binaries = [AddedBinary(b.path, b.new, b.old) for b in changes.binaries]
    if (changes.diff or binaries) and not result.oversized:
        result = await asyncio.to_thread(with_scan, result, changes.diff, binaries)
    elif changes.diff_omitted and not result.oversized:  # cannot happen with one limit; be sure
        result = PolicyResult(
            (
                *result.violations,
                Violation("limits.max_diff_bytes", None, "diff too large to read"),
            ),
            result.files_changed,
            result.diff_lines,
        )
    decisions: list[dict[str, Any]] = []
    for violation in result.violations:
        decision: dict[str, Any] = {
            "rule": violation.rule,
            "path": None if violation.path is None else c_quote(violation.path),
            "decision": "deny",
            "message": violation.message,
        }
        decisions.append(decision)
    allowed = [
        {
            "rule": v.rule,
            "path": None if v.path is None else c_quote(v.path),
            "decision": "skip",
            "message": v.message,
        }
        for v in skipped
    ]
    if not decisions:
        decisions.extend(allowed)
        decisions.append(
            {
                "rule": "diff_policy",
                "decision": "allow",
                "message": f"{len(files)} file(s), +{changes.lines_added} -{changes.lines_removed}"
                f", {_size(changes)} within limits; no secrets found",
            }
        )
        return DiffVerdict(True, "passed", decisions)
    lines = []
    for violation in result.violations[:20]:
        where = shown(violation.path) if violation.path else ""
        lines.append(
            f"{where} ({violation.rule}): {violation.message}"
            if where
            else f"{violation.message} ({violation.rule})"
        )
    more = f" (+{len(decisions) - 20} more)" if len(decisions) > 20 else ""
    return DiffVerdict(False, "; ".join(lines) + more, decisions + allowed)


def _size(changes: Changes) -> str:
    grown = changes.grown_bytes
    return f"{grown / 1_000_000:.1f} MB" if grown >= 100_000 else f"{grown} bytes"
