"""A run's unified diff cut into files, and one file's rows for the unified or the side-by-side
view. Pure: no I/O. The run page lists the files (with ``diff-stats``) and loads each file's
rows only when it is opened, so a diff of several megabytes never reaches the browser whole."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
MAX_FILE_LINES = 20_000
"""A single file's rows shown at most (the rest is in the diff artifact)."""


@dataclass(frozen=True, slots=True)
class FilePatch:
    path: str
    start: int
    end: int
    """Character offsets of this file's part in the whole diff text."""


def split_files(text: str) -> list[FilePatch]:
    """Each file's part of a ``git diff`` output, in order."""
    starts = [m.start() for m in re.finditer(r"^diff --git ", text, flags=re.MULTILINE)]
    out: list[FilePatch] = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        header = text[start : text.find("\n", start) if "\n" in text[start:end] else end]
        out.append(FilePatch(_path_of(text[start:end], header), start, end))
    return out


def _path_of(part: str, header: str) -> str:
    for line in part.splitlines()[:8]:
        if line.startswith("+++ b/"):
            return line[6:]
        if line.startswith("rename to "):
            return line[10:]
    for line in part.splitlines()[:8]:
        if line.startswith("--- a/"):
            return line[6:]
    # diff --git a/PATH b/PATH (paths without spaces, or binary files)
    rest = header[len("diff --git ") :]
    half = rest.split(" b/", 1)
    return half[1] if len(half) == 2 else rest.removeprefix("a/")


Kind = Literal["context", "add", "del", "hunk", "meta"]


@dataclass(frozen=True, slots=True)
class Row:
    kind: Kind
    old: int | None
    new: int | None
    text: str


@dataclass(slots=True)
class SplitRow:
    kind: Literal["pair", "hunk", "meta"]
    left: Row | None = None
    right: Row | None = None


@dataclass(slots=True)
class Rendered:
    rows: list[Row] = field(default_factory=list)
    truncated: bool = False
    binary: bool = False


def rows_of(part: str, limit: int = MAX_FILE_LINES) -> Rendered:
    """The rows of one file's diff part: hunks with old/new line numbers."""
    out = Rendered()
    old = new = 0
    in_hunk = False
    for line in part.splitlines():
        if len(out.rows) >= limit:
            out.truncated = True
            break
        match = HUNK.match(line)
        if match:
            old, new = int(match.group(1)), int(match.group(3))
            in_hunk = True
            out.rows.append(Row("hunk", None, None, line))
            continue
        if not in_hunk:
            if line.startswith("Binary files") or line.startswith("GIT binary patch"):
                out.binary = True
                out.rows.append(Row("meta", None, None, line))
            elif line.startswith(("new file", "deleted file", "rename ", "similarity", "old mode")):
                out.rows.append(Row("meta", None, None, line))
            continue
        if line.startswith("+"):
            out.rows.append(Row("add", None, new, line[1:]))
            new += 1
        elif line.startswith("-"):
            out.rows.append(Row("del", old, None, line[1:]))
            old += 1
        elif line.startswith("\\"):
            out.rows.append(Row("meta", None, None, line))
        else:
            out.rows.append(Row("context", old, new, line[1:] if line else ""))
            old += 1
            new += 1
    return out


def side_by_side(rows: list[Row]) -> list[SplitRow]:
    """Deleted lines beside the added lines that replace them; context on both sides."""
    out: list[SplitRow] = []
    dels: list[Row] = []
    adds: list[Row] = []

    def flush() -> None:
        for i in range(max(len(dels), len(adds))):
            left = dels[i] if i < len(dels) else None
            right = adds[i] if i < len(adds) else None
            out.append(SplitRow("pair", left, right))
        dels.clear()
        adds.clear()

    for row in rows:
        if row.kind == "del":
            if adds:
                flush()
            dels.append(row)
        elif row.kind == "add":
            adds.append(row)
        else:
            flush()
            if row.kind == "context":
                out.append(SplitRow("pair", row, row))
            else:
                out.append(SplitRow("hunk" if row.kind == "hunk" else "meta", row, row))
    flush()
    return out


__all__ = ["FilePatch", "Rendered", "Row", "SplitRow", "rows_of", "side_by_side", "split_files"]
