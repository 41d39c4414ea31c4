"""The backend interface every sandbox implementation follows, and the values it returns.

Lifecycle: ``create`` (container exists, nothing runs) → ``start`` (a long-lived idle main
process) → any number of ``exec`` calls (the agent, then the gates, in the same sandbox) →
``stop`` → ``remove``. ``reap`` removes containers whose run is no longer live.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sandboxes.errors import (
    ExecFailed,
    OutputLimitExceeded,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxTimeout,
)
from sandboxes.output import OnOutput, OutputChunk
from sandboxes.spec import SandboxSpec

LABEL_MANAGED = "bosun.managed"
LABEL_RUN_ID = "bosun.run_id"
LABEL_CREATED = "bosun.created"
POOL_PREFIX = "pool-"
"""``run_id`` of a warm pool's sandbox until a run claims it (``sandboxes.pool``); a claimed one
is renamed ``bosun-<run_id>-<hex>``, so its run is read from its name (``owner_run``)."""

LiveRuns = Collection[str] | Callable[[str], bool]
"""Run ids that still own their sandboxes: a collection, or a predicate ``run_id -> bool``."""


class SandboxStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    REMOVED = "removed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A handle on one sandbox. ``id`` is the backend's id (the container id for Docker)."""

    id: str
    name: str
    spec: SandboxSpec


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What ``inspect`` reports about a sandbox."""

    id: str
    name: str
    status: SandboxStatus
    run_id: str | None
    created: datetime | None
    exit_code: int | None
    oom_killed: bool
    labels: Mapping[str, str]


@dataclass(frozen=True)
class ExecResult:
    """How one exec ended. ``chunks`` holds the kept output in arrival order."""

    argv: tuple[str, ...]
    exit_code: int | None
    """Process exit status; ``None`` when it could not be read (killed or engine lost)."""
    duration: float
    """Seconds from start to end."""
    chunks: tuple[OutputChunk, ...] = ()
    truncated_bytes: int = 0
    """Output bytes dropped beyond the limit."""
    timed_out: bool = False
    """The backend killed the command at its deadline."""
    oom_killed: bool = False
    """The kernel's OOM killer ended the command (memory limit reached)."""
    cancelled: bool = False
    """``stop`` or task cancellation ended the command."""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.truncated_bytes > 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.oom_killed or self.cancelled)

    @property
    def output(self) -> bytes:
        """stdout and stderr interleaved as they arrived (with the truncation note, if any)."""
        return b"".join(chunk.data for chunk in self.chunks)

    @property
    def stdout(self) -> bytes:
        return b"".join(c.data for c in self.chunks if c.stream == "stdout")

    @property
    def stderr(self) -> bytes:
        return b"".join(c.data for c in self.chunks if c.stream == "stderr")

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def check(self, *, allow_truncated: bool = True) -> ExecResult:
        """Return self when the command succeeded, else raise the matching ``SandboxError``."""
        name = self.argv[0] if self.argv else "command"
        if self.timed_out:
            raise SandboxTimeout(f"{name} was killed at its deadline after {self.duration:.1f}s")
        if self.oom_killed:
            raise ExecFailed(f"{name} ran out of memory (raise the sandbox memory limit)", 137)
        if self.cancelled:
            raise ExecFailed(f"{name} was stopped", self.exit_code)
        if self.exit_code != 0:
            raise ExecFailed(f"{name} exited with status {self.exit_code}", self.exit_code)
        if self.truncated and not allow_truncated:
            raise OutputLimitExceeded(f"{name} output exceeded the limit by {self.truncated_bytes}")
        return self


class SandboxBackend(abc.ABC):
    """One container technology. Every method is safe to call from the event loop."""

    async def host_ids(self, spec: SandboxSpec) -> tuple[int, int]:
        """Host ``(uid, gid)`` that the sandbox user's files belong to (the workspace owner).
        Without user-namespace remapping that is the sandbox user itself."""
        return spec.uid, spec.gid

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> Sandbox:
        """Create (not start) a sandbox for ``spec``. Raises ``ImageNotFound``,
        ``SandboxStartError`` or ``EngineUnavailable``."""

    @abc.abstractmethod
    async def start(self, sandbox: Sandbox) -> None:
        """Start the sandbox's idle main process so commands can be exec'd."""

    @abc.abstractmethod
    async def exec(
        self,
        sandbox: Sandbox,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        on_output: OnOutput | None = None,
        output_limit: int | None = None,
    ) -> ExecResult:
        """Run ``argv`` (never a shell string) inside the sandbox as the spec's user.

        ``env`` adds to the spec's env; ``workdir`` defaults to ``/workspace``; ``timeout``
        defaults to the spec's and ends in a kill with ``timed_out=True``; ``on_output`` gets each
        chunk as it arrives (before this returns); output past ``output_limit`` (default: the
        spec's) is dropped and noted. Cancelling the awaiting task kills the command."""

    @abc.abstractmethod
    async def copy_in(self, sandbox: Sandbox, source: Path, dest_dir: str) -> None:
        """Copy a host file or directory into ``dest_dir`` (a bind mount such as
        ``/workspace``: the root filesystem is read-only). Files are owned by the spec's user."""

    @abc.abstractmethod
    async def copy_out(self, sandbox: Sandbox, path: str, dest_dir: Path) -> Path:
        """Copy ``path`` from the sandbox into the host directory ``dest_dir``; returns the host
        path of the copy. Links and device files are not extracted."""

    @abc.abstractmethod
    async def stop(self, sandbox: Sandbox, timeout: float = 2.0) -> None:
        """Stop the sandbox and every running exec: SIGTERM, then SIGKILL after ``timeout``."""

    @abc.abstractmethod
    async def remove(self, sandbox: Sandbox) -> None:
        """Remove the sandbox (stopping it first). Removing a gone sandbox is not an error."""

    @abc.abstractmethod
    async def inspect(self, sandbox: Sandbox) -> SandboxInfo:
        """Current state. Raises ``SandboxNotFound`` when it is gone."""

    async def status(self, sandbox: Sandbox) -> SandboxStatus:
        """The sandbox's state, ``REMOVED`` when it no longer exists."""
        try:
            return (await self.inspect(sandbox)).status
        except SandboxNotFound:
            return SandboxStatus.REMOVED

    @abc.abstractmethod
    async def reap(self, live: LiveRuns, *, max_age: float | None = None) -> list[str]:
        """Remove managed sandboxes whose run is not in ``live``; with ``max_age`` (seconds) only
        those at least that old (so a sandbox created a moment ago for a run not yet recorded
        survives). Returns the removed ids."""

    @abc.abstractmethod
    async def remove_run(self, run_id: str) -> list[str]:
        """Remove every sandbox of ``run_id`` (a run ended by another worker than the one that
        started its sandbox). Returns the removed ids."""

    async def adopt(self, sandbox: Sandbox, spec: SandboxSpec) -> Sandbox:
        """Hand a started pooled sandbox to the run of ``spec`` (same shape: see
        ``sandboxes.pool``): the handle the run uses from now on, with the run's limits and
        deadlines. Raises ``SandboxNotFound`` or ``SandboxNotRunning`` when it is no longer
        usable."""
        if await self.status(sandbox) != SandboxStatus.RUNNING:
            raise SandboxNotRunning(f"pooled sandbox {sandbox.name} is not running")
        return Sandbox(id=sandbox.id, name=sandbox.name, spec=spec)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release client resources."""


def owner_run(labels: Mapping[str, str], name: str) -> str | None:
    """The run a managed sandbox belongs to: its ``bosun.run_id`` label, or for a pooled sandbox
    a run claimed (the label still says ``pool-…``; the name ``bosun-<run_id>-<6 hex>`` says
    which run). An unclaimed pooled sandbox belongs to its pool: ``pool-…``."""
    run_id = labels.get(LABEL_RUN_ID)
    if run_id is None or not run_id.startswith(POOL_PREFIX):
        return run_id
    name = name.lstrip("/")
    if name.startswith("bosun-" + POOL_PREFIX) or not name.startswith("bosun-") or len(name) < 14:
        return run_id
    return name[len("bosun-") : -7] or run_id


def is_live(live: LiveRuns, run_id: str | None) -> bool:
    if run_id is None:
        return False
    if callable(live):
        return bool(live(run_id))
    return run_id in live


@contextlib.asynccontextmanager
async def open_sandbox(backend: SandboxBackend, spec: SandboxSpec) -> AsyncIterator[Sandbox]:
    """Create and start a sandbox; stop and remove it when the block exits (even on error or
    cancellation)."""
    sandbox = await backend.create(spec)
    try:
        await backend.start(sandbox)
        yield sandbox
    finally:
        await asyncio.shield(backend.remove(sandbox))
