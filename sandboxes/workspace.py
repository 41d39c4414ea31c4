"""Per-run workspaces: a self-contained local clone of the repository's mirror, on the run's own
branch, owned by the host uid the sandbox user maps to.

Layout: ``<root>/runs/<run_id>/workspace`` (bind-mounted at ``/workspace``) next to
``<root>/runs/<run_id>/git-config`` (the trusted copy of the clone's config). The clone is made
with ``git clone --local --no-checkout`` (hardlinked objects, no alternates), so its ``.git``
works inside the container where host paths do not exist, and parallel runs never share a tree.

After the agent, host-side git runs as the workspace owner with the agent-controllable parts of
``.git`` neutralised first (see ``Workspace.harden``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxes.errors import GitError, WorkspaceError
from sandboxes.git import GitIdentity, GitResult, run_git, strip_credentials
from sandboxes.mirror import MirrorCache
from sandboxes.userns import chown_tree


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

    @property
    def grown_bytes(self) -> int:
        """Bytes the change adds to this file: its size if new, its growth if changed."""
        return max(0, (self.size or 0) - (self.old_size or 0))


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


@dataclass(frozen=True, slots=True)
class Workspace:
    """One run's checkout. Host-side git methods are safe to call after the agent ran."""

    run_id: str
    repo: str
    path: Path
    """The working tree (mount it at ``/workspace``)."""
    run_dir: Path
    branch: str
    base_sha: str
    """Where the work diverges from the base branch; ``changes`` diff against it."""
    start_sha: str
    """The commit the run started from (the base, or the continued branch's head)."""
    owner: tuple[int, int] | None
    """Host ``(uid, gid)`` owning the tree, ``None`` to leave ownership alone."""

    async def git(self, *args: str, stdin: bytes | None = None, **kw: object) -> GitResult:
        """Run git in the workspace as its owner, after ``harden``."""
        await self.harden()
        return await run_git(list(args), cwd=self.path, stdin=stdin, as_user=self.owner, **kw)  # type: ignore[arg-type]

    async def harden(self) -> None:
        """Undo what the agent could have planted for host-side git: a ``.git`` that is not a
        plain directory, config (hooks, filters, fsmonitor, url rewrites, includes), alternates
        and ``commondir`` pointing at other host repositories."""
        await asyncio.to_thread(self._harden)

    def _harden(self) -> None:
        dot_git = self.path / ".git"
        mode = dot_git.lstat().st_mode if dot_git.exists() or dot_git.is_symlink() else 0
        if not stat.S_ISDIR(mode):
            raise WorkspaceError(f"{dot_git} is not a plain directory; refusing to run git on it")
        config = dot_git / "config"
        if config.is_symlink() or config.is_dir():
            shutil.rmtree(config) if config.is_dir() else config.unlink()
        trusted = (self.run_dir / "git-config").read_bytes()
        config.write_bytes(trusted)
        for planted in ("objects/info/alternates", "objects/info/http-alternates", "commondir"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (dot_git / planted).unlink()
        if self.owner is not None:
            os.lchown(config, *self.owner)

    async def head_sha(self) -> str:
        return (await self.git("rev-parse", "HEAD")).text.strip()

    async def changes(
        self, against: str | None = None, *, max_diff_bytes: int | None = None
    ) -> Changes:
        """Diff of the working tree (tracked and untracked files) against ``against`` (default:
        ``base_sha``). Uses a scratch index, so the agent's own index is left untouched.

        With ``max_diff_bytes`` the unified diff is read into memory only when it fits: file
        counts and sizes come first (cheap), the diff is written to a file by git and left
        unread (``diff == ""``) when it is larger, and not produced at all when the files it
        would hold already add more than the limit."""
        base = against or self.base_sha
        index = self.path / ".git" / "bosun-scratch.index"
        patch = self.path / ".git" / "bosun-scratch.diff"
        env = {"GIT_INDEX_FILE": str(index)}
        await asyncio.to_thread(self._seed_index, index)
        with contextlib.suppress(FileNotFoundError):  # never write through a planted symlink
            await asyncio.to_thread(patch.unlink)
        try:
            await self.git("add", "-A", env=env)
            numstat = await self.git("diff", "--cached", "-z", "--numstat", "-M", base, env=env)
            status = await self.git("diff", "--cached", "-z", "--name-status", "-M", base, env=env)
            raw = await self.git(
                "diff", "--cached", "-z", "--raw", "--no-abbrev", "-M", base, env=env
            )
            files = await self._sized(_parse(numstat.text, status.text), raw.text)
            if max_diff_bytes is not None and sum(f.grown_bytes for f in files) > max_diff_bytes:
                return Changes(base, "", tuple(files), None)
            await self.git("diff", "--cached", "--find-renames", f"--output={patch}", base, env=env)
            diff_bytes = (await asyncio.to_thread(patch.stat)).st_size
            text = ""
            if max_diff_bytes is None or diff_bytes <= max_diff_bytes:
                text = (await asyncio.to_thread(patch.read_bytes)).decode("utf-8", "replace")
            return Changes(base, text, tuple(files), diff_bytes)
        finally:
            for scratch in (index, patch):
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(scratch.unlink)

    async def _sized(self, files: list[FileChange], raw: str) -> list[FileChange]:
        """``files`` with the byte sizes of both sides, from the blobs git just hashed."""
        blobs = _raw_blobs(raw)
        wanted = sorted({sha for pair in blobs.values() for sha in pair if sha.strip("0")})
        sizes: dict[str, int] = {}
        if wanted:
            check = await self.git(
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
                dataclasses.replace(change, size=sizes.get(new_sha), old_size=sizes.get(old_sha))
            )
        return sized

    def _seed_index(self, scratch: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
        real = self.path / ".git" / "index"
        if real.is_file() and not real.is_symlink():
            shutil.copyfile(real, scratch)
            if self.owner is not None:
                os.lchown(scratch, *self.owner)

    async def commit(
        self,
        message: str,
        *,
        author: GitIdentity,
        committer: GitIdentity,
        trailers: Sequence[tuple[str, str]] = (),
    ) -> str | None:
        """Commit everything (including untracked files) on the current branch; returns the new
        head SHA, or ``None`` when there was nothing to commit. Hooks never run."""
        await self.git("add", "-A")
        staged = await self.git("diff", "--cached", "--quiet", check=False)
        if staged.returncode == 0:
            return None
        argv = [
            "-c", f"user.name={committer.name}", "-c", f"user.email={committer.email}",
            "commit", "--quiet", "--no-verify", "--no-gpg-sign", "--file=-", f"--author={author}",
        ]  # fmt: skip
        for key, value in trailers:
            argv.append(f"--trailer={key}: {value}")
        await self.git(*argv, stdin=message.encode())
        return await self.head_sha()

    async def push(
        self, remote_url: str, *, auth_header: str | None = None, force: bool = False
    ) -> str:
        """Push ``HEAD`` to ``refs/heads/<branch>`` at ``remote_url``; returns the pushed SHA.
        Raises ``PushRejected`` (git's message, credentials redacted) when the remote refuses."""
        sha = await self.head_sha()
        argv = ["push", "--porcelain", "--no-verify", strip_credentials(remote_url)]
        argv += ["--force"] if force else []
        argv.append(f"{sha}:refs/heads/{self.branch}")
        await self.git(*argv, auth_header=auth_header)
        return sha


class WorkspaceManager:
    """Mirrors and per-run workspaces under one host folder."""

    def __init__(self, root: Path, *, identity: GitIdentity, mirrors: MirrorCache | None = None):
        self.root = root
        self.identity = identity
        """Who commits made inside the sandbox are attributed to (``user.name``/``email``)."""
        self.mirrors = mirrors or MirrorCache(root)

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id in {".", ".."}:
            raise WorkspaceError(f"invalid run id {run_id!r}")
        return self.root / "runs" / run_id

    async def prepare(
        self,
        *,
        run_id: str,
        repo: str,
        remote_url: str,
        branch: str,
        base_ref: str,
        auth_header: str | None = None,
        owner: tuple[int, int] | None = None,
        continue_branch: bool = False,
    ) -> Workspace:
        """Fetch the mirror, clone it for this run and check out ``branch``: from the remote's
        ``branch`` when ``continue_branch`` and it exists (a retry or resume), else new from
        ``base_ref`` (a branch name or commit SHA). Then hand the tree to ``owner``."""
        run_dir = self.run_dir(run_id)
        path = run_dir / "workspace"
        await asyncio.to_thread(_rmtree, run_dir)
        await asyncio.to_thread(run_dir.mkdir, parents=True)
        async with self.mirrors.locked(repo) as mirror:
            await self.mirrors.update_locked(mirror, remote_url, auth_header=auth_header)
            await run_git(["clone", "--quiet", "--local", "--no-checkout", str(mirror), str(path)])
        git = _Git(path)
        await git("remote", "set-url", "origin", strip_credentials(remote_url))
        base_sha = await git.resolve(f"refs/remotes/origin/{base_ref}", base_ref)
        start_sha = base_sha
        if continue_branch:
            existing = await git.resolve(f"refs/remotes/origin/{branch}", required=False)
            if existing:
                start_sha = existing
                merge_base = await git("merge-base", base_sha, existing, check=False)
                base_sha = merge_base.text.strip() or base_sha
        await git("checkout", "--quiet", "--no-track", "-B", branch, start_sha)
        for key, value in (
            ("user.name", self.identity.name),
            ("user.email", self.identity.email),
            ("bosun.run", run_id),
            ("bosun.base", base_sha),
        ):
            await git("config", key, value)
        await asyncio.to_thread(shutil.copyfile, path / ".git" / "config", run_dir / "git-config")
        if owner is not None:
            await asyncio.to_thread(chown_tree, path, *owner)
        return Workspace(run_id, repo, path, run_dir, branch, base_sha, start_sha, owner)

    async def cleanup(self, run_id: str) -> None:
        """Delete the run's folder (workspace included), whoever owns the files."""
        await asyncio.to_thread(_rmtree, self.run_dir(run_id))


class _Git:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def __call__(self, *args: str, check: bool = True) -> GitResult:
        return await run_git(list(args), cwd=self.path, check=check)

    async def resolve(self, *refs: str, required: bool = True) -> str:
        for ref in refs:
            result = await self(
                "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False
            )
            if result.returncode == 0:
                return result.text.strip()
        if required:
            raise GitError(
                f"{refs[-1]!r} is neither a branch of the remote nor a commit",
                argv=["git", "rev-parse", *refs], returncode=1, stderr="",
            )  # fmt: skip
        return ""


def _rmtree(path: Path) -> None:
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except PermissionError as exc:
        raise WorkspaceError(
            f"cannot delete {path}: {exc}; files there belong to the sandbox's remapped uid, so "
            "the worker needs root (or CAP_DAC_OVERRIDE) to clean up"
        ) from exc


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
