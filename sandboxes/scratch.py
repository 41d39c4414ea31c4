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
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sandboxes.changes import Changes, TreeNote, diff_changes
from sandboxes.errors import GitError, UnreadableWorkspace
from sandboxes.git import GitIdentity, GitResult, git_env, run_git, strip_credentials
from sandboxes.localrepo import GitRemote, LocalRepository
from sandboxes.treeframes import NOTES, Blob, Entry, FrameError, FrameReader, Note
from sandboxes.treewalk import MODE_EXEC, MODE_FILE, WalkError, WalkLimits


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
        self,
        workspace: Path,
        start: str,
        owner: tuple[int, int] | None,
        limits: WalkLimits | None = None,
    ) -> Snapshot:
        """Read the work tree at ``workspace`` into a tree object (see the module docstring).
        ``start`` is the commit the run began from: unchanged files are not copied again, and
        tracked files stay recorded even where ``.gitignore`` now ignores them. ``limits``
        bound what reading costs the host (a deadline kills the walk; so does cancelling).

        Raises ``UnreadableWorkspace`` (a fixed message; the detail apart) when the tree cannot
        be read as a whole."""
        limits = limits or WalkLimits()
        listing = await self.git("ls-tree", "-r", "-z", "-l", "--full-tree", start)
        ids = owner if owner is not None else (os.geteuid(), os.getegid())
        ref = f"refs/bosun/snapshots/{uuid.uuid4().hex}"
        job = _Import(self, workspace, listing.stdout, ids, ref, limits)
        try:
            files, notes = await asyncio.to_thread(job.run)
        except asyncio.CancelledError:
            job.kill()  # the thread then ends at once: its pipes close
            raise
        except (WalkError, FrameError, OSError, subprocess.SubprocessError) as exc:
            limit = exc.limit if isinstance(exc, WalkError) else None
            raise UnreadableWorkspace(_refusal(limit, limits), detail=str(exc)) from exc
        tree = await self.tree_of(ref)
        return Snapshot(tree, frozenset(files), tuple(notes))

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
        remote_url: GitRemote,
        branch: str,
        *,
        auth_header: str | None = None,
        force: bool = False,
    ) -> str:
        """Push ``sha`` to ``refs/heads/<branch>`` at ``remote_url``. Raises ``PushRejected``
        (git's message, credentials redacted) when the remote refuses. A local repository
        fetches the commit from here instead (``LocalRepository.push_from``)."""
        if isinstance(remote_url, LocalRepository):
            return await remote_url.push_from(self.path, sha, branch, force=force)
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


def _refusal(limit: str | None, limits: WalkLimits) -> str:
    """What the run may say about a tree it could not read (Bosun's words and numbers only,
    never the agent's)."""
    why = {
        "new_files": f"it has more than {limits.max_new_files} new files",
        "path": f"a path in it is longer than {limits.max_path_bytes} bytes",
        "depth": f"its folders nest deeper than {limits.max_depth}",
        "read_bytes": "it holds more bytes than the workspace limit allows to read",
        "seconds": f"reading it took longer than {limits.seconds:.0f} s",
        "gitignore": "a `.gitignore` pattern in it is too costly to match",
    }.get(limit or "", "it is not a plain tree of files the host could read")
    return (
        f"the agent's work could not be read: {why}; nothing was pushed (the detail is in "
        "the run's `error` artifact)"
    )


class _Import:
    """One walk streamed into ``git fast-import``, in a thread; ``kill`` stops it from any
    thread (a cancelled run, or the deadline's watchdog)."""

    def __init__(
        self,
        repo: ScratchRepo,
        workspace: Path,
        listing: bytes,
        owner: tuple[int, int],
        ref: str,
        limits: WalkLimits,
    ) -> None:
        self.repo, self.workspace, self.listing = repo, workspace, listing
        self.owner, self.ref, self.limits = owner, ref, limits
        self.processes: list[subprocess.Popen[bytes]] = []
        self.killed = False
        self._lock = threading.Lock()

    def kill(self) -> None:
        with self._lock:
            self.killed = True
            for process in self.processes:
                if process.poll() is None:
                    process.kill()

    def _start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self.killed:
                raise WalkError("the walk was stopped")
            process = subprocess.Popen(argv, **kw)
            self.processes.append(process)
            return process

    def run(self) -> tuple[list[str], list[TreeNote]]:
        with tempfile.TemporaryFile() as walk_err, tempfile.TemporaryFile() as import_err:
            watchdog = threading.Timer(self.limits.seconds + 10, self.kill)
            watchdog.start()
            try:
                return self._run(walk_err, import_err)
            finally:
                watchdog.cancel()
                self.kill()
                for process in self.processes:
                    process.wait()
                    for pipe in (process.stdin, process.stdout):
                        if pipe is not None:
                            with contextlib.suppress(OSError):
                                pipe.close()

    def _run(self, walk_err: IO[bytes], import_err: IO[bytes]) -> tuple[list[str], list[TreeNote]]:
        uid, gid = self.owner
        walker = self._start(
            [sys.executable, "-m", "sandboxes.treewalk", "walk", str(uid), str(gid),
             str(self.workspace), self.repo.algorithm, *self.limits.argv()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=walk_err,
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}, cwd="/",
        )  # fmt: skip
        importer = self._start(
            ["git", "fast-import", "--quiet", "--done"],
            cwd=self.repo.path,
            env=git_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=import_err,
        )
        assert walker.stdin and walker.stdout and importer.stdin
        with contextlib.suppress(BrokenPipeError):
            walker.stdin.write(self.listing)
        walker.stdin.close()
        try:
            files, notes, lines = _stream(FrameReader(walker.stdout.read), importer.stdin)
        except FrameError:
            if walker.wait() == 0:
                raise
            files, notes, lines = [], [], []  # the walker's own reason follows
        if walker.wait() != 0:
            walk_err.seek(0)
            first, _, detail = walk_err.read(8000).decode("utf-8", "replace").partition("\n")
            limit = first.removeprefix("limit:") if first.startswith("limit:") else None
            why = detail.strip() or first or f"the tree walk exited {walker.returncode}"
            if self.killed:
                why = f"stopped (deadline {self.limits.seconds:.0f} s or cancelled): {why}"
            raise WalkError(why, None if limit == "none" else limit)
        out = importer.stdin
        out.write(f"commit {self.ref}\n".encode())
        out.write(b"committer Bosun <bosun@localhost> 0 +0000\ndata 9\nsnapshot\n")
        out.write(b"deleteall\n")
        out.write(b"".join(lines))
        out.write(b"\ndone\n")
        out.close()
        if importer.wait() != 0:
            import_err.seek(0)
            errors = import_err.read().decode("utf-8", "replace").strip()
            raise WalkError(f"git fast-import failed: {errors[-2000:]}")
        return files, notes


def _stream(frames: FrameReader, out: IO[bytes]) -> tuple[list[str], list[TreeNote], list[bytes]]:
    write = out.write
    files: list[str] = []
    notes: list[TreeNote] = []
    lines: list[bytes] = []
    mark = 0
    for frame in frames:
        if isinstance(frame, Note):
            path = frame.path.decode("utf-8", "surrogateescape")  # exact, like every path
            notes.append(TreeNote(NOTES.get(frame.kind, "unknown"), path, frame.size))
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
