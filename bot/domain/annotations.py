"""Check-run annotations from a failing gate's output (SPEC §3.3): lines of the common
``path:line[:column]: message`` shape (pytest, ruff, mypy, flake8, eslint's unix format, gcc,
tsc …) become failure annotations on that file and line, so the PR's "Files changed" view shows
them in place.

The output comes from the sandbox, so nothing in it is trusted: only relative paths inside the
repository that name a file that exists are kept (``exists`` decides), messages are clipped,
and a gate yields at most ``MAX_PER_GATE`` annotations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

MAX_PER_GATE = 100
MAX_MESSAGE = 1000
BATCH = 50
"""GitHub takes at most 50 annotations per check-run request; more go in later updates."""

_LINE = re.compile(
    r"^(?:/workspace/|\./)?(?P<path>[\w.@+-][\w./@+-]*):(?P<line>\d{1,7})(?::(?P<col>\d{1,5}))?"
    r":?\s+(?P<message>\S.*)$"
)


def clean_path(raw: str) -> str | None:
    """``raw`` as a path relative to the repository root, or ``None`` if it could leave it."""
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path.as_posix()


def gate_annotations(
    gate: str, output: str, exists: Callable[[str], bool], limit: int = MAX_PER_GATE
) -> list[dict[str, Any]]:
    """Annotations for the ``path:line: message`` lines of ``output`` whose file exists."""
    found: list[dict[str, Any]] = []
    seen: set[tuple[str, int, str]] = set()
    for line in output.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        path = clean_path(match["path"])
        number = int(match["line"])
        message = match["message"].strip()[:MAX_MESSAGE]
        if path is None or number < 1 or (path, number, message) in seen or not exists(path):
            continue
        seen.add((path, number, message))
        found.append(
            {
                "path": path,
                "start_line": number,
                "end_line": number,
                "annotation_level": "failure",
                "title": f"gate {gate}",
                "message": message,
            }
        )
        if len(found) >= limit:
            break
    return found


__all__ = ["BATCH", "clean_path", "gate_annotations"]
