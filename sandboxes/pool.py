"""A warm pool of started, hardened sandboxes, so a run does not wait for its container to start.

A run's sandbox binds folders of the run's own folder (``<root>/runs/<run_id>``: ``workspace``,
``input``, the gateway's socket folder …), and a container's binds are fixed when it is
created. So a pooled sandbox is created, exactly as a run's would be, from the run's spec with
every bind source moved into a *slot folder* of its own (``<root>/pool/<pool>/<slot>``, empty
folders of the same names), and started. A run that claims it renames the slot folder to its
run folder (same filesystem: the binds follow the folder) and only then fills it: the checkout
is written into ``workspace`` as its owner, the prompt into ``input``, the gateway's socket
into its folder.

- **Same hardening.** The container is made by the same ``SandboxBackend.create`` from the run's
  own spec; only the run id, the bind sources and the run's extra labels differ. Sandboxes are
  pooled by *shape*: every spec field but those and the per-exec limits
  (``timeout_seconds``, ``output_limit_bytes``), so a run only ever gets a sandbox made from a
  spec equal to its own in everything the engine enforces.
- **Never shared, never reused.** ``claim`` takes a sandbox off its queue without awaiting
  anything, so two runs on one event loop can never get the same one; a claimed sandbox
  belongs to its run and is removed with it, never returned.
- **Kept fresh.** One task per pool checks the ready sandboxes every ``check_seconds``: one
  idle longer than ``idle_seconds`` is removed and replaced, one that stopped or vanished (the
  engine restarted) is dropped, and every shape claimed in the last ``SHAPE_KEEP_SECONDS`` is
  filled back up to ``size``. A shape is learnt from the first run that asks for it, so a
  new worker's first run of each profile starts its sandbox itself.
- **Size 0** is no pool at all: ``claim`` returns ``None`` and nothing runs in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog

from sandboxes.base import POOL_PREFIX, Sandbox, SandboxBackend, SandboxStatus
from sandboxes.errors import SandboxError
from sandboxes.spec import SandboxSpec

log = structlog.get_logger(__name__)

SHAPE_KEEP_SECONDS = 3600.0
"""A shape no run has claimed for this long is no longer refilled."""
MAX_BACKOFF_SECONDS = 60.0
"""The longest wait before starting a shape's sandbox again after failures."""
CLOSE_WAIT_SECONDS = 30.0
"""How long ``close`` waits for a sandbox being started."""
PER_EXEC = frozenset({"run_id", "workspace", "mounts", "labels"})
"""Spec fields a pooled sandbox does not share with its run (moved or per-run)."""
NOT_ENFORCED = frozenset({"timeout_seconds", "output_limit_bytes"})
"""Spec fields the backend applies per exec, not when it creates the container."""

Shape = tuple[str, str, tuple[tuple[str, str, bool], ...]]


def shape_of(spec: SandboxSpec, run_dir: Path) -> Shape:
    """What a pooled sandbox must share with ``spec``: every field the engine enforces, and the
    bind sources as paths inside ``run_dir``. Raises ``ValueError`` when a bind source is not in
    ``run_dir`` (such a sandbox cannot be pooled)."""
    enforced = spec.model_dump_json(exclude=set(PER_EXEC | NOT_ENFORCED))
    mounts = tuple(
        (str(mount.source.relative_to(run_dir)), mount.target, mount.read_only)
        for mount in spec.mounts
    )
    return enforced, str(spec.workspace.relative_to(run_dir)), mounts


def pooled_spec(spec: SandboxSpec, run_dir: Path, slot: Path, run_id: str) -> SandboxSpec:
    """``spec`` with its bind sources moved from ``run_dir`` into ``slot``."""
    return spec.model_copy(
        update={
            "run_id": run_id,
            "workspace": slot / spec.workspace.relative_to(run_dir),
            "mounts": tuple(
                mount.model_copy(update={"source": slot / mount.source.relative_to(run_dir)})
                for mount in spec.mounts
            ),
            "labels": {},
        }
    )


@dataclass(eq=False)
class Slot:
    """A started pooled sandbox and the folder its binds point into."""

    sandbox: Sandbox
    folder: Path
    shape: Shape
    ready_at: float
    """``time.monotonic()`` when it was started."""


@dataclass(frozen=True)
class Claim:
    """A sandbox taken from the pool for one run: the caller renames ``folder`` to the run's
    folder, then hands the sandbox over with ``SandboxBackend.adopt``."""

    sandbox: Sandbox
    folder: Path


@dataclass
class _Wanted:
    spec: SandboxSpec
    run_dir: Path
    claimed_at: float
    failures: int = 0
    """Starts that failed in a row (a missing image, an engine that is down)."""
    retry_at: float = 0.0


class SandboxPool:
    """Up to ``size`` started sandboxes per shape, each idle at most ``idle_seconds``."""

    def __init__(
        self,
        backend: SandboxBackend,
        root: Path,
        *,
        size: int,
        idle_seconds: float,
        check_seconds: float = 2.0,
        refill_delay: float = 0.5,
    ) -> None:
        self.backend = backend
        self.root = root
        self.size = size
        self.idle_seconds = idle_seconds
        self.check_seconds = check_seconds
        self.refill_delay = refill_delay
        """Seconds between a claim and refilling: the claiming run starts first."""
        self.id = secrets.token_hex(4)
        self._ready: dict[Shape, deque[Slot]] = {}
        self._wanted: dict[Shape, _Wanted] = {}
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()
        """One check-and-fill round at a time (the background task's, or a caller's)."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.created = 0
        """Sandboxes this pool started (for tests and logs)."""

    @property
    def enabled(self) -> bool:
        return self.size > 0 and not self._closed

    def ready(self, spec: SandboxSpec | None = None, run_dir: Path | None = None) -> list[Slot]:
        """The ready sandboxes (of ``spec``'s shape, given ``spec`` and ``run_dir``)."""
        if spec is not None and run_dir is not None:
            return list(self._ready.get(shape_of(spec, run_dir), ()))
        return [slot for queue in self._ready.values() for slot in queue]

    def claim(self, spec: SandboxSpec, run_dir: Path) -> Claim | None:
        """A started sandbox of ``spec``'s shape for the run whose folder is ``run_dir``, or
        ``None`` (pool off, empty, or the shape not seen before; it is filled from now on).
        Never awaits: no other task can take the same sandbox."""
        if not self.enabled:
            return None
        try:
            shape = shape_of(spec, run_dir)
        except ValueError:
            return None
        known = self._wanted.get(shape)
        if known is not None:
            known.spec, known.run_dir, known.claimed_at = spec, run_dir, time.monotonic()
        else:
            self._wanted[shape] = _Wanted(spec, run_dir, time.monotonic())
        self._ensure_running()
        asyncio.get_running_loop().call_later(self.refill_delay, self._wake.set)
        queue = self._ready.get(shape)
        if not queue:
            return None
        slot = queue.popleft()
        log.info("sandbox_pool_claimed", sandbox=slot.sandbox.name, left=len(queue))
        return Claim(slot.sandbox, slot.folder)

    async def fill(self) -> None:
        """Check and fill the pool once now (the background task does this by itself)."""
        async with self._round:
            await self._check()
            await self._fill()

    async def close(self) -> None:
        """Stop refilling and remove every ready sandbox and its folder. A sandbox being started
        is waited for (then removed), so none is left behind unknown."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        slots = self.ready()
        self._ready.clear()
        for slot in slots:
            await self._discard(slot)
        await asyncio.to_thread(_rmtree, self.root / self.id)

    # -- the background task --------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sandbox-pool")

    async def _loop(self) -> None:
        await self._sweep_leftovers()
        while not self._closed:
            try:
                await self.fill()
            except Exception as exc:  # noqa: BLE001 -- the engine may be down: try next round
                log.warning("sandbox_pool_round_failed", error=str(exc))
            if self._closed:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_seconds):
                    await self._wake.wait()

    async def _check(self) -> None:
        """Drop ready sandboxes idle past ``idle_seconds`` or no longer running."""
        now = time.monotonic()
        for queue in list(self._ready.values()):
            for slot in list(queue):
                if now - slot.ready_at > self.idle_seconds:
                    queue.remove(slot)
                    log.info("sandbox_pool_expired", sandbox=slot.sandbox.name)
                    await self._discard(slot)
        for queue in list(self._ready.values()):
            for slot in list(queue):
                status = await self.backend.status(slot.sandbox)
                if status != SandboxStatus.RUNNING and slot in queue:  # not claimed meanwhile
                    queue.remove(slot)
                    log.warning("sandbox_pool_lost", sandbox=slot.sandbox.name, status=status)
                    await self._discard(slot)

    async def _fill(self) -> None:
        now = time.monotonic()
        for shape, wanted in list(self._wanted.items()):
            if now - wanted.claimed_at > SHAPE_KEEP_SECONDS:
                del self._wanted[shape]
                continue
            if now < wanted.retry_at:
                continue
            queue = self._ready.setdefault(shape, deque())
            while len(queue) < self.size and not self._closed:
                slot = await self._start(shape, wanted)
                if slot is None:  # the engine refused: again later, waiting longer each time
                    wanted.failures += 1
                    backoff = min(MAX_BACKOFF_SECONDS, self.check_seconds * 2**wanted.failures)
                    wanted.retry_at = time.monotonic() + backoff
                    break
                wanted.failures = 0
                queue.append(slot)

    async def _start(self, shape: Shape, wanted: _Wanted) -> Slot | None:
        slot_id = secrets.token_hex(4)
        folder = self.root / self.id / slot_id
        spec = pooled_spec(wanted.spec, wanted.run_dir, folder, f"{POOL_PREFIX}{self.id}-{slot_id}")
        try:
            await asyncio.to_thread(_make_folders, folder, spec)
            sandbox = await self.backend.create(spec)
        except (SandboxError, OSError) as exc:
            log.warning("sandbox_pool_create_failed", error=str(exc))
            await asyncio.to_thread(_rmtree, folder)
            return None
        try:
            await self.backend.start(sandbox)
        except SandboxError as exc:
            log.warning("sandbox_pool_start_failed", error=str(exc))
            await self._discard(Slot(sandbox, folder, shape, 0.0))
            return None
        self.created += 1
        return Slot(sandbox, folder, shape, time.monotonic())

    async def _discard(self, slot: Slot) -> None:
        with contextlib.suppress(SandboxError):
            await self.backend.remove(slot.sandbox)
        await asyncio.to_thread(_rmtree, slot.folder)

    async def _sweep_leftovers(self) -> None:
        """Remove what pools of workers that died left: their idle sandboxes once older than
        ``idle_seconds`` (a live pool replaces its own by then), and their slot folders (empty
        folders only: a claimed one was renamed away) once untouched for twice that."""
        prefix = f"{POOL_PREFIX}{self.id}-"
        max_age = self.idle_seconds + 60
        with contextlib.suppress(SandboxError):
            await self.backend.reap(
                lambda run_id: not run_id.startswith(POOL_PREFIX) or run_id.startswith(prefix),
                max_age=max_age,
            )
        await asyncio.to_thread(self._sweep_folders, 2 * max_age)

    def _sweep_folders(self, max_age: float) -> None:
        if not self.root.is_dir():
            return
        now = time.time()
        for entry in self.root.iterdir():
            if entry.name == self.id or not entry.is_dir() or entry.is_symlink():
                continue
            if now - entry.stat().st_mtime > max_age:
                _rmtree(entry)


def _make_folders(folder: Path, spec: SandboxSpec) -> None:
    """The slot's empty folders, one per bind, traversable as a run's folder is."""
    folder.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.mkdir(mode=0o755)
    for path in (spec.workspace, *(mount.source for mount in spec.mounts)):
        path.mkdir(mode=0o755, parents=True, exist_ok=True)


def _rmtree(path: Path) -> None:
    """Remove a pool folder (empty folders only; never through a link)."""
    if not os.path.lexists(path):
        return
    subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
