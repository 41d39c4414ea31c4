"""A disk quota for the workspace while the agent runs (SPEC §6).

``/workspace`` is a bind mount of a host folder, so the engine cannot cap it. ``WorkspaceQuota``
measures the folder every couple of seconds in a thread (an ``os.scandir`` walk counting
allocated blocks, so sparse files count what they occupy and hard links count once) and calls
``on_exceeded`` once when it has grown past the limit since the watch began (the clone itself,
whose objects are hard links into the host's mirror, does not count). The caller then stops
the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

OnExceeded = Callable[[int], Awaitable[None]]
"""Called with the measured size in bytes."""


MIN_CHARGE = 4096
"""Bytes every file, folder and link counts at least: an empty file takes an inode and a
directory entry, so millions of them count as what they cost the host, not zero."""
MAX_DEPTH = 256
"""Folders nested deeper than this cannot be measured (one descriptor per level): the
workspace counts as over its limit."""


class Unmeasurable(Exception):
    """The workspace cannot be measured as a whole; it counts as over the limit."""


def disk_usage(root: Path) -> int:
    """Bytes the tree under ``root`` costs the host: allocated blocks (not apparent size), at
    least ``MIN_CHARGE`` per entry, each hard-linked inode once. Metadata only, and
    symlink-safe while the agent keeps writing: every folder is opened relative to its parent's
    descriptor with ``O_NOFOLLOW``, so swapping a folder for a symlink cannot send the walk
    outside the workspace. Entries that vanish are skipped. Raises ``Unmeasurable`` for folders
    nested deeper than ``MAX_DEPTH`` or when the worker runs out of descriptors."""
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:
        return 0
    stack = [(top, _names(top))]  # open descriptors: one per level of the current path
    try:
        while stack:
            fd, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += max(info.st_blocks * 512, MIN_CHARGE)
            if not stat.S_ISDIR(info.st_mode):
                continue
            if len(stack) >= MAX_DEPTH:
                raise Unmeasurable(f"its folders nest deeper than {MAX_DEPTH} levels")
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise Unmeasurable("the worker ran out of file descriptors") from exc
                continue  # vanished, or not readable: the walk reads what it can
            stack.append((child, _names(child)))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


def _names(fd: int) -> Iterator[str]:
    try:
        return iter(os.listdir(fd))
    except OSError:
        return iter(())


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceQuota:
    """Watches ``root`` while used as ``async with``; ``exceeded`` holds how far it had grown
    when it broke the limit, once it has."""

    def __init__(
        self,
        root: Path,
        limit_bytes: int,
        on_exceeded: OnExceeded,
        *,
        interval: float = 2.0,
        name: str = "the workspace",
        setting: str = "sandbox.workspace_limit_bytes",
    ) -> None:
        self.root = root
        self.name = name
        """What the run's end calls ``root``."""
        self.setting = setting
        """The setting that holds the limit."""
        self.limit_bytes = limit_bytes
        self.on_exceeded = on_exceeded
        self.interval = interval
        self.exceeded: int | None = None
        self.unmeasurable: str | None = None
        self.baseline: int | None = None
        self.growth = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WorkspaceQuota:
        self._task = asyncio.create_task(self._watch(), name=f"quota:{self.root}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reason(self) -> str:
        """What the run's end says when the limit was broken."""
        if self.unmeasurable is not None:
            return (
                f"{self.name} grew past what Bosun can measure ({self.unmeasurable}); the "
                "agent was stopped and nothing was pushed"
            )
        return (
            f"{self.name} grew past {self.limit_bytes / 1e6:.0f} MB (disk limit, "
            f"{self.setting}): it had grown by {(self.exceeded or 0) / 1e6:.0f} MB "
            "when the agent was stopped; nothing was pushed"
        )

    async def _watch(self) -> None:
        started = time.monotonic()
        self.baseline = await asyncio.to_thread(disk_usage, self.root)
        walk = time.monotonic() - started
        while True:
            # a tree so large that one walk takes long is walked less often (at most ~20% busy)
            await asyncio.sleep(max(self.interval, 4 * walk))
            started = time.monotonic()
            try:
                self.growth = await asyncio.to_thread(disk_usage, self.root) - self.baseline
            except Unmeasurable as exc:  # fail closed
                self.unmeasurable = str(exc)
                self.growth = self.limit_bytes + 1
            walk = time.monotonic() - started
            if self.growth > self.limit_bytes:
                self.exceeded = self.growth
                log.warning("workspace_quota_exceeded", grown=self.growth, limit=self.limit_bytes)
                await self.on_exceeded(self.growth)
                return
