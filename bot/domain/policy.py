"""Diff policy before push (SPEC §7): paths, size limits and a secret scanner. Pure functions.

Globs use gitignore semantics (``pathspec``): ``**`` spans directories, a pattern without a
slash (``*.lock``) matches the name at any depth, a leading ``/`` anchors at the repository root,
and a trailing ``/`` means everything under that directory.

``PROTECTED_PATHS`` (workflows and ``.github/bosun.yml``) are denied whatever the repository's
``paths.allow`` says, and so is any change to the folders they lie in *as such* (``.github`` or
``.github/workflows`` turned into a link or a file); the server may pass ``protected=()`` to
lift that.

The secret scanner reads the unified diff the way git writes it: lines end at ``\n`` only, and
each hunk holds exactly the lines its header counts. A diff that does not add up is refused
(rule ``secrets.unscanned``), never passed half-read. Files git calls binary are scanned too,
from their added content (:func:`scan_binary`). What counts as a credential is
``bot.domain.secrets`` (detect-secrets' detectors and Bosun's own rules), the rules the logs and
git's output are redacted with.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import pathspec

from bot.domain.display import shown
from bot.domain.repoconfig import PROTECTED_PATHS, RepoConfig
from bot.domain.secrets import find_secrets, shannon_entropy
from bot.errors import BosunError


@dataclass(frozen=True)
class ChangedFile:
    """One file in the diff; ``old_path`` is set for renames and copies."""

    path: str
    status: str = "modified"  # added, modified, deleted, renamed, copied, type_changed
    added: int = 0
    removed: int = 0
    binary: bool = False
    old_path: str | None = None
    size: int | None = None
    """Bytes after the change (``None``: deleted, or not known)."""
    old_size: int | None = None
    """Bytes before the change (``None``: added, or not known)."""

    @property
    def grown_bytes(self) -> int:
        return max(0, (self.size or 0) - (self.old_size or 0))


@dataclass(frozen=True)
class Violation:
    """One broken rule; ``rule`` names it (for the ``policy`` event), ``path`` says where."""

    rule: str
    path: str | None
    message: str


@dataclass(frozen=True)
class PolicyResult:
    violations: tuple[Violation, ...]
    files_changed: int
    diff_lines: int
    secrets: tuple[SecretFinding, ...] = field(default_factory=tuple)
    scanned: bool = False
    """Whether the diff was scanned for secrets (never when it breaks a size limit)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def oversized(self) -> bool:
        """Whether a size limit refused the diff (then it is not scanned)."""
        return any(v.rule in SIZE_RULES for v in self.violations)

    def as_markdown(self) -> str:
        """A short report for the status comment and check run."""
        if self.ok:
            return f"Diff policy passed ({self.files_changed} files, {self.diff_lines} lines)."
        lines = ["Diff policy refused this change:", ""]
        for v in self.violations:
            where = f"{shown(v.path, code=True)}: " if v.path else ""
            lines.append(f"- {where}{v.message} (rule `{v.rule}`)")
        return "\n".join(lines)


@lru_cache(maxsize=256)
def _spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(patterns)


def matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) matches any of the gitignore-style globs."""
    globs = tuple(p for p in patterns if p.strip())
    return bool(globs) and _spec(globs).match_file(path.lstrip("/"))


def _paths(change: ChangedFile) -> list[str]:
    paths = [change.path]
    if change.old_path and change.old_path != change.path:
        paths.append(change.old_path)
    return paths


def check_diff(
    changed: Sequence[ChangedFile],
    config: RepoConfig,
    *,
    diff_text: str | None = None,
    diff_bytes: int | None = None,
    protected: Sequence[str] = PROTECTED_PATHS,
    binaries: Iterable[AddedBinary] = (),
) -> PolicyResult:
    """Check a diff against the repository's ``paths`` and ``limits``.

    With ``diff_text`` (the unified diff), added lines are also scanned for credentials, and
    so is what ``binaries`` add, but only when the diff is within the size limits
    (``diff_bytes`` is what the scan reads: the unified diff and the binary files' content):
    an oversized diff is refused without being read.
    """
    violations = _path_violations(changed, config, protected)
    files = len(changed)
    lines = sum(c.added + c.removed for c in changed)
    violations += _limit_violations(changed, config, lines, diff_bytes)
    result = PolicyResult(tuple(violations), files, lines)
    if not (diff_text or binaries) or result.oversized:
        return result
    return with_scan(result, diff_text or "", binaries)


def with_scan(
    result: PolicyResult, diff_text: str, binaries: Iterable[AddedBinary] = ()
) -> PolicyResult:
    """``result`` with the secret scan of ``diff_text`` and of what ``binaries`` add; a diff
    whose lines do not add up to its hunks is refused (``secrets.unscanned``) rather than
    passed half-read."""
    try:
        findings = scan_secrets(diff_text)
    except DiffOutOfStep as exc:
        refused = Violation(
            "secrets.unscanned",
            exc.path,
            f"the diff could not be read line by line ({exc.why}, line {exc.line} of the diff), "
            "so it could not be scanned for secrets",
        )
        return dataclasses.replace(result, violations=(*result.violations, refused))
    for binary in binaries:
        findings += scan_binary(binary.path, binary.new, binary.old)
    return with_secrets(result, findings)


TREE_NOTE_MESSAGES = {
    "nested_git": "a nested repository's `.git`, never read",
    "submodule": "written inside a submodule, which Bosun never updates",
    "special_file": "a FIFO, socket or device file, which git does not record",
}


def check_tree_notes(
    notes: Iterable[tuple[str, str, int]], changed_paths: Iterable[str], config: RepoConfig
) -> tuple[list[Violation], list[Violation]]:
    """What reading the work tree left out (``(kind, path, size)``) and a changed
    ``.gitmodules``, judged by ``paths.nested_repositories``, ``paths.submodules`` and
    ``limits.max_file_bytes`` (a file over it is never even read). Returns
    ``(violations, skipped)``: the second are allowed and only recorded."""
    refuse = {
        "nested_git": config.paths.nested_repositories == "refuse",
        "submodule": config.paths.submodules == "refuse",
        "special_file": False,
        "oversized": True,
    }
    rule = {
        "nested_git": "paths.nested_repositories",
        "submodule": "paths.submodules",
        "special_file": "paths.special_files",
        "oversized": "limits.max_file_bytes",
    }
    found = list(notes)
    if ".gitmodules" in changed_paths:
        found.append(("submodule", ".gitmodules", 0))
    violations: list[Violation] = []
    skipped: list[Violation] = []
    for kind, path, size in found:
        message = TREE_NOTE_MESSAGES.get(kind, kind)
        if kind == "oversized":
            limit = _megabytes(config.limits.max_file_bytes)
            message = f"file of {_megabytes(size)}; the limit is {limit} per file (not read)"
        if path == ".gitmodules":
            message = "changes the submodule list, which Bosun never updates"
        if refuse.get(kind, True):
            violations.append(Violation(rule.get(kind, "paths"), path, message))
        elif path != ".gitmodules":
            skipped.append(Violation(rule.get(kind, "paths"), path, message + "; left out"))
    return violations, skipped


def with_secrets(result: PolicyResult, findings: Sequence[SecretFinding]) -> PolicyResult:
    """``result`` with the scanner's ``findings`` added as violations."""
    found = [
        Violation(
            f"secrets.{finding.kind}",
            finding.path,
            f"line {finding.line} adds what looks like a {finding.description} "
            f"({finding.redacted})",
        )
        for finding in findings
    ]
    return PolicyResult(
        (*result.violations, *found), result.files_changed, result.diff_lines, tuple(findings), True
    )


def protected_folders(protected: Iterable[str]) -> frozenset[str]:
    """The paths that hold a protected glob's files, as such: each leading run of literal
    segments of an anchored glob and its parents (``.github/workflows/**`` gives
    ``.github/workflows`` and ``.github``; ``.github/bosun.yml`` gives ``.github`` and
    itself). A change *to* one of them (a link or a file in the folder's place) changes what
    the protected glob's paths hold, without any of those paths appearing in the diff."""
    folders: set[str] = set()
    for glob in protected:
        parts = glob.strip().lstrip("/").rstrip("/").split("/")
        if len(parts) < 2 and not glob.strip().startswith("/"):
            continue  # a name matched at any depth: no fixed folder
        literal: list[str] = []
        for part in parts:
            if not part or any(c in part for c in "*?[]\\!"):
                break
            literal.append(part)
            folders.add("/".join(literal))
    return frozenset(folders)


def _path_violations(
    changed: Sequence[ChangedFile], config: RepoConfig, protected: Sequence[str]
) -> list[Violation]:
    violations: list[Violation] = []
    deny = tuple(config.paths.deny)
    allow = tuple(config.paths.allow)
    folders = protected_folders(protected)
    for change in changed:
        for path in _paths(change):
            if matches(path, protected) or path.strip("/") in folders:
                violations.append(
                    Violation(
                        "paths.protected",
                        path,
                        "protected path: the agent may not change it (repository workflows and "
                        "Bosun's own policy)"
                        + ("" if matches(path, protected) else ", nor the folder that holds them"),
                    )
                )
            elif matches(path, deny):
                violations.append(Violation("paths.deny", path, "matches `paths.deny`"))
            elif allow and not matches(path, allow):
                violations.append(
                    Violation(
                        "paths.allow", path, "outside `paths.allow` (" + ", ".join(allow) + ")"
                    )
                )
    return violations


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size} bytes"


def _limit_violations(
    changed: Sequence[ChangedFile], config: RepoConfig, lines: int, diff_bytes: int | None
) -> list[Violation]:
    violations: list[Violation] = []
    files = len(changed)
    limits = config.limits
    if files > limits.max_files_changed:
        violations.append(
            Violation(
                "limits.max_files_changed",
                None,
                f"{files} files changed; the limit is {limits.max_files_changed}",
            )
        )
    if lines > limits.max_diff_lines:
        violations.append(
            Violation(
                "limits.max_diff_lines",
                None,
                f"{lines} lines added or removed; the limit is {limits.max_diff_lines}",
            )
        )
    for change in changed:
        size = change.size or 0
        if size > limits.max_file_bytes and size > (change.old_size or 0):
            kind = "binary file" if change.binary else "file"
            grew = "" if change.old_size is None else f" (was {_megabytes(change.old_size)})"
            violations.append(
                Violation(
                    "limits.max_file_bytes",
                    change.path,
                    f"{kind} of {_megabytes(size)}{grew}; the limit is "
                    f"{_megabytes(limits.max_file_bytes)} per file",
                )
            )
    grown = sum(change.grown_bytes for change in changed)
    if grown > limits.max_diff_bytes:
        violations.append(
            Violation(
                "limits.max_diff_bytes",
                None,
                f"the change adds {_megabytes(grown)}; the limit is "
                f"{_megabytes(limits.max_diff_bytes)}",
            )
        )
    elif diff_bytes is not None and diff_bytes > limits.max_diff_bytes:
        violations.append(
            Violation(
                "limits.max_diff_bytes",
                None,
                f"the diff is {_megabytes(diff_bytes)}; the limit is "
                f"{_megabytes(limits.max_diff_bytes)}",
            )
        )
    return violations


SIZE_RULES = frozenset(
    {"limits.max_files_changed", "limits.max_diff_lines", "limits.max_file_bytes",
     "limits.max_diff_bytes"}
)  # fmt: skip
"""Rules about the diff's size: when one breaks, the diff is refused without being scanned."""


# --- secret scanner -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecretFinding:
    """A credential-looking string on an added line (``line`` counts in the new file)."""

    path: str
    line: int
    kind: str
    redacted: str
    description: str = ""
    """What the rule found, in a sentence ("GitHub token"); the kind when empty."""

    def __post_init__(self) -> None:
        if not self.description:
            object.__setattr__(self, "description", self.kind.replace("_", " "))


_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _redact(secret: str) -> str:
    return f"{shown(secret[:4], code=True)}…{len(secret)} chars" if len(secret) > 8 else "…"


def _scan_line(path: str, number: int, text: str) -> Iterator[SecretFinding]:
    for found in find_secrets(text):
        yield SecretFinding(path, number, found.kind, _redact(found.secret), found.description)


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(name: str) -> str:
    """A path as git writes it in a diff header, C-quoted when it holds special bytes
    (``"b/x\\376"``), back to the path (bytes that are not UTF-8 as ``surrogateescape``)."""
    if not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
        return name
    out = bytearray()
    body = name[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and body[i + 1 : i + 4].isdigit() and len(body[i + 1 : i + 4]) == 3:
            out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        elif char == "\\" and body[i + 1 : i + 2] in _C_ESCAPES:
            out.append(_C_ESCAPES[body[i + 1]])
            i += 2
        else:
            out += char.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _diff_path(header: str) -> str | None:
    name = _unquote(header[4:].split("\t", 1)[0].strip())
    if name == "/dev/null":
        return None
    return name[2:] if name.startswith(("a/", "b/")) else name


class DiffOutOfStep(BosunError, ValueError):
    """A unified diff whose lines do not add up to its hunks' counts: read on, the scanner
    would take added lines for headers (or stop early) and never scan them."""

    def __init__(self, line: int, path: str | None, why: str) -> None:
        super().__init__(f"line {line} of the diff: {why}")
        self.line = line
        self.path = path
        self.why = why


_HEADERS = (
    "diff --git ", "index ", "--- ", "+++ ", "old mode ", "new mode ", "deleted file mode ",
    "new file mode ", "similarity index ", "dissimilarity index ", "rename from ", "rename to ",
    "copy from ", "copy to ", "Binary files ", "\\",
)  # fmt: skip
"""What git writes between hunks (``\\`` is "No newline at end of file")."""


def scan_secrets(diff_text: str) -> list[SecretFinding]:
    """Credentials on added lines of a unified diff (``git diff`` output).

    Lines end at ``\\n`` only, as git writes them (``str.splitlines`` would also break at
    form feed, ``\\r``, ``\\x1c`` to ``\\x1e``, ``\\x85``, ``\\u2028``/``\\u2029``, which a
    line of a file may hold). Raises ``DiffOutOfStep`` when a hunk holds more or fewer lines
    than its header counts, or a line between hunks is not one git writes there."""
    findings: list[SecretFinding] = []
    path: str | None = None
    old_left = new_left = 0
    line_no = 0
    lines = diff_text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        if old_left > 0 or new_left > 0:
            marker = raw[:1]
            if marker == "+" and new_left > 0:
                if path is not None:
                    findings += _scan_line(path, line_no, raw[1:])
                line_no += 1
                new_left -= 1
            elif marker == "-" and old_left > 0:
                old_left -= 1
            elif marker == "\\":
                pass
            elif marker == " " and old_left > 0 and new_left > 0:
                line_no += 1
                old_left -= 1
                new_left -= 1
            else:
                raise DiffOutOfStep(number, path, "a line its hunk does not count")
            continue
        if raw.startswith("diff --git "):
            path = None
        elif raw.startswith("+++ "):
            path = _diff_path(raw)
        elif hunk := _HUNK.match(raw):
            old_left = int(hunk.group(1) or 1)
            line_no = int(hunk.group(2))
            new_left = int(hunk.group(3) or 1)
        elif not raw.startswith(_HEADERS):
            raise DiffOutOfStep(number, path, "a line outside any hunk")
    if old_left > 0 or new_left > 0:
        raise DiffOutOfStep(len(lines), path, "the diff ends inside a hunk")
    return findings


@dataclass(frozen=True)
class AddedBinary:
    """A file git calls binary (a NUL byte in it): its content after the change and before
    (``None`` when it is new), for :func:`scan_binary`."""

    path: str
    new: bytes
    old: bytes | None = None


def scan_binary(path: str, new: bytes, old: bytes | None = None) -> list[SecretFinding]:
    """Credentials in what a binary file adds: each line of ``new`` (bytes up to ``\\n``) that
    ``old`` does not hold, read as UTF-8 (other bytes replaced, so every ASCII token shows).
    ``line`` counts ``\\n`` in the new file."""
    before = frozenset(old.split(b"\n")) if old else frozenset()
    findings: list[SecretFinding] = []
    for number, line in enumerate(new.split(b"\n"), 1):
        if line in before or not line:
            continue
        findings += _scan_line(path, number, line.decode("utf-8", "replace"))
    return findings


__all__ = [
    "SIZE_RULES",
    "AddedBinary",
    "ChangedFile",
    "DiffOutOfStep",
    "PolicyResult",
    "SecretFinding",
    "Violation",
    "check_diff",
    "matches",
    "protected_folders",
    "scan_binary",
    "scan_secrets",
    "shannon_entropy",
    "with_scan",
    "with_secrets",
]
