"""The setup phase: the repository's setup commands in the run's sandbox before the agent,
with network only through the run's egress proxy, filling the repository's dependency caches.

``_plan_setup`` (before the sandbox is made) decides the commands — ``setup:`` of
``.github/bosun.yml``, else the create commands of the default branch's devcontainer.json —
and so what the sandbox binds (``_spec``): the proxy's socket folder at ``/bosun-egress`` and
the run's copy of the repository's dependency cache at ``/bosun-cache``, both folders of the
run. ``_setup`` (once the sandbox runs) fills the cache copy (``sandboxes.caches``), starts the
proxy, runs each command through the in-sandbox forwarder with the proxy in its environment and
nothing else added (no token, no key: the same rules as the agent), kills whatever the commands
left running, stops the proxy, and seals the cache (read-only from here on) and publishes it
for the repository's later runs — only when setup ran the base branch's code: a run continuing
a branch (a retry of the agent's work) keeps what its setup left to itself.

A profile with ``agent_network: registries`` keeps the proxy for the agent phase: the sandbox's
environment names the proxy (``NO_PROXY`` keeps the model gateway direct), a forwarder serves
it while the agent runs, and the proxy stops before the gates.

A failing command does not fail the run: the later commands are skipped, the phase row says
which command failed and how, its output is the run's ``setup`` artifact, and the agent and
gates go on — the gates tell whether the work holds without it. The model gateway is not
listening while setup runs, so a setup command cannot spend the run's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import structlog

from bot.agents.egress import (
    EGRESS_MOUNT,
    PROXY_PORT,
    EgressProxy,
    EgressRecord,
    caches_of,
    forwarder_argv,
    proxy_env,
    socket_dir,
)
from bot.domain.devcontainer import (
    DEVCONTAINER_PATHS,
    Devcontainer,
    DevcontainerError,
    SetupCommand,
    from_config,
    read_devcontainer,
)
from bot.domain.egress import EgressPolicy, effective_policy
from bot.domain.prompt import INSTRUCTION_FILES, instruction_files, with_instructions
from bot.forge.port import ForgeRefused
from jobs.run.agent import AgentSteps
from jobs.run.base import write_input
from jobs.run.phases import Phase
from sandboxes.base import ExecResult
from sandboxes.caches import (
    CACHE_MOUNT,
    REOPENED_DIRS,
    RUN_FOLDER,
    CacheError,
    Caches,
    cache_env,
    repository_key,
)
from sandboxes.errors import SandboxError
from sandboxes.output import LineSplitter
from sandboxes.quota import OnExceeded, WorkspaceQuota
from sandboxes.spec import BindMount, SandboxSpec

log = structlog.get_logger("jobs.run.setup")

SETUP_OUTPUT_LIMIT = 2_000_000
"""Bytes of setup output kept as the run's ``setup`` artifact."""
SETUP_LOG_LINES = 2_000
"""Lines of setup output sent to the live log as ``log`` events (``stream: setup:stdout``)."""


class SetupSteps(AgentSteps):
    setup_commands: tuple[SetupCommand, ...] = ()
    egress: EgressProxy | None = None
    """The run's egress proxy, when it has setup commands or its agent may reach registries."""
    build_egress: EgressProxy | None = None
    """The egress proxy of the repository image's build (``jobs.run.image``), when it had one."""
    caches: Caches | None = None
    cache_key = ""
    cache_reopened = False
    """Whether the run's cache copy has a writable part the agent may fill (``REOPENED_DIRS``)."""
    egress_phase = "setup"
    """The phase the proxy's requests are logged under (``setup``, then ``agent``)."""
    _egress_policy_of_run: EgressPolicy | None = None
    _devcontainer_read = False
    _devcontainer_unreadable = False
    devcontainer: Devcontainer | None = None
    """The default branch's devcontainer.json, when it has one Bosun can use."""
    devcontainer_problem: str | None = None
    """Why the devcontainer.json there could not be used (unreadable, malformed)."""

    @property
    def _registries(self) -> bool:
        return self.profile.agent_network == "registries"

    def _run_dir(self) -> Path:
        return self.bosun.workspaces.run_dir(self.run.id)

    async def _plan_setup(self) -> None:
        """Decide the setup commands and the egress policy (before the sandbox is made)."""
        self.setup_commands = await self._setup_commands()
        if not (self.setup_commands or self._registries):
            return
        egress = self.settings.egress
        policy = await self._egress_policy()
        self.egress = EgressProxy(
            self.run.id,
            socket_dir(self._run_dir()),
            policy,
            on_request=self._on_egress,
            sandbox_gid=None,  # set once the sandbox user's host ids are known
            max_connections=egress.max_connections,
            connect_timeout=egress.connect_timeout_seconds,
        )
        if self.setup_commands:
            self.caches = caches_of(self.settings)
            self.cache_key = repository_key(self.repository.id, self.repository.full_name)

    def _spec(self, workspace: Path, input_dir: Path | None = None, **options: Any) -> SandboxSpec:
        """The sandbox's spec with the setup phase's binds and environment added."""
        spec: SandboxSpec = super()._spec(workspace, input_dir, **options)  # type: ignore[misc]
        if input_dir is None or self.egress is None:
            return spec
        run_dir = input_dir.parent
        mounts: tuple[BindMount, ...] = (
            BindMount(source=socket_dir(run_dir), target=EGRESS_MOUNT),
        )
        env: dict[str, str] = {}
        if self.caches is not None:
            mounts += (BindMount(source=run_dir / RUN_FOLDER, target=CACHE_MOUNT, read_only=False),)
            env.update(cache_env())
        if self._registries:
            env.update(proxy_env())
            env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"  # the model gateway
        fields = spec.model_dump() | {"mounts": spec.mounts + mounts, "env": {**spec.env, **env}}
        return SandboxSpec.model_validate(fields)  # validated again: mounts, env names

    async def _egress_policy(self) -> EgressPolicy:
        """The run's allowlist (the image's build and setup share it); what the repository
        asked for beyond the operator's permission is said once, as ``policy`` events."""
        if self._egress_policy_of_run is not None:
            return self._egress_policy_of_run
        egress = self.settings.egress
        policy = effective_policy(
            egress.allow,
            egress.private_hosts,
            egress.repository_may_allow,
            self.config.egress.allow,
            self.config.egress.deny,
        )
        self._egress_policy_of_run = policy
        for note in policy.notes:
            decision = {"rule": "egress.allow", "decision": "ignore", "message": note}
            self.policy.append(decision)
            await self.events.emit("policy", decision)
        return policy

    async def _devcontainer(self) -> Devcontainer | None:
        """The default branch's devcontainer.json, read once per run (its image and its create
        commands both come from it); both places asked at once: one round trip for the many
        repositories that have neither. None when there is none, or when it cannot be used:
        then ``devcontainer_problem`` says why."""
        if self._devcontainer_read:
            return self.devcontainer
        self._devcontainer_read = True
        branch = self.repository.default_branch
        texts = await asyncio.gather(
            *(self.port.file_text(path, branch) for path in DEVCONTAINER_PATHS),
            return_exceptions=True,
        )
        for path, text in zip(DEVCONTAINER_PATHS, texts, strict=True):
            if isinstance(text, ForgeRefused):  # unavailable: raised, the run says to retry
                self.devcontainer_problem = f"{path} could not be read ({text})"
                self._devcontainer_unreadable = True
                return None
            if isinstance(text, BaseException):
                raise text
            if text is None:
                continue
            try:
                self.devcontainer = read_devcontainer(text, path)
            except DevcontainerError as exc:
                self.devcontainer_problem = str(exc)
            return self.devcontainer
        return None

    async def _setup_commands(self) -> tuple[SetupCommand, ...]:
        """``setup:`` of the policy file, else the default branch's devcontainer.json's create
        commands."""
        if self.config.setup is not None:
            return tuple(from_config(self.config.setup))
        devcontainer = await self._devcontainer()
        if self.devcontainer_problem is not None:
            ran = (
                "no setup command"
                if self._devcontainer_unreadable
                else "none of its setup commands"
            )
            await self._skip_setup(f"{self.devcontainer_problem}; {ran} ran")
            return ()
        return devcontainer.commands if devcontainer is not None else ()

    async def _skip_setup(self, message: str) -> None:
        """The repository's setup cannot run: say why on the run (its ``setup`` row and a
        ``policy`` event); the run goes on without it."""
        self.view.phase("setup", "failed", message)
        decision = {"rule": "setup", "decision": "skip", "message": message}
        self.policy.append(decision)
        await self.events.emit("policy", decision)

    async def _note_instructions(self) -> None:
        """``AGENTS.md`` (and ``CLAUDE.md`` for Claude Code) stay where they are for the agent
        to read; the prompt says they are there."""
        assert self.workspace is not None
        present = await asyncio.to_thread(_regular_files, self.workspace.path, INSTRUCTION_FILES)
        files = instruction_files(present, self.profile.runner)
        if not files:
            return
        self.run.prompt = with_instructions(self.run.prompt, files)
        await asyncio.to_thread(write_input, self._run_dir() / "input", self.run.prompt)
        await self.events.emit("progress", {"phase": "prepare", "instructions": files})

    def _on_egress(self, record: EgressRecord) -> None:
        self.events.buffer("egress", record.event_data(self.egress_phase))
        if not record.allowed:
            self.view.egress_denied = self._denied()
            self.reporter.changed()

    def _on_build_egress(self, record: EgressRecord) -> None:
        self.events.buffer("egress", record.event_data("build"))
        if not record.allowed:
            self.view.egress_denied = self._denied()
            self.reporter.changed()

    def _denied(self) -> list[tuple[str, int, int]]:
        """What the run's proxies refused (the image's build, then setup and the agent)."""
        counts: dict[tuple[str, int], int] = {}
        for proxy in (self.build_egress, self.egress):
            for host, port, attempts in proxy.denied_hosts() if proxy is not None else []:
                counts[(host, port)] = counts.get((host, port), 0) + attempts
        return [(host, port, n) for (host, port), n in counts.items()]

    async def _setup(self) -> None:
        """Name the repository's agent instructions in the prompt, then run the setup commands
        (if any) in the sandbox through the egress proxy."""
        await self._note_instructions()
        if self.egress is None:
            return
        assert self.sandbox is not None
        owner = await self.bosun.backend.host_ids(self.sandbox.spec)
        self.egress.sandbox_gid = owner[1]
        await asyncio.to_thread(self.egress.prepare)
        if not self.setup_commands:
            return
        commands = self.setup_commands
        self.view.phase("setup", "running", f"{len(commands)} command(s)")
        self.reporter.changed()
        started = time.monotonic()
        cache = self._run_dir() / RUN_FOLDER
        if self.caches is not None:
            try:
                warm = await asyncio.to_thread(self.caches.stage, self.cache_key, cache, owner)
                self.timings["cache_stage"] = round(time.monotonic() - started, 3)
                await self.events.emit(
                    "progress", {"phase": "setup", "cache": "warm" if warm else "cold"}
                )
            except CacheError as exc:
                log.warning("cache_unavailable", error=str(exc))
                self.caches = None
        gateway = self.gateway
        if gateway is not None:  # nothing of setup reaches a model
            await gateway.stop()
        await self.egress.start()
        output = bytearray()
        try:
            failure, done = await self._setup_commands_run(commands, output, cache)
        finally:
            await self._stop_leftovers()  # nothing setup started outlives it
            if not self._registries:
                await self.egress.stop()
            if gateway is not None:
                await gateway.start()
        self.timings["setup"] = round(time.monotonic() - started, 3)
        await self.artifact("setup", bytes(output))
        await self._keep_cache(cache, owner)
        self.view.egress_denied = self._denied()
        if failure is not None:
            skipped = len(commands) - done - 1
            after = f"; the {skipped} after it skipped" if skipped > 0 else ""
            note = (
                f"{failure}{after}; the run goes on and the gates tell whether the work holds "
                "(output in the `setup` artifact)"
            )
            self.view.phase("setup", "failed", note)
            await self.events.emit("log", {"stream": "bosun", "line": f"setup: {note}"})
        else:
            self.view.phase("setup", "done", f"{done} command(s) in {self.timings['setup']:.1f}s")
        self.reporter.changed()

    async def _setup_commands_run(
        self, commands: tuple[SetupCommand, ...], output: bytearray, cache: Path
    ) -> tuple[str | None, int]:
        """Each command in turn until one fails; ``(what failed, commands done)``."""
        assert self.sandbox is not None
        running: list[asyncio.Task[ExecResult]] = []

        lines = 0

        async def live(stream: str, line: str) -> None:  # for whoever follows the run
            nonlocal lines
            lines += 1
            if lines <= SETUP_LOG_LINES:
                self.events.buffer("log", {"stream": f"setup:{stream}", "line": line[:2000]})
            elif lines == SETUP_LOG_LINES + 1:
                note = f"[setup output past {SETUP_LOG_LINES} lines: see the `setup` artifact]"
                self.events.buffer("log", {"stream": "bosun", "line": note})

        splitter = LineSplitter(live)

        async def collect(chunk: Any) -> None:
            if len(output) < SETUP_OUTPUT_LIMIT:
                output.extend(chunk.data)
            await splitter(chunk)

        async def too_big(_size: int) -> None:
            for task in running:
                task.cancel()

        deadline = time.monotonic() + min(
            self.settings.egress.setup_timeout_seconds, self.remaining()
        )
        env = {**proxy_env(), **(cache_env() if self.caches is not None else {})}
        assert self.workspace is not None
        quotas = [
            WorkspaceQuota(
                self.workspace.path, self.settings.sandbox.workspace_limit_bytes, too_big
            )
        ]
        if self.caches is not None:
            quotas.append(WorkspaceQuota(cache, self.caches.max_bytes_per_repository, too_big))
        async with contextlib.AsyncExitStack() as stack:
            for quota in quotas:
                await stack.enter_async_context(quota)
            for index, step in enumerate(commands, 1):
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"the setup phase ran out of time before command {index}", index - 1
                output.extend(f"$ {step.label}\n".encode())
                task = asyncio.create_task(
                    self.bosun.backend.exec(
                        self.sandbox,
                        forwarder_argv(list(step.argv)),
                        env=env,
                        workdir="/workspace",
                        timeout=left,
                        on_output=collect,
                    )
                )
                running[:] = [task]
                try:
                    result = await task
                    await splitter.flush()
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    over = next(q for q in quotas if q.exceeded is not None)
                    return (
                        f"command {index} wrote more than {over.limit_bytes} bytes; stopped",
                        index - 1,
                    )
                await self.events.emit(
                    "progress",
                    {
                        "phase": "setup",
                        "command": index,
                        "of": len(commands),
                        "source": step.source,
                        "exit_code": result.exit_code,
                        "timed_out": result.timed_out,
                        "duration_s": round(result.duration, 3),
                    },
                )
                if not result.ok:
                    how = "timed out" if result.timed_out else f"exited {result.exit_code}"
                    if result.oom_killed:
                        how = "ran out of memory"
                    return f"command {index} of {len(commands)} ({step.source}) {how}", index - 1
        return None, len(commands)

    async def _keep_cache(self, cache: Path, owner: tuple[int, int]) -> None:
        """Seal the run's cache copy (read-only from here on) and publish it; then give the
        tools that cannot read a read-only cache (uv) a writable copy of their folder for the
        later phases (``Caches.reopen``: never published)."""
        if self.caches is None:
            return
        caches = self.caches
        t0 = time.monotonic()
        # Setup ran the checkout's code (a build script, a package's install hooks): on a
        # branch not merged to the base (a retry continuing the agent's work), that code is the
        # agent's, and what it left in the cache would reach the repository's later runs.
        workspace = self.workspace
        publish = workspace is not None and workspace.start_sha == workspace.base_sha
        size, evicted = 0, list[str]()
        try:
            await asyncio.to_thread(caches.seal, cache)
            if publish:
                size = await asyncio.to_thread(caches.publish, self.cache_key, cache, self.run.id)
                evicted = await asyncio.to_thread(caches.evict, self.cache_key)
        except (CacheError, OSError) as exc:
            log.warning("cache_not_kept", error=str(exc))
            return
        if not publish:
            await self.events.emit(
                "log",
                {
                    "stream": "bosun",
                    "line": "setup: the dependency cache is kept for this run only: setup ran "
                    "code of a branch not merged to the base",
                },
            )
        self.cache_reopened = True  # watched from here on, even if reopening stops halfway
        try:
            await asyncio.to_thread(caches.reopen, cache, owner)
        except CacheError as exc:  # uv then fails in the later phases, as on a read-only cache
            log.warning("cache_not_reopened", error=str(exc))
        self.timings["cache_keep"] = round(time.monotonic() - t0, 3)
        kept = publish and size <= caches.max_bytes_per_repository
        await self.events.emit(
            "progress",
            {"phase": "setup", "cache_bytes": size, "cache_kept": kept, "caches_evicted": evicted},
            quiet=True,
        )

    def _quotas(self, on_exceeded: OnExceeded) -> list[WorkspaceQuota]:
        """The cache copy's writable folders grow on the host's disk: watched while the agent
        runs, as during setup — the copy as a whole, so together they grow by the limit at
        most (the sealed rest cannot grow)."""
        quotas = super()._quotas(on_exceeded)
        if self.caches is not None and self.cache_reopened:
            quotas.append(
                WorkspaceQuota(
                    self._run_dir() / RUN_FOLDER,
                    self.caches.max_bytes_per_repository,
                    on_exceeded,
                    name=f"the dependency cache ({', '.join(REOPENED_DIRS)})",
                    setting="caches.max_bytes_per_repository",
                )
            )
        return quotas

    async def _run_workflow(self) -> tuple[ExecResult, Phase | None]:
        """The agent's phases, with the egress proxy served when the profile grants it, and
        stopped before the gates whatever happens."""
        if self.egress is None or not self._registries:
            return await super()._run_workflow()
        assert self.sandbox is not None
        self.egress_phase = "agent"
        await self.egress.start()
        serve = asyncio.create_task(
            self.bosun.backend.exec(self.sandbox, forwarder_argv([]), timeout=self.remaining() + 60)
        )
        try:
            await self._forwarder_listening()
            return await super()._run_workflow()
        finally:
            serve.cancel()
            with contextlib.suppress(asyncio.CancelledError, SandboxError):
                await serve
            await self.egress.stop()
            self.view.egress_denied = self._denied()

    async def _forwarder_listening(self) -> None:
        """Wait until the forwarder listens (a few seconds at most), so an agent that connects
        the moment it starts finds the proxy; read from ``/proc/net/tcp``, not by connecting
        (a probe would be a request of its own)."""
        assert self.sandbox is not None
        probe = (
            "import sys, time\n"
            "deadline = time.monotonic() + 5\n"
            "while time.monotonic() < deadline:\n"
            "    rows = [line.split() for line in open('/proc/net/tcp').readlines()[1:]]\n"
            f"    if any(r[1] == '0100007F:{PROXY_PORT:04X}' and r[3] == '0A' for r in rows):\n"
            "        sys.exit(0)\n"
            "    time.sleep(0.02)\n"
            "sys.exit(1)\n"
        )
        result = await self.bosun.backend.exec(self.sandbox, ["python3", "-c", probe], timeout=10)
        if not result.ok:
            log.warning("egress_forwarder_not_listening", exit_code=result.exit_code)

    async def _cleanup_setup(self) -> None:
        if self.egress is not None:
            with contextlib.suppress(Exception):
                await self.egress.stop()


def _regular_files(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are regular files in ``folder`` (a link is not followed)."""
    found = []
    for name in names:
        try:
            if stat.S_ISREG(os.lstat(folder / name).st_mode):
                found.append(name)
        except OSError:
            continue
    return found
