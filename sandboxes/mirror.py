"""Cached bare mirrors, one per repository, fetched incrementally.

``<root>/mirrors/<owner>__<name>.git`` is created on first use and fetched with ``--prune``
afterwards. Each mirror has a lock: an ``asyncio.Lock`` per path for tasks in this process, and
an ``fcntl.flock`` on ``<mirror>.lock`` so worker processes on one host never fetch into (or
clone from) the same mirror at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxes.errors import MirrorLockTimeout, WorkspaceError
from sandboxes.git import run_git, strip_credentials
from sandboxes.localrepo import GitRemote, LocalRepository

_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
_LOCKS: dict[Path, asyncio.Lock] = {}
_URLS: dict[Path, str] = {}
"""The remote URL last written into each mirror's config by this process."""
PREFETCH_KEEP_SECONDS = 120.0
"""How long a prefetch waits for its run to take it."""
_SHA = re.compile(r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$")


class MirrorCache:
    """Bare mirrors of remote repositories under ``<root>/mirrors``."""

    def __init__(self, root: Path, *, lock_timeout: float = 900.0) -> None:
        self.root = root
        self.lock_timeout = lock_timeout
        self._prefetches: dict[str, _Prefetch] = {}

    def path_for(self, repo: str) -> Path:
        """The mirror of ``owner/name``."""
        if not _REPO.match(repo) or ".." in repo:
            raise WorkspaceError(f"repository must look like 'owner/name', got {repo!r}")
        owner, name = repo.split("/")
        return self.root / "mirrors" / f"{owner}__{name}.git"

    @contextlib.asynccontextmanager
    async def locked(self, repo: str) -> AsyncIterator[Path]:
        """Hold the mirror's in-process and cross-process locks."""
        path = self.path_for(repo)
        lock = _LOCKS.setdefault(path, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + self.lock_timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise MirrorLockTimeout(
                                f"mirror {path} stayed locked for {self.lock_timeout:.0f}s"
                            ) from None
                        await asyncio.sleep(0.05)
                yield path
            finally:
                os.close(fd)  # closing releases the flock

    async def update(
        self,
        repo: str,
        remote_url: GitRemote,
        *,
        auth_header: str | None = None,
        branches: Sequence[str] = (),
    ) -> Path:
        """Create or incrementally fetch the mirror of ``repo`` (see ``update_locked`` for
        ``branches``); returns its path."""
        async with self.locked(repo) as path:
            await self.update_locked(path, remote_url, auth_header=auth_header, branches=branches)
        return path

    def prefetch(
        self,
        key: str,
        repo: str,
        remote_url: GitRemote,
        auth_header: Callable[[], Awaitable[str | None]],
        branches: Sequence[str],
    ) -> None:
        """Start fetching ``branches`` of ``repo`` now, in the background, for a run about to be
        made under ``key`` (its delivery): the run takes it with ``prefetched`` instead of
        fetching itself. One not taken within ``PREFETCH_KEEP_SECONDS`` is forgotten."""
        if key in self._prefetches:
            return

        async def fetch() -> None:
            await self.update(repo, remote_url, auth_header=await auth_header(), branches=branches)

        task = asyncio.get_running_loop().create_task(fetch(), name=f"prefetch-{repo}")
        task.add_done_callback(_quiet)
        self._prefetches[key] = _Prefetch(task, repo, tuple(branches))
        asyncio.get_running_loop().call_later(
            PREFETCH_KEEP_SECONDS, self._prefetches.pop, key, None
        )

    async def close(self, timeout: float = 30.0) -> None:
        """Let the prefetches still running end (a fetch cut short would leave its git process
        and pipes behind), cancelling those that take longer than ``timeout``."""
        tasks = [found.task for found in self._prefetches.values() if not found.task.done()]
        self._prefetches.clear()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def prefetched(self, key: str, repo: str, branches: Sequence[str]) -> bool:
        """Whether a prefetch started under ``key`` fetched ``branches`` of ``repo`` (waiting for
        it to end, without holding the mirror's lock). It was started once the run's trigger
        arrived, so what it fetched is as new as the run asks; taken once."""
        found = self._prefetches.pop(key, None)
        if found is None or found.repo != repo or not set(branches) <= set(found.branches):
            return False
        try:
            await asyncio.shield(found.task)
        except Exception:  # noqa: BLE001 -- the run fetches itself and reports what fails
            return False
        return True

    async def update_locked(
        self,
        path: Path,
        remote_url: GitRemote,
        *,
        auth_header: str | None = None,
        branches: Sequence[str] = (),
    ) -> None:
        """``update`` for a caller already holding ``locked``. With ``branches`` (names, not
        SHAs) an existing mirror fetches only those branches, which must exist on the remote;
        without, every branch and tag, pruning what the remote deleted. A local repository
        pushes its branches into the mirror itself (``LocalRepository.export_to``): no git
        process is ever started inside it by a transport."""
        if isinstance(remote_url, LocalRepository):
            await remote_url.export_to(path)
            return
        url = strip_credentials(remote_url)
        if not await asyncio.to_thread((path / "HEAD").exists):
            await self._create(path, url, auth_header)
            _URLS[path] = url
            return
        if _URLS.get(path) != url:
            await run_git(["config", "remote.origin.url", url], cwd=path)
            _URLS[path] = url
        if branches and not any(_SHA.match(name) for name in branches):
            refspecs = [f"+refs/heads/{name}:refs/heads/{name}" for name in branches]
            await run_git(
                ["fetch", "--quiet", "--no-tags", "origin", *refspecs],
                cwd=path,
                auth_header=auth_header,
            )
            return
        await run_git(["fetch", "--prune", "--quiet", "origin"], cwd=path, auth_header=auth_header)

    async def _create(self, path: Path, url: str, auth_header: str | None) -> None:
        partial = path.with_name(path.name + ".partial")
        await asyncio.to_thread(shutil.rmtree, partial, True)
        await run_git(["init", "--bare", "--quiet", str(partial)])
        await run_git(["config", "remote.origin.url", url], cwd=partial)
        for index, refspec in enumerate(_REFSPECS):
            await run_git(
                ["config", "--add" if index else "--replace-all", "remote.origin.fetch", refspec],
                cwd=partial,
            )
        try:
            await run_git(["fetch", "--quiet", "origin"], cwd=partial, auth_header=auth_header)
            head = await run_git(
                ["ls-remote", "--symref", "origin", "HEAD"],
                cwd=partial,
                auth_header=auth_header,
                check=False,
            )
            match = re.search(r"ref: (refs/heads/\S+)\s+HEAD", head.text)
            if match:
                await run_git(["symbolic-ref", "HEAD", match.group(1)], cwd=partial)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, partial, True)
            raise


@dataclass(frozen=True)
class _Prefetch:
    task: asyncio.Task[None]
    repo: str
    branches: tuple[str, ...]


def _quiet(task: asyncio.Task[None]) -> None:
    """Retrieve a prefetch's failure (its run fetches again and reports it)."""
    if not task.cancelled():
        task.exception()
