"""What a run changed: per-file stats and the unified diff between two trees, computed by git in
the host-owned scratch repository (``sandboxes.scratch``), never in the agent's workspace.

Paths are the agent's bytes, read losslessly: git's ``-z`` listings are decoded as UTF-8 with
``surrogateescape``, so a byte that is not UTF-8 stays itself (``"x\udcfe"`` and
``"x\udcff"`` are two paths with their own counts and sizes, never one). Show such a path to
people through ``bot.domain.display.shown``, which C-quotes it as git does (``"x\376"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandboxes.git import GitResult


class _Git(Protocol):
    def __call__(self, *args: str, stdin: bytes | None = None) -> Awaitable[GitResult]: ...


@dataclass(frozen=True, slots=True)
class TreeNote:
    """Something the host's read of the work tree left out or kept as the base had it
    (``sandboxes.treewalk``)."""

    kind: str
    """``nested_git`` (a nested repository's ``.git``, left out), ``submodule`` (something
    written where the base has a submodule; the submodule is kept as it was) or
    ``special_file`` (a FIFO, socket or device, skipped) or ``oversized`` (a new or changed
    file over ``limits.max_file_bytes``, never read)."""
    path: str
    size: int = 0
    """Bytes of an ``oversized`` file."""


@dataclass(frozen=True, slots=True)
class FileChange:
    """One changed path. ``added``/``removed`` are ``None`` for binary files."""

    path: str
    status: str
    """``A`` added, ``M`` modified, ``D`` deleted, ``R`` renamed, ``T`` type changed."""
    added: int | None
    removed: int | None
    binary: bool
    old_path: str | None = None
    """The previous path of a rename."""
    size: int | None = None
    """Bytes of the file after the change (``None`` when deleted or a submodule)."""
    old_size: int | None = None
    """Bytes of the file before the change (``None`` when added)."""
    blob: str | None = None
    """The object id of the file after the change (``None`` when deleted)."""
    old_blob: str | None = None
    """The object id of the file before the change (``None`` when added)."""

    @property
    def grown_bytes(self) -> int:
        """Bytes the change adds to this file: its size if new, its growth if changed."""
        return max(0, (self.size or 0) - (self.old_size or 0))

    @property
    def binary_bytes(self) -> int:
        """Bytes of both sides of a binary file (what scanning what it adds reads)."""
        return (self.size or 0) + (self.old_size or 0) if self.binary else 0


@dataclass(frozen=True, slots=True)
class BinaryContent:
    """A file git calls binary, as it is after the change and before (``None``: added). The
    unified diff says only "Binary files differ", so the secret scan reads these."""

    path: str
    new: bytes
    old: bytes | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Everything the workspace changed relative to a base commit."""

    base_sha: str
    diff: str
    """Unified diff (``git diff``) including untracked files; empty when it was too large to
    read (see ``diff_bytes``)."""
    files: tuple[FileChange, ...]
    diff_bytes: int | None = None
    """Size of the unified diff; ``None`` when it was not even produced (the files it would
    hold already add more than the limit ``changes`` was given)."""
    tree: str = ""
    """The tree the diff was taken to (what a commit of these changes records)."""
    notes: tuple[TreeNote, ...] = ()
    """What reading the work tree left out (policy decides whether that is allowed)."""
    tree_files: frozenset[str] = frozenset()
    """Every regular file in ``tree`` (what gate annotations may point at)."""
    binaries: tuple[BinaryContent, ...] = ()
    """The content of every binary file the diff adds or changes; read, like ``diff``, only
    when ``scan_bytes`` is within the limit ``changes`` was given."""

    @property
    def binary_bytes(self) -> int:
        """Bytes of the binary files' content, both sides (``binaries``)."""
        return sum(change.binary_bytes for change in self.files)

    @property
    def scan_bytes(self) -> int | None:
        """What a secret scan reads: the unified diff and the binary files' content
        (``None`` when the diff was not even produced)."""
        return None if self.diff_bytes is None else self.diff_bytes + self.binary_bytes

    @property
    def diff_omitted(self) -> bool:
        """Whether ``diff`` was left empty because the change is over the size limit."""
        return bool(self.files) and not self.diff and self.diff_bytes != 0

    @property
    def paths(self) -> list[str]:
        """Every path touched, including the old side of renames (what path policy checks)."""
        seen: list[str] = []
        for change in self.files:
            for path in (change.old_path, change.path):
                if path is not None and path not in seen:
                    seen.append(path)
        return seen

    @property
    def lines_added(self) -> int:
        return sum(change.added or 0 for change in self.files)

    @property
    def lines_removed(self) -> int:
        return sum(change.removed or 0 for change in self.files)

    @property
    def grown_bytes(self) -> int:
        """Bytes the change adds: new files plus the growth of changed ones, binary included."""
        return sum(change.grown_bytes for change in self.files)

    @property
    def empty(self) -> bool:
        return not self.files


async def diff_changes(
    git: _Git, base: str, tree: str, scratch: Path, *, max_diff_bytes: int | None = None
) -> Changes:
    """Diff ``tree`` against ``base`` (a commit or tree) with ``git`` run in a bare repository
    (no work tree, so no ``.gitattributes`` is read; external diff and textconv off).

    With ``max_diff_bytes`` the unified diff is read into memory only when it fits: file counts
    and sizes come first (cheap), the diff is written to a file by git and left unread
    (``diff == ""``) when it is larger, and not produced at all when the files it would hold
    already add more than the limit. The binary files' content (``Changes.binaries``) is read
    only when it fits too, together with the diff (``Changes.scan_bytes``)."""
    flags = ("-r", "-z", "-M", "--no-ext-diff", "--no-textconv")
    numstat = await git("diff-tree", *flags, "--numstat", base, tree)
    status = await git("diff-tree", *flags, "--name-status", base, tree)
    raw = await git("diff-tree", *flags, "--raw", "--no-abbrev", base, tree)
    files = await _sized(git, _parse(_paths(numstat), _paths(status)), _paths(raw))
    if max_diff_bytes is not None and sum(f.grown_bytes for f in files) > max_diff_bytes:
        return Changes(base, "", tuple(files), None, tree)
    patch = scratch / f"bosun-diff-{uuid.uuid4().hex}"
    try:
        await git(
            "diff", "--no-ext-diff", "--no-textconv", "--find-renames", f"--output={patch}",
            base, tree,
        )  # fmt: skip
        diff_bytes = (await asyncio.to_thread(patch.stat)).st_size
        text = ""
        if max_diff_bytes is None or diff_bytes <= max_diff_bytes:
            text = (await asyncio.to_thread(patch.read_bytes)).decode("utf-8", "replace")
        binaries: tuple[BinaryContent, ...] = ()
        scan_bytes = diff_bytes + sum(f.binary_bytes for f in files)
        if max_diff_bytes is None or scan_bytes <= max_diff_bytes:
            binaries = await _binaries(git, files)
        return Changes(base, text, tuple(files), diff_bytes, tree, binaries=binaries)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(patch.unlink)


def _paths(result: GitResult) -> str:
    """A ``-z`` listing as text, every byte kept (``surrogateescape``)."""
    return result.stdout.decode("utf-8", "surrogateescape")


async def _binaries(git: _Git, files: list[FileChange]) -> tuple[BinaryContent, ...]:
    """Both sides of every binary file in ``files``, read from the repository's objects."""
    binary = [f for f in files if f.binary and f.blob]
    wanted = sorted({sha for f in binary for sha in (f.blob, f.old_blob) if sha})
    if not wanted:
        return ()
    batch = await git("cat-file", "--batch", stdin="".join(f"{sha}\n" for sha in wanted).encode())
    blobs = _batch_contents(batch.stdout)
    return tuple(
        BinaryContent(f.path, blobs[f.blob], blobs.get(f.old_blob) if f.old_blob else None)
        for f in binary
        if f.blob in blobs
    )


def _batch_contents(out: bytes) -> dict[str, bytes]:
    """``git cat-file --batch`` output: object id -> content."""
    contents: dict[str, bytes] = {}
    at = 0
    while at < len(out):
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if len(header) != 3:  # "<id> missing"
            continue
        size = int(header[2])
        contents[header[0].decode()] = out[at : at + size]
        at += size + 1
    return contents


async def _sized(git: _Git, files: list[FileChange], raw: str) -> list[FileChange]:
    """``files`` with the byte sizes of both sides, from the blobs' sizes in the repository."""
    blobs = _raw_blobs(raw)
    wanted = sorted({sha for pair in blobs.values() for sha in pair if sha.strip("0")})
    sizes: dict[str, int] = {}
    if wanted:
        check = await git(
            "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)",
            stdin="".join(f"{sha}\n" for sha in wanted).encode(),
        )  # fmt: skip
        for line in check.text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "blob":
                sizes[parts[0]] = int(parts[2])
    sized = []
    for change in files:
        old_sha, new_sha = blobs.get(change.path, ("", ""))
        sized.append(
            dataclasses.replace(
                change,
                size=sizes.get(new_sha),
                old_size=sizes.get(old_sha),
                blob=new_sha if new_sha in sizes else None,
                old_blob=old_sha if old_sha in sizes else None,
            )
        )
    return sized


def _raw_blobs(raw: str) -> dict[str, tuple[str, str]]:
    """``git diff --raw -z --no-abbrev``: new path -> (old blob, new blob)."""
    blobs: dict[str, tuple[str, str]] = {}
    fields = raw.split("\0")
    i = 0
    while i < len(fields) - 1:
        meta = fields[i].lstrip(":").split()
        if len(meta) < 5:
            break
        old_sha, new_sha, code = meta[2], meta[3], meta[4]
        if code[:1] in {"R", "C"}:
            path = fields[i + 2]
            i += 3
        else:
            path = fields[i + 1]
            i += 2
        blobs[path] = (old_sha, new_sha)
    return blobs


def _parse(numstat: str, name_status: str) -> list[FileChange]:
    counts: dict[str, tuple[int | None, int | None]] = {}
    fields = numstat.split("\0")
    i = 0
    while i < len(fields) - 1:
        added, removed, path = fields[i].split("\t", 2)
        if path == "":  # rename: "added\tremoved\t" then old and new paths
            path = fields[i + 2]
            i += 3
        else:
            i += 1
        binary = added == "-"
        counts[path] = (None, None) if binary else (int(added), int(removed))
    changes: list[FileChange] = []
    fields = name_status.split("\0")
    i = 0
    while i < len(fields) - 1:
        code = fields[i]
        if code[:1] in {"R", "C"}:
            old, new = fields[i + 1], fields[i + 2]
            i += 3
        else:
            old, new = None, fields[i + 1]
            i += 2
        plus, minus = counts.get(new, (0, 0))
        binary = new in counts and plus is None
        changes.append(FileChange(new, code[:1], plus, minus, binary, old))
    return changes
