"""The prepare step of a run: its folder, its sandbox and its checkout, side by side.

The sandbox does not need the repository to start (its folders are bound empty), so the
container is created and started — or a started one taken from the warm pool
(``sandboxes.pool``) — while the mirror fetches and the checkout is written into the bound
``workspace``. Then the prompt goes into ``input`` and the model gateway's socket into its folder.
Each part's time is kept in ``timings`` (the manifest's ``timings_s`` and the prepare
``progress`` event): ``host_ids``, ``git_token``, ``mirror_fetch``, ``checkout``, ``workspace``
(token, fetch and checkout), ``sandbox_claim`` (pooled) or ``container_create`` and
``container_start`` (fresh), ``sandbox_start`` (the sandbox ready), and ``prepare`` (all of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy import select

from bot.agents.gateway import routes_for_profile, sandbox_mount, socket_dir
from bot.db.models import Run
from bot.errors import BosunError
from bot.forge.port import Forge
from jobs.context import JobContext
from jobs.run.agent import AgentSteps
from jobs.run.base import INPUT_MOUNT, StepFailed, utc_now, write_input
from sandboxes.errors import SandboxError
from sandboxes.localrepo import LocalRepoError
from sandboxes.pool import Claim
from sandboxes.spec import BindMount, SandboxSpec

log = structlog.get_logger("jobs.run.pipeline")

T = TypeVar("T")


class PrepareSteps(AgentSteps):
    async def _prepare(self) -> None:
        started = time.monotonic()
        self.view.phase("prepare", "running", "fetching the repository")
        self.reporter.changed()
        for note in self.narrowed:
            await self.events.emit(
                "policy", {"rule": "profiles", "decision": "narrow", "message": note}
            )
        workspaces = self.bosun.workspaces
        run_dir = workspaces.run_dir(self.run.id)
        spec = self._spec(run_dir / "workspace", run_dir / "input", gateway=self._wants_gateway())
        owner = await self._timed("host_ids", self.bosun.backend.host_ids(spec))
        claim = self.bosun.pool.claim(spec, run_dir)
        if claim is not None:
            self.sandbox = claim.sandbox  # the run's now: removed with it, whatever happens
        await workspaces.lay_out(self.run.id, adopt=claim.folder if claim else None)
        await asyncio.to_thread(_make_folders, [mount.source for mount in spec.mounts])
        await _side_by_side(self._checkout(owner), self._sandbox(spec, claim))
        assert self.workspace is not None
        self.view.base_sha = self.workspace.base_sha
        await self._save(
            base_sha=self.workspace.base_sha, worker=self.bosun.worker_id, heartbeat_at=utc_now()
        )
        input_dir = run_dir / "input"
        async with self.sessions() as session:  # with the steers folded in while it was queued
            prompt = (
                await session.execute(select(Run.prompt).where(Run.id == self.run.id))
            ).scalar()
        self.run.prompt = prompt if prompt is not None else self.run.prompt
        await asyncio.to_thread(write_input, input_dir, self.run.prompt)
        await self._start_gateway(owner[1])
        await self._restore_session(input_dir)
        self.timings["prepare"] = round(time.monotonic() - started, 3)
        self.view.phase("prepare", "done", f"base `{self.workspace.base_sha[:12]}`")
        await self.events.emit(
            "progress",
            {
                "phase": "prepare",
                "base_sha": self.workspace.base_sha,
                "workspace": str(self.workspace.path),
                "sandbox": "pooled" if "sandbox_claim" in self.timings else "fresh",
                "timings": dict(self.timings),
            },
        )

    async def _checkout(self, owner: tuple[int, int]) -> None:
        """Fetch the mirror and write the run's checkout into its (already bound) workspace."""
        t0 = time.monotonic()
        auth = await self._timed("git_token", self.port.git_auth_header())
        try:
            self.workspace = await self.bosun.workspaces.prepare(
                run_id=self.run.id,
                repo=self.repository.full_name,
                remote_url=self._remote_url(),
                branch=self.run.branch or f"bosun/run-{self.run.id}",
                base_ref=self.repository.default_branch,
                auth_header=auth,
                owner=owner,
                continue_branch=self.run.parent_run_id is not None,
                laid_out=True,
                timings=self.timings,
                prefetch_key=self.run.delivery_id,
            )
        except LocalRepoError as exc:  # Bosun's own words: the path and what is wrong with it
            raise StepFailed(f"the local repository cannot be used: {exc}") from exc
        except SandboxError as exc:
            raise StepFailed(
                "could not fetch and check out the repository; the detail is in the run's "
                "`error` artifact",
                detail=str(exc),
            ) from exc
        self.timings["workspace"] = round(time.monotonic() - t0, 3)

    async def _sandbox(self, spec: SandboxSpec, claim: Claim | None) -> None:
        """The run's sandbox, started: the pooled one claimed, else (or when that one died
        meanwhile) a new one."""
        backend = self.bosun.backend
        t0 = time.monotonic()
        if claim is not None:
            try:
                adopted = backend.adopt(claim.sandbox, spec)
                self.sandbox = await self._timed("sandbox_claim", adopted)
                self.timings["sandbox_start"] = round(time.monotonic() - t0, 3)
                return
            except SandboxError as exc:
                log.warning("pooled_sandbox_unusable", error=str(exc))
                self.timings.pop("sandbox_claim", None)
                with contextlib.suppress(SandboxError):
                    await backend.remove(claim.sandbox)
                self.sandbox = None
        try:
            self.sandbox = await self._timed("container_create", backend.create(spec))
            await self._timed("container_start", backend.start(self.sandbox))
        except SandboxError as exc:
            raise StepFailed(f"the sandbox did not start: {exc}") from exc
        self.timings["sandbox_start"] = round(time.monotonic() - t0, 3)

    async def _timed(self, name: str, step: Awaitable[T]) -> T:
        t0 = time.monotonic()
        result = await step
        self.timings[name] = round(time.monotonic() - t0, 3)
        return result

    def _wants_gateway(self) -> bool:
        """Whether the profile may reach a model API (then the gateway's folder is bound)."""
        try:
            return bool(routes_for_profile(self.profile, self.settings.gateway.upstreams))
        except BosunError as exc:
            raise StepFailed(f"profile {self.run.profile!r} is misconfigured: {exc}") from exc

    def _spec(
        self, workspace: Path, input_dir: Path | None = None, *, gateway: bool = False
    ) -> SandboxSpec:
        sandbox = self.settings.sandbox
        mounts: tuple[BindMount, ...] = ()
        if input_dir is not None:
            mounts = (BindMount(source=input_dir, target=INPUT_MOUNT, read_only=True),)
            if gateway:
                mounts += (sandbox_mount(socket_dir(input_dir.parent)),)
        return SandboxSpec(
            run_id=self.run.id,
            image=self.profile.image or sandbox.image,
            workspace=workspace,
            user=sandbox.user,
            memory=sandbox.memory,
            cpus=sandbox.cpus,
            pids=sandbox.pids,
            tmpfs_size=sandbox.tmpfs_size,
            timeout_seconds=self.profile.timeout or sandbox.timeout_seconds,
            output_limit_bytes=sandbox.output_limit_bytes,
            runtime=sandbox.runtime,
            seccomp_profile=sandbox.seccomp_profile,
            mounts=mounts,
            labels={"repo": self.repository.full_name.replace("/", "_")},
        )


async def _side_by_side(checkout: Awaitable[None], sandbox: Awaitable[None]) -> None:
    """Run both; the first failure cancels the checkout (never the sandbox's engine calls, so
    the run learns its container and removes it), and is raised once both have ended — the
    checkout's first, as it explains more."""
    tasks = [asyncio.ensure_future(checkout), asyncio.ensure_future(sandbox)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        if not all(task.done() for task in tasks):
            tasks[0].cancel()
        await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def prefetch_base(bosun: JobContext, port: Forge, key: str, branch: str) -> None:
    """Start fetching ``branch`` into the repository's mirror now, for a run its delivery
    ``key`` is about to start: the run's prepare step takes this fetch instead of making its
    own (``WorkspaceManager.prepare``), so it is mostly done before the run is picked up.
    A run that is not started, or is picked up by another worker, leaves it unused."""
    bosun.workspaces.mirrors.prefetch(
        key, port.full_name, port.clone_url(), port.git_auth_header, (branch,)
    )


def _make_folders(paths: list[Path]) -> None:
    for path in paths:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
