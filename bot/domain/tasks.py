"""Local tasks as the agent and the scheduler read them: the body the user wrote, then its
acceptance checklist and focus paths in the shapes an issue would carry them (a ``- [ ]``
list and a ``Focus:`` line), so prompts and scope locks treat a local task exactly like an
issue. An issue has neither list: its text is its body, unchanged."""

from __future__ import annotations

import re
from collections.abc import Sequence

SLUG = re.compile(r"[^a-z0-9]+")
MAX_ITEMS = 50


def task_text(body: str, acceptance: Sequence[str] = (), focus: Sequence[str] = ()) -> str:
    """``body`` with the acceptance checklist and the ``Focus:`` line after it."""
    parts = [body.rstrip()] if body.strip() else []
    items = [" ".join(item.split()) for item in acceptance if item.strip()]
    if items:
        parts.append("Acceptance criteria:\n" + "\n".join(f"- [ ] {item}" for item in items))
    paths = [path.strip() for path in focus if path.strip() and "," not in path]
    if paths:
        parts.append("Focus: " + ", ".join(paths))
    return "\n\n".join(parts)


def split_paths(text: str) -> list[str]:
    """``a/**, b.py`` (commas or spaces) as a list of globs."""
    return [part for part in re.split(r"[,\s]+", text) if part]


def repository_name(folder: str) -> str:
    """A repository name for a folder: lower-case letters, digits and ``-``."""
    name = SLUG.sub("-", folder.lower()).strip("-")
    return name[:100] or "repository"
