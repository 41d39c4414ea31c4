"""A fake backend for unit tests only: no containers and no isolation whatsoever.

Every call is recorded in ``FakeBackend.calls``. ``exec`` either returns what a scripted
``handler`` returns, or (by default) runs the argv as a local subprocess with the sandbox's
workspace as working directory (``/workspace`` in ``workdir`` maps to it) and an environment of
only ``PATH``, ``HOME`` (a fresh temp dir) and the spec's/exec's env. Timeouts, the output cap,
``stop`` and reaping behave like the real backend's, so pipeline code can be tested end to end.
Never use it to run anything untrusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxes.base import (
    LABEL_MANAGED,
    LABEL_RUN_ID,
    ExecResult,
    LiveRuns,
    Sandbox,
    SandboxBackend,
    SandboxInfo,
    SandboxStatus,
    is_live,
)
from sandboxes.errors import CopyError, SandboxError, SandboxNotFound, SandboxNotRunning
from sandboxes.output import OnOutput, OutputCollector, Stream
from sandboxes.spec import WORKSPACE_MOUNT, SandboxSpec

Handler = Callable[[Sandbox, list[str]], Awaitable[ExecResult | None]]
"""A scripted exec: return a result to short-circuit, or ``None`` to run the argv locally."""


@dataclass
class _State:
    sandbox: Sandbox
    status: SandboxStatus = SandboxStatus.CREATED
    created: float = field(default_factory=time.time)
    home: Path | None = None
    processes: set[asyncio.subprocess.Process] = field(default_factory=set)


class FakeBackend(SandboxBackend):
    """Records calls; runs execs as local subprocesses unless ``handler`` answers them."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.calls: list[tuple[str, Any]] = []
        self._states: dict[str, _State] = {}
        self._ids = itertools.count(1)

    def _state(self, sandbox: Sandbox | str) -> _State:
        key = sandbox if isinstance(sandbox, str) else sandbox.id
        try:
            return self._states[key]
        except KeyError:
            raise SandboxNotFound(f"sandbox {key} is gone") from None

    def _map(self, spec: SandboxSpec, path: str) -> Path:
        if path == WORKSPACE_MOUNT or path.startswith(WORKSPACE_MOUNT + "/"):
            return spec.workspace / path[len(WORKSPACE_MOUNT) :].lstrip("/")
        raise CopyError(f"the fake backend only maps {WORKSPACE_MOUNT}, not {path}")

    async def create(self, spec: SandboxSpec) -> Sandbox:
        self.calls.append(("create", spec.run_id))
        number = next(self._ids)
        sandbox = Sandbox(id=f"fake-{number}", name=f"bosun-{spec.run_id}-{number}", spec=spec)
        self._states[sandbox.id] = _State(sandbox)
        return sandbox

    async def start(self, sandbox: Sandbox) -> None:
        self.calls.append(("start", sandbox.id))
        state = self._state(sandbox)
        state.home = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="bosun-fake-home-"))
        state.status = SandboxStatus.RUNNING

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
        argv = [str(arg) for arg in argv]
        self.calls.append(("exec", argv))
        state = self._state(sandbox)
        if state.status != SandboxStatus.RUNNING:
            raise SandboxNotRunning(f"sandbox {sandbox.name} is not running")
        if self.handler is not None:
            scripted = await self.handler(sandbox, argv)
            if scripted is not None:
                return scripted
        spec = sandbox.spec
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(state.home),
            **spec.env,
            **(env or {}),
        }
        collector = OutputCollector(output_limit or spec.output_limit_bytes, on_output)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self._map(spec, workdir or WORKSPACE_MOUNT),
                env=environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            note = f"exec: {argv[0]}: {exc.strerror}\n".encode()
            await collector.feed("stderr", note)
            return ExecResult(tuple(argv), 127, 0.0, tuple(collector.chunks))
        state.processes.add(process)
        timed_out = False
        pumps = asyncio.gather(
            self._pump(process.stdout, "stdout", collector),
            self._pump(process.stderr, "stderr", collector),
        )
        try:
            async with asyncio.timeout(timeout if timeout is not None else spec.timeout_seconds):
                await asyncio.shield(pumps)
                await process.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(process)
            await pumps
            await process.wait()
        except asyncio.CancelledError:
            _kill_group(process)
            raise
        finally:
            state.processes.discard(process)
        cancelled = state.status != SandboxStatus.RUNNING
        code = process.returncode
        return ExecResult(
            argv=tuple(argv),
            exit_code=128 - code if code is not None and code < 0 else code,
            duration=time.monotonic() - started,
            chunks=tuple(collector.chunks),
            truncated_bytes=collector.truncated_bytes,
            timed_out=timed_out,
            cancelled=cancelled,
        )

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader | None, stream: Stream, collector: OutputCollector
    ) -> None:
        assert reader is not None
        while chunk := await reader.read(65536):
            await collector.feed(stream, chunk)

    async def copy_in(self, sandbox: Sandbox, source: Path, dest_dir: str) -> None:
        self.calls.append(("copy_in", (str(source), dest_dir)))
        target = self._map(self._state(sandbox).sandbox.spec, dest_dir) / source.name
        await asyncio.to_thread(_copy, source, target, sandbox.name)

    async def copy_out(self, sandbox: Sandbox, path: str, dest_dir: Path) -> Path:
        self.calls.append(("copy_out", (path, str(dest_dir))))
        source = self._map(self._state(sandbox).sandbox.spec, path)
        target = dest_dir / source.name
        await asyncio.to_thread(_copy, source, target, sandbox.name)
        return target

    async def stop(self, sandbox: Sandbox, timeout: float = 2.0) -> None:
        self.calls.append(("stop", sandbox.id))
        state = self._states.get(sandbox.id)
        if state is None:
            return
        state.status = SandboxStatus.EXITED
        for process in list(state.processes):
            _kill_group(process)

    async def remove(self, sandbox: Sandbox) -> None:
        self.calls.append(("remove", sandbox.id))
        if sandbox.id in self._states:
            await self.stop(sandbox)
            state = self._states.pop(sandbox.id)
            if state.home is not None:
                await asyncio.to_thread(shutil.rmtree, state.home, True)

    async def inspect(self, sandbox: Sandbox) -> SandboxInfo:
        state = self._state(sandbox)
        spec = state.sandbox.spec
        return SandboxInfo(
            id=sandbox.id,
            name=state.sandbox.name,
            status=state.status,
            run_id=spec.run_id,
            created=datetime.fromtimestamp(state.created, UTC),
            exit_code=0 if state.status == SandboxStatus.EXITED else None,
            oom_killed=False,
            labels={**spec.labels, LABEL_MANAGED: "true", LABEL_RUN_ID: spec.run_id},
        )

    async def reap(self, live: LiveRuns, *, max_age: float | None = None) -> list[str]:
        self.calls.append(("reap", max_age))
        now = time.time()
        doomed = [
            state.sandbox
            for state in self._states.values()
            if not is_live(live, state.sandbox.spec.run_id)
            and (max_age is None or now - state.created >= max_age)
        ]
        for sandbox in doomed:
            await self.remove(sandbox)
        return [sandbox.id for sandbox in doomed]

    async def remove_run(self, run_id: str) -> list[str]:
        self.calls.append(("remove_run", run_id))
        doomed = [s.sandbox for s in self._states.values() if s.sandbox.spec.run_id == run_id]
        for sandbox in doomed:
            await self.remove(sandbox)
        return [sandbox.id for sandbox in doomed]


def _copy(source: Path, target: Path, name: str) -> None:
    if not source.exists():
        raise CopyError(f"{source} does not exist (sandbox {name})")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 9)


__all__ = ["FakeBackend", "Handler", "SandboxError"]
