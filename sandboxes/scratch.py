"""The host-owned scratch repository where a run's result is committed and pushed from.

The agent's workspace is hostile data (SPEC §6), so the host never runs git in it. Instead:

1. ``snapshot`` walks the work tree in a child process that has dropped to the workspace
   owner's uid (``sandboxes.treewalk``: no symlink followed, no ``.git`` read) and streams what
   it found into ``git fast-import`` here — a bare repository under the run's folder, outside
   the agent's mount, owned by the worker, borrowing the mirror's objects through
   ``objects/info/alternates``. ``fast-import`` runs no filter, hook or attribute; it only
   stores bytes.
2. ``changes`` diffs the snapshot's tree against the base with ``git diff-tree`` here (a bare
   repository has no work tree and so reads no ``.gitattributes``; external diff and textconv
   are off besides).
3. ``commit`` makes one commit from the tree on top of the run's starting commit
   (``commit-tree``: no hooks, no signing) and ``push`` sends it from here.

Git's configuration here is the host's own: ``sandboxes.git.git_env`` (no system or user
config, hooks and fsmonitor off, ``ext::`` refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandboxes.changes import Changes, TreeNote, diff_changes
from sandboxes.errors import GitError, UnreadableWorkspace
from sandboxes.git import GitIdentity, GitResult, git_env, run_git, strip_credentials
from sandboxes.treewalk import (
    MODE_EXEC,
    MODE_FILE,
    NOTE_NESTED_GIT,
    NOTE_SPECIAL,
    NOTE_SUBMODULE,
    Blob,
    Entry,
    FrameReader,
    Note,
    WalkError,
)

WALK_TIMEOUT = 900.0
NOTE_NAMES = {
    NOTE_NESTED_GIT: "nested_git",
    NOTE_SUBMODULE: "submodule",
    NOTE_SPECIAL: "special_file",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The work tree as the host read it: a tree object in the scratch repository."""

    tree: str
    files: frozenset[str]
    """Paths of the regular files in it (what gate annotations may point at)."""
    notes: tuple[TreeNote, ...] = ()


class ScratchRepo:
    """A bare repository of the worker's own, one per run."""

    def __init__(self, path: Path, algorithm: str = "sha1") -> None:
        self.path = path
        self.algorithm = algorithm

    @classmethod
    async def create(cls, path: Path, mirror: Path) -> ScratchRepo:
        """An empty bare repository at ``path`` that reads ``mirror``'s objects."""
        fmt = await run_git(["rev-parse", "--show-object-format"], cwd=mirror)
        algorithm = fmt.text.strip() or "sha1"
        await run_git(["init", "--bare", "--quiet", f"--object-format={algorithm}", str(path)])
        alternates = path / "objects" / "info" / "alternates"
        target = (mirror / "objects").resolve()
        await asyncio.to_thread(alternates.write_text, f"{target}\n")
        return cls(path, algorithm)

    async def git(
        self,
        *args: str,
        stdin: bytes | None = None,
        check: bool = True,
        auth_header: str | None = None,
        env: dict[str, str] | None = None,
    ) -> GitResult:
        return await run_git(
            list(args), cwd=self.path, stdin=stdin, check=check, auth_header=auth_header, env=env
        )

    async def tree_of(self, commit: str) -> str:
        return (await self.git("rev-parse", "--verify", f"{commit}^{{tree}}")).text.strip()

    async def read_file(self, commit: str, path: str, limit: int) -> bytes | None:
        """``path`` as it is in ``commit`` (at most ``limit`` bytes), ``None`` when absent."""
        result = await self.git("cat-file", "blob", f"{commit}:{path}", check=False)
        return result.stdout[:limit] if result.returncode == 0 else None

    async def snapshot(
        self, workspace: Path, start: str, owner: tuple[int, int] | None
    ) -> Snapshot:
        """Read the work tree at ``workspace`` into a tree object (see the module docstring).
        ``start`` is the commit the run began from: unchanged files are not copied again, and
        tracked files stay recorded even where ``.gitignore`` now ignores them.

        Raises ``UnreadableWorkspace`` (a fixed message; the detail apart) when the tree cannot
        be read as a whole."""
        listing = await self.git("ls-tree", "-r", "-z", "--full-tree", start)
        ids = owner if owner is not None else (-1, -1)
        ref = f"refs/bosun/snapshots/{uuid.uuid4().hex}"
        try:
            files, notes = await asyncio.to_thread(
                self._import, workspace, listing.stdout, ids, ref
            )
        except (WalkError, OSError, subprocess.SubprocessError) as exc:
            raise UnreadableWorkspace(
                "the agent's work could not be read as a plain tree of files; nothing was "
                "pushed (the detail is in the run's `error` artifact)",
                detail=str(exc),
            ) from exc
        tree = await self.tree_of(ref)
        return Snapshot(tree, frozenset(files), tuple(notes))

    def _import(
        self, workspace: Path, listing: bytes, owner: tuple[int, int], ref: str
    ) -> tuple[list[str], list[TreeNote]]:
        with tempfile.TemporaryFile() as walk_err, tempfile.TemporaryFile() as import_err:
            return self._run_import(workspace, listing, owner, ref, walk_err, import_err)

    def _run_import(
        self,
        workspace: Path,
        listing: bytes,
        owner: tuple[int, int],
        ref: str,
        walk_err: IO[bytes],
        import_err: IO[bytes],
    ) -> tuple[list[str], list[TreeNote]]:
        uid, gid = owner if owner[0] >= 0 else (os.geteuid(), os.getegid())
        walker = subprocess.Popen(
            [sys.executable, "-m", "sandboxes.treewalk", "walk", str(uid), str(gid),
             str(workspace), self.algorithm],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=walk_err,
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}, cwd="/",
        )  # fmt: skip
        importer = subprocess.Popen(
            ["git", "fast-import", "--quiet", "--done"],
            cwd=self.path,
            env=git_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=import_err,
        )
        assert walker.stdin and walker.stdout and importer.stdin
        try:
            with contextlib.suppress(BrokenPipeError):
                walker.stdin.write(listing)
            walker.stdin.close()
            files, notes, lines = self._stream(FrameReader(walker.stdout.read), importer.stdin)
            walker.stdout.close()
            if walker.wait(timeout=WALK_TIMEOUT) != 0:
                walk_err.seek(0)
                why = walk_err.read(4000).decode("utf-8", "replace").strip()
                raise WalkError(why or f"the tree walk exited {walker.returncode}")
            out = importer.stdin
            out.write(f"commit {ref}\n".encode())
            out.write(b"committer Bosun <bosun@localhost> 0 +0000\ndata 9\nsnapshot\n")
            out.write(b"deleteall\n")
            out.write(b"".join(lines))
            out.write(b"\ndone\n")
            out.close()
            if importer.wait(timeout=WALK_TIMEOUT) != 0:
                import_err.seek(0)
                errors = import_err.read().decode("utf-8", "replace").strip()
                raise WalkError(f"git fast-import failed: {errors[-2000:]}")
            return files, notes
        finally:
            for process in (walker, importer):
                if process.poll() is None:
                    process.kill()
                    process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        with contextlib.suppress(OSError):
                            pipe.close()

    @staticmethod
    def _stream(
        frames: FrameReader, out: IO[bytes]
    ) -> tuple[list[str], list[TreeNote], list[bytes]]:
        write = out.write
        files: list[str] = []
        notes: list[TreeNote] = []
        lines: list[bytes] = []
        mark = 0
        for frame in frames:
            if isinstance(frame, Note):
                path = frame.path.decode("utf-8", "replace")
                notes.append(TreeNote(NOTE_NAMES.get(frame.kind, "unknown"), path))
                continue
            if isinstance(frame, Entry):
                ref = frame.oid.encode()
            else:
                assert isinstance(frame, Blob)
                mark += 1
                write(b"blob\nmark :%d\ndata %d\n" % (mark, frame.size))
                for chunk in frames.content(frame):
                    write(chunk)
                write(b"\n")
                ref = b":%d" % mark
            lines.append(b"M " + frame.mode + b" " + ref + b" " + quote_path(frame.path) + b"\n")
            if frame.mode in (MODE_FILE, MODE_EXEC):
                files.append(frame.path.decode("utf-8", "surrogateescape"))
        return files, notes, lines

    async def changes(
        self, base: str, snapshot: Snapshot, *, max_diff_bytes: int | None = None
    ) -> Changes:
        """What ``snapshot`` changes relative to ``base`` (see ``sandboxes.changes``)."""
        changes = await diff_changes(
            self.git, base, snapshot.tree, self.path, max_diff_bytes=max_diff_bytes
        )
        return dataclasses.replace(changes, notes=snapshot.notes, tree_files=snapshot.files)

    async def commit(
        self,
        tree: str,
        parent: str,
        message: str,
        *,
        author: GitIdentity,
        committer: GitIdentity,
        trailers: Sequence[tuple[str, str]] = (),
    ) -> str | None:
        """One commit of ``tree`` on ``parent``; ``None`` when ``tree`` is ``parent``'s."""
        if tree == await self.tree_of(parent):
            return None
        text = message.rstrip("\n") + "\n"
        if trailers:
            text += "\n" + "".join(f"{key}: {value}\n" for key, value in trailers)
        env = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": committer.name,
            "GIT_COMMITTER_EMAIL": committer.email,
        }
        made = await self.git(
            "commit-tree", "--no-gpg-sign", tree, "-p", parent, "-F", "-",
            stdin=text.encode(), env=env,
        )  # fmt: skip
        return made.text.strip()

    async def push(
        self,
        sha: str,
        remote_url: str,
        branch: str,
        *,
        auth_header: str | None = None,
        force: bool = False,
    ) -> str:
        """Push ``sha`` to ``refs/heads/<branch>`` at ``remote_url``. Raises ``PushRejected``
        (git's message, credentials redacted) when the remote refuses."""
        argv = ["push", "--porcelain", "--no-verify", strip_credentials(remote_url)]
        argv += ["--force"] if force else []
        argv.append(f"{sha}:refs/heads/{branch}")
        await self.git(*argv, auth_header=auth_header)
        return sha


def quote_path(path: bytes) -> bytes:
    """``path`` C-quoted the way ``git fast-import`` reads it (any byte allowed)."""
    out = bytearray(b'"')
    for byte in path:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif byte < 0x20 or byte >= 0x7F:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    out += b'"'
    return bytes(out)


__all__ = ["GitError", "ScratchRepo", "Snapshot", "quote_path"]
