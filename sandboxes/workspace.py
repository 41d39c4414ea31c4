"""Per-run workspaces: a self-contained local clone of the repository's mirror, on the run's own
branch, owned by the host uid the sandbox user maps to.

Layout: ``<root>/runs/<run_id>/workspace`` (bind-mounted at ``/workspace``) next to
``<root>/runs/<run_id>/host.git`` (the worker's scratch repository, ``sandboxes.scratch``).
The clone is made with ``git clone --local --no-checkout`` (hardlinked objects, no alternates),
so its ``.git`` works inside the container where host paths do not exist, and parallel runs
never share a tree; the checkout is written by the workspace's owner.

Once the agent has run, the work tree is data: the host never runs git in it, never writes to
it, and reads it only through ``sandboxes.treewalk`` as the workspace's owner.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from sandboxes.changes import Changes
from sandboxes.errors import GitError, WorkspaceError
from sandboxes.git import GitIdentity, GitResult, run_git, strip_credentials
from sandboxes.localrepo import GitRemote
from sandboxes.mirror import MirrorCache
from sandboxes.scratch import ScratchRepo, Snapshot
from sandboxes.treewalk import WalkLimits
from sandboxes.userns import chown_tree

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Workspace:
    """One run's checkout and the host-owned repository its result is read into. After the
    agent ran, nothing here runs git in (or writes to) the work tree: see ``sandboxes.scratch``."""

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
    scratch: ScratchRepo

    async def snapshot(self, limits: WalkLimits | None = None) -> Snapshot:
        """The work tree as it is now, read as data into the scratch repository."""
        return await self.scratch.snapshot(self.path, self.start_sha, self.owner, limits)

    async def changed(self) -> bool:
        """Whether the work tree differs from the commit the run started from."""
        snapshot = await self.snapshot()
        return snapshot.tree != await self.scratch.tree_of(self.start_sha)

    async def changes(
        self,
        against: str | None = None,
        *,
        max_diff_bytes: int | None = None,
        limits: WalkLimits | None = None,
    ) -> Changes:
        """Everything the work tree (tracked and untracked files, ``.gitignore`` honoured)
        changes relative to ``against`` (default: ``base_sha``); see ``diff_changes`` for
        ``max_diff_bytes``. ``Changes.tree`` is what ``commit`` records."""
        snapshot = await self.snapshot(limits)
        return await self.scratch.changes(
            against or self.base_sha, snapshot, max_diff_bytes=max_diff_bytes
        )

    async def read_base_file(self, path: str, limit: int) -> bytes | None:
        """``path`` at the base commit (never the agent's copy), or ``None``."""
        return await self.scratch.read_file(self.base_sha, path, limit)

    async def commit(
        self,
        tree: str,
        message: str,
        *,
        author: GitIdentity,
        committer: GitIdentity,
        trailers: Sequence[tuple[str, str]] = (),
    ) -> str | None:
        """One commit of ``tree`` (``Changes.tree``) on the run's starting commit; returns
        its SHA, or ``None`` when the tree is unchanged. No hook or signing program runs."""
        return await self.scratch.commit(
            tree, self.start_sha, message, author=author, committer=committer, trailers=trailers
        )

    async def push(
        self,
        sha: str,
        remote_url: GitRemote,
        *,
        auth_header: str | None = None,
        force: bool = False,
    ) -> str:
        """Push ``sha`` to the run's branch at ``remote_url``; returns it. Raises
        ``PushRejected`` (git's message, credentials redacted) when the remote refuses."""
        return await self.scratch.push(
            sha, remote_url, self.branch, auth_header=auth_header, force=force
        )


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
        remote_url: GitRemote,
        branch: str,
        base_ref: str,
        auth_header: str | None = None,
        owner: tuple[int, int] | None = None,
        continue_branch: bool = False,
        laid_out: bool = False,
        timings: dict[str, float] | None = None,
        prefetch_key: str | None = None,
    ) -> Workspace:
        """Fetch the mirror, clone it for this run and check out ``branch``: from the remote's
        ``branch`` when ``continue_branch`` and it exists (a retry or resume), else new from
        ``base_ref`` (a branch name or commit SHA). Then hand the tree to ``owner``.

        A new run fetches only ``base_ref`` into the mirror; a continued one fetches every
        branch (its own may be gone). ``laid_out``: the run's folder was made by ``lay_out``
        (a sandbox may already bind its empty ``workspace``), so the clone goes into it.
        ``timings`` gets ``mirror_fetch`` and ``checkout`` (seconds). ``prefetch_key``: a
        prefetch started under that key (``MirrorCache.prefetch``) stands for the fetch."""
        run_dir = self.run_dir(run_id)
        path = run_dir / "workspace"
        if not laid_out:
            await self.lay_out(run_id)
        t0 = time.monotonic()
        branches = () if continue_branch else (base_ref,)
        fetched = bool(branches) and prefetch_key is not None
        if fetched:
            assert prefetch_key is not None
            fetched = await self.mirrors.prefetched(prefetch_key, repo, branches)
        async with self.mirrors.locked(repo) as mirror:
            if not fetched:
                await self.mirrors.update_locked(
                    mirror, remote_url, auth_header=auth_header, branches=branches
                )
            t1 = time.monotonic()
            # Resolved in the mirror, so the clone is made with its whole configuration at
            # once (its refs/remotes/origin/* are the mirror's refs/heads/*).
            in_mirror = _Git(mirror)
            base_sha = await in_mirror.resolve(f"refs/heads/{base_ref}", base_ref)
            start_sha = base_sha
            if continue_branch:
                existing = await in_mirror.resolve(f"refs/heads/{branch}", required=False)
                if existing:
                    start_sha = existing
                    merge_base = await in_mirror("merge-base", base_sha, existing, check=False)
                    base_sha = merge_base.text.strip() or base_sha
            config = (
                ("user.name", self.identity.name),
                ("user.email", self.identity.email),
                ("bosun.run", run_id),
                ("bosun.base", base_sha),
            )
            clone = ["clone", "--quiet", "--local", "--no-checkout"]
            clone += [f"--config={key}={value}" for key, value in config]
            _, scratch = await asyncio.gather(
                run_git([*clone, str(mirror), str(path)]),
                ScratchRepo.create(run_dir / "host.git", mirror),
            )
        await _Git(path)("remote", "set-url", "origin", strip_credentials(str(remote_url)))
        if owner is not None:
            await asyncio.to_thread(chown_tree, path, *owner)
        # The files are written by the owner, so the kernel confines what a checkout of a
        # tree an earlier agent pushed (a retry or resume) can touch.
        await run_git(
            ["checkout", "--quiet", "--no-track", "-B", branch, start_sha],
            cwd=path,
            as_user=owner,
        )
        if timings is not None:
            timings["mirror_fetch"] = round(t1 - t0, 3)
            timings["checkout"] = round(time.monotonic() - t1, 3)
        return Workspace(run_id, repo, path, run_dir, branch, base_sha, start_sha, owner, scratch)

    async def lay_out(self, run_id: str, *, adopt: Path | None = None) -> Path:
        """Make the run's folder with an empty ``workspace``; returns it. What an earlier
        execution of the run left (its worker died) is deleted first. ``adopt``: a warm pool
        slot's folder (``sandboxes.pool``), whose empty folders a started sandbox already binds,
        becomes the run's folder by a rename on the same filesystem; the binds follow it."""
        run_dir = self.run_dir(run_id)
        await self.cleanup(run_id)
        await asyncio.to_thread(run_dir.parent.mkdir, parents=True, exist_ok=True)
        if adopt is not None:
            await asyncio.to_thread(os.rename, adopt, run_dir)
        else:
            await asyncio.to_thread(run_dir.mkdir)
        await asyncio.to_thread((run_dir / "workspace").mkdir, exist_ok=True)
        return run_dir

    async def cleanup(self, run_id: str) -> None:
        """Delete the run's folder, workspace included. What the agent wrote is deleted by a
        process running as the workspace's owner (so no symlink or hard link it planted can
        make the worker delete anything else), the rest by the worker."""
        run_dir = self.run_dir(run_id)
        try:
            await remove_as_owner(run_dir / "workspace")
        except WorkspaceError as exc:  # left: what the owner cannot delete, so not the agent's
            log.warning("workspace_owner_cleanup_incomplete", error=str(exc))
        await asyncio.to_thread(_rmtree, run_dir)  # what is left: never through a link


async def remove_as_owner(path: Path) -> None:
    """Empty the folder ``path`` as the uid that owns it (``sandboxes.treewalk remove``); the
    folder itself is left for its parent's owner to remove."""
    try:
        info = await asyncio.to_thread(os.lstat, path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode) or info.st_uid == os.geteuid():
        return  # ours (or not a folder): the worker's own rmtree is safe on it
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandboxes.treewalk", "remove",
        str(info.st_uid), str(info.st_gid), str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"}, cwd="/",
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        raise WorkspaceError(
            f"could not empty {path} as its owner {info.st_uid}: "
            f"{err.decode('utf-8', 'replace').strip()[-500:]}"
        )


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
    """Remove ``path`` as the worker: GNU ``rm -rf`` never follows a symlink, opens nothing
    it removes, and handles any depth (Python's ``shutil.rmtree`` recurses, and opens folders
    without ``O_NOFOLLOW``)."""
    if not os.path.lexists(path):
        return
    done = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise WorkspaceError(
            f"cannot delete {path}: {done.stderr.strip()[-500:]}; files there belong to the "
            "sandbox's remapped uid, so the worker needs root (or CAP_DAC_OVERRIDE) to clean up"
        )
