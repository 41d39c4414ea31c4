"""The Docker backend (docker-py). Every blocking engine call runs in a thread.

A sandbox is a long-lived container whose main process is ``sleep infinity`` under the engine's
init (``init=True``); the agent and then the gates run in it as execs, so gates see exactly the
tree the agent left. See ``docs/sandboxes.md`` for why each hardening flag is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount
from pydantic import BaseModel, ConfigDict

from sandboxes.base import (
    LABEL_CREATED,
    LABEL_MANAGED,
    LABEL_RUN_ID,
    ExecResult,
    LiveRuns,
    Sandbox,
    SandboxBackend,
    SandboxInfo,
    SandboxStatus,
    is_live,
    owner_run,
)
from sandboxes.docker_exec import KILL_SCRIPT, PID_MARKER, FrameStream, wrap
from sandboxes.errors import (
    CopyError,
    EngineUnavailable,
    ImageNotFound,
    SandboxError,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxStartError,
)
from sandboxes.output import OnOutput, OutputCollector
from sandboxes.seccomp import profile_json
from sandboxes.spec import WORKSPACE_MOUNT, SandboxSpec
from sandboxes.userns import DEFAULT_REMAP_USER, host_ids

T = TypeVar("T")

USERNS_CACHE_SECONDS = 60.0
"""How long the engine's user-namespace answer (one ``docker info``) is reused."""

_OOM_SCRIPT = (
    "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; true"
)


def _runtime_hint(spec: SandboxSpec, exc: Exception) -> str:
    if spec.runtime and "runtime" in str(exc).lower():
        return f" (is the '{spec.runtime}' runtime registered with dockerd? see docs/security.md)"
    return ""


class DockerConfig(BaseModel):
    """How the Docker backend reaches and treats its engine."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    docker_host: str | None = None
    """Engine URL (``unix:///var/run/docker.sock``, ``tcp://…``); ``None`` reads ``DOCKER_HOST``."""
    api_timeout: float = 60.0
    """Seconds before an engine API call is abandoned."""
    kill_grace: float = 2.0
    """Seconds a killed exec gets to end its output stream before the connection is cut."""
    remap_user: str = DEFAULT_REMAP_USER
    """The engine's ``userns-remap`` user, looked up in ``/etc/subuid`` and ``/etc/subgid``."""


class DockerBackend(SandboxBackend):
    """Sandboxes as hardened Docker containers."""

    def __init__(self, config: DockerConfig | None = None) -> None:
        self.config = config or DockerConfig()
        self._client: docker.DockerClient | None = None
        self._oom_seen: dict[str, int] = {}
        self._stopping: set[str] = set()
        self._userns: tuple[bool, float] | None = None

    # -- plumbing -------------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                if self.config.docker_host:
                    self._client = docker.DockerClient(
                        base_url=self.config.docker_host, timeout=int(self.config.api_timeout)
                    )
                else:
                    self._client = docker.from_env(timeout=int(self.config.api_timeout))
            except docker.errors.DockerException as exc:
                raise self._unreachable(exc) from exc
        return self._client

    def _unreachable(self, exc: BaseException) -> EngineUnavailable:
        self._userns = None  # it may come back with another configuration
        where = self.config.docker_host or "DOCKER_HOST (default unix:///var/run/docker.sock)"
        return EngineUnavailable(
            f"cannot reach the Docker engine at {where}: {exc}. Is dockerd running? "
            "Set DOCKER_HOST or sandbox.docker_host to point at it."
        )

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            raise self._unreachable(exc) from exc
        except docker.errors.DockerException as exc:
            if "Error while fetching server API version" in str(exc):
                raise self._unreachable(exc) from exc
            raise

    async def userns_remapped(self) -> bool:
        """Whether the engine runs containers in a remapped user namespace. The answer is kept
        for ``USERNS_CACHE_SECONDS`` (it only changes when dockerd restarts with another
        configuration), and asked again after the engine was unreachable."""
        cached = self._userns
        if cached is not None and time.monotonic() - cached[1] < USERNS_CACHE_SECONDS:
            return cached[0]
        info: dict[str, Any] = await self._call(self.client.info)
        remapped = any("name=userns" in option for option in info.get("SecurityOptions") or [])
        self._userns = (remapped, time.monotonic())
        return remapped

    async def host_ids(self, spec: SandboxSpec) -> tuple[int, int]:
        """Host ``(uid, gid)`` that owns files the sandbox user writes: chown the workspace to
        this before starting the sandbox."""
        remapped = await self.userns_remapped()
        return host_ids(spec.uid, spec.gid, remapped=remapped, remap_user=self.config.remap_user)

    # -- lifecycle ------------------------------------------------------------------------
    def create_kwargs(self, spec: SandboxSpec, name: str) -> dict[str, Any]:
        """The ``containers.create`` arguments for ``spec``: every hardening flag in one place."""
        tmpfs_opts = f"rw,nosuid,nodev,size={spec.tmpfs_size}"
        mounts = [Mount(WORKSPACE_MOUNT, str(spec.workspace), type="bind", read_only=False)]
        mounts += [
            Mount(m.target, str(m.source), type="bind", read_only=m.read_only) for m in spec.mounts
        ]
        security_opt = ["no-new-privileges:true"]
        seccomp = profile_json(spec.seccomp_profile)
        if seccomp is not None:
            security_opt.append(f"seccomp={seccomp}")
        return {
            "image": spec.image,
            "command": ["sleep", "infinity"],
            "name": name,
            "hostname": "sandbox",
            "user": spec.user,
            "environment": {"HOME": spec.home, **spec.env},
            "working_dir": WORKSPACE_MOUNT,
            "labels": {
                **spec.labels,
                LABEL_MANAGED: "true",
                LABEL_RUN_ID: spec.run_id,
                LABEL_CREATED: str(int(time.time())),
            },
            "init": True,
            "cap_drop": ["ALL"],
            "security_opt": security_opt,
            "read_only": True,
            "tmpfs": {
                # exec: Docker mounts a tmpfs noexec unless told, and test runners build and
                # run binaries there (`go test`); /workspace is executable anyway
                "/tmp": f"{tmpfs_opts},exec,mode=1777",  # noqa: S108 - a private tmpfs
                spec.home: f"{tmpfs_opts},uid={spec.uid},gid={spec.gid},mode=0700",
            },
            "mounts": mounts,
            "mem_limit": spec.memory,
            "memswap_limit": spec.memory,
            "nano_cpus": int(spec.cpus * 1_000_000_000),
            "pids_limit": spec.pids,
            "network_mode": spec.network,
            "ipc_mode": "private",
            "runtime": spec.runtime,
            "detach": True,
        }

    async def create(self, spec: SandboxSpec) -> Sandbox:
        name = f"bosun-{spec.run_id}-{secrets.token_hex(3)}"
        if not spec.workspace.is_dir():
            raise SandboxStartError(f"workspace {spec.workspace} does not exist on this host")
        try:
            container = await self._call(
                self.client.containers.create, **self.create_kwargs(spec, name)
            )
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(
                f"image {spec.image} not found: build it with sandboxes/images/build.sh "
                "(or docker pull/load it on this worker host)"
            ) from exc
        except docker.errors.APIError as exc:
            raise SandboxStartError(
                f"cannot create sandbox for run {spec.run_id}: {exc}{_runtime_hint(spec, exc)}"
            ) from exc
        return Sandbox(id=container.id, name=name, spec=spec)

    async def start(self, sandbox: Sandbox) -> None:
        try:
            await self._call(self.client.api.start, sandbox.id)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(f"sandbox {sandbox.name} is gone") from exc
        except docker.errors.APIError as exc:
            hint = _runtime_hint(sandbox.spec, exc)
            raise SandboxStartError(f"cannot start sandbox {sandbox.name}: {exc}{hint}") from exc
        self._oom_seen[sandbox.id] = 0
        self._stopping.discard(sandbox.id)

    async def stop(self, sandbox: Sandbox, timeout: float = 2.0) -> None:
        self._stopping.add(sandbox.id)
        try:
            await self._call(self.client.api.stop, sandbox.id, timeout=max(0, round(timeout)))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot stop sandbox {sandbox.name}: {exc}") from exc

    async def remove(self, sandbox: Sandbox) -> None:
        self._oom_seen.pop(sandbox.id, None)
        self._stopping.add(sandbox.id)
        try:
            await self._call(self.client.api.remove_container, sandbox.id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc):
                return
            raise SandboxError(f"cannot remove sandbox {sandbox.name}: {exc}") from exc
        finally:
            self._stopping.discard(sandbox.id)

    async def inspect(self, sandbox: Sandbox) -> SandboxInfo:
        try:
            data = await self._call(self.client.api.inspect_container, sandbox.id)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(f"sandbox {sandbox.name} is gone") from exc
        state = data.get("State") or {}
        labels = (data.get("Config") or {}).get("Labels") or {}
        try:
            status = SandboxStatus(state.get("Status", "unknown"))
        except ValueError:
            status = SandboxStatus.UNKNOWN
        created = data.get("Created")
        return SandboxInfo(
            id=data["Id"],
            name=data.get("Name", "").lstrip("/"),
            status=status,
            run_id=owner_run(labels, data.get("Name", "")),
            created=datetime.fromisoformat(created[:26].rstrip("Z")) if created else None,
            exit_code=state.get("ExitCode") if status == SandboxStatus.EXITED else None,
            oom_killed=bool(state.get("OOMKilled")),
            labels=labels,
        )

    async def reap(self, live: LiveRuns, *, max_age: float | None = None) -> list[str]:
        found: list[dict[str, Any]] = await self._call(
            self.client.api.containers, all=True, filters={"label": f"{LABEL_MANAGED}=true"}
        )
        now = time.time()
        removed: list[str] = []
        for entry in found:
            labels = entry.get("Labels") or {}
            if is_live(live, owner_run(labels, _name(entry))):
                continue
            created = float(labels.get(LABEL_CREATED) or entry.get("Created") or 0)
            if max_age is not None and now - created < max_age:
                continue
            try:
                await self._call(self.client.api.remove_container, entry["Id"], force=True, v=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if "already in progress" in str(exc):  # another reaper or the run's own cleanup
                    continue
                raise
            removed.append(entry["Id"])
        return removed

    async def remove_run(self, run_id: str) -> list[str]:
        found: list[dict[str, Any]] = await self._call(
            self.client.api.containers,
            all=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_RUN_ID}={run_id}"]},
        )
        pooled: list[dict[str, Any]] = await self._call(  # claimed from a warm pool
            self.client.api.containers,
            all=True,
            filters={"label": f"{LABEL_MANAGED}=true", "name": f"bosun-{run_id}-"},
        )
        found += [
            entry
            for entry in pooled
            if owner_run(entry.get("Labels") or {}, _name(entry)) == run_id
            and entry["Id"] not in {e["Id"] for e in found}
        ]
        removed = []
        for entry in found:
            with contextlib.suppress(docker.errors.NotFound):
                await self._call(self.client.api.remove_container, entry["Id"], force=True, v=True)
                removed.append(entry["Id"])
        return removed

    async def adopt(self, sandbox: Sandbox, spec: SandboxSpec) -> Sandbox:
        """Check the pooled container still runs, then rename it ``bosun-<run_id>-<hex>`` so
        the reaper and ``remove_run`` know its run (labels cannot change after creation)."""
        try:
            data = await self._call(self.client.api.inspect_container, sandbox.id)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(f"pooled sandbox {sandbox.name} is gone") from exc
        if not (data.get("State") or {}).get("Running"):
            raise SandboxNotRunning(f"pooled sandbox {sandbox.name} is not running")
        name = f"bosun-{spec.run_id}-{secrets.token_hex(3)}"
        try:
            await self._call(self.client.api.rename, sandbox.id, name)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(f"pooled sandbox {sandbox.name} is gone") from exc
        except docker.errors.APIError as exc:
            raise SandboxStartError(
                f"cannot hand {sandbox.name} to run {spec.run_id}: {exc}"
            ) from exc
        self._oom_seen[sandbox.id] = 0
        self._stopping.discard(sandbox.id)
        return Sandbox(id=sandbox.id, name=name, spec=spec)

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    # -- commands -------------------------------------------------------------------------
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
        spec = sandbox.spec
        argv = [str(arg) for arg in argv]
        if not argv:
            raise SandboxError("exec needs a non-empty argv")
        deadline_s = timeout if timeout is not None else spec.timeout_seconds
        collector = OutputCollector(output_limit or spec.output_limit_bytes, on_output)
        exec_id, stream = await self._open_exec(sandbox, argv, env, workdir)
        started = time.monotonic()
        deadline = started + deadline_s
        pid: int | None = None
        head = b""  # stderr until the wrapper's pid line has been seen
        timed_out = cancelled = False
        try:
            while True:
                now = time.monotonic()
                try:
                    frame = await stream.next_frame(max(0.0, deadline - now))
                except TimeoutError:
                    if timed_out:  # the kill grace ran out too: cut the connection
                        stream.shutdown()
                        deadline = float("inf")
                        continue
                    timed_out = True
                    await self._kill(sandbox, pid)
                    deadline = time.monotonic() + self.config.kill_grace
                    continue
                if frame is None:
                    break
                kind, data = frame
                if kind == "stderr" and pid is None:
                    head += data
                    if b"\n" not in head and len(head) < 64:
                        continue
                    line, _, data = head.partition(b"\n")
                    if line.startswith(PID_MARKER) and line[len(PID_MARKER) :].isdigit():
                        pid = int(line[len(PID_MARKER) :])
                    else:
                        data = head
                    head = b""
                    pid = pid or -1
                await collector.feed(kind, data)
        except asyncio.CancelledError:
            cancelled = True
            await asyncio.shield(self._kill(sandbox, pid))
            stream.abandon()
            raise
        if head:
            await collector.feed("stderr", head)
        exit_code = await self._exit_code(exec_id)
        if exit_code is None and not timed_out:
            # The exec's end was never seen: its container (stop/remove) or the engine went away.
            cancelled = True
        oom = False
        if exit_code == 137 and not (timed_out or cancelled):
            if sandbox.id in self._stopping or await self._stopped(sandbox):
                cancelled = True
            else:
                oom = await self._oom_happened(sandbox)
        return ExecResult(
            argv=tuple(argv),
            exit_code=exit_code,
            duration=time.monotonic() - started,
            chunks=tuple(collector.chunks),
            truncated_bytes=collector.truncated_bytes,
            timed_out=timed_out,
            oom_killed=oom,
            cancelled=cancelled,
        )

    async def _open_exec(
        self,
        sandbox: Sandbox,
        argv: list[str],
        env: Mapping[str, str] | None,
        workdir: str | None,
    ) -> tuple[str, FrameStream]:
        api = self.client.api
        environment = {"HOME": sandbox.spec.home, **sandbox.spec.env, **(env or {})}
        try:
            created = await self._call(
                api.exec_create,
                sandbox.id,
                wrap(argv),
                stdout=True,
                stderr=True,
                stdin=False,
                tty=False,
                user=sandbox.spec.user,
                environment=environment,
                workdir=workdir or WORKSPACE_MOUNT,
            )
            sock = await self._call(api.exec_start, created["Id"], socket=True)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(f"sandbox {sandbox.name} is gone") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise SandboxNotRunning(f"sandbox {sandbox.name} is not running: {exc}") from exc
            raise SandboxError(f"cannot exec in sandbox {sandbox.name}: {exc}") from exc
        return created["Id"], FrameStream(sock, asyncio.get_running_loop())

    async def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(40):
            try:
                info = await self._call(self.client.api.exec_inspect, exec_id)
            except (docker.errors.APIError, EngineUnavailable):
                return None
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            await asyncio.sleep(0.05)
        return None

    async def _kill(self, sandbox: Sandbox, pid: int | None) -> None:
        """Kill an exec's process group; when its pid is unknown, stop the whole sandbox."""
        if pid is None or pid <= 1:
            await self.stop(sandbox, timeout=0)
            return
        try:
            await self._run_quiet(sandbox, ["/bin/sh", "-c", KILL_SCRIPT, "bosun-kill", str(pid)])
        except SandboxError:
            await self.stop(sandbox, timeout=0)

    async def _run_quiet(self, sandbox: Sandbox, cmd: list[str]) -> bytes:
        api = self.client.api
        try:
            created = await self._call(
                api.exec_create, sandbox.id, cmd, user=sandbox.spec.user, stdout=True, stderr=True
            )
            output: bytes = await self._call(api.exec_start, created["Id"])
        except docker.errors.APIError as exc:
            raise SandboxError(f"exec in {sandbox.name} failed: {exc}") from exc
        return output

    async def _oom_happened(self, sandbox: Sandbox) -> bool:
        try:
            text = (await self._run_quiet(sandbox, ["/bin/sh", "-c", _OOM_SCRIPT])).decode()
        except SandboxError:  # the sandbox went away meanwhile: it was stopped, not OOM-killed
            return False
        kills = 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                kills = max(kills, int(value))
        seen = self._oom_seen.get(sandbox.id, 0)
        self._oom_seen[sandbox.id] = kills
        return kills > seen

    async def _stopped(self, sandbox: Sandbox) -> bool:
        try:
            return (await self.inspect(sandbox)).status != SandboxStatus.RUNNING
        except (SandboxNotFound, EngineUnavailable):
            return True

    # -- files ----------------------------------------------------------------------------
    async def copy_in(self, sandbox: Sandbox, source: Path, dest_dir: str) -> None:
        spec = sandbox.spec

        def build() -> bytes:
            def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
                info.uid, info.gid, info.uname, info.gname = spec.uid, spec.gid, "", ""
                return info

            if not source.exists():
                raise CopyError(f"{source} does not exist")
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                tar.add(source, arcname=source.name, filter=owned)
            return buffer.getvalue()

        data = await asyncio.to_thread(build)
        try:
            await self._call(self.client.api.put_archive, sandbox.id, dest_dir, data)
        except docker.errors.NotFound as exc:
            raise CopyError(f"{dest_dir} does not exist in sandbox {sandbox.name}") from exc
        except docker.errors.APIError as exc:
            raise CopyError(
                f"cannot copy {source} into {sandbox.name}:{dest_dir}: {exc} "
                f"(only {WORKSPACE_MOUNT} and other bind mounts are writable)"
            ) from exc

    async def copy_out(self, sandbox: Sandbox, path: str, dest_dir: Path) -> Path:
        def fetch() -> Path:
            try:
                chunks, _stat = self.client.api.get_archive(sandbox.id, path)
            except docker.errors.NotFound as exc:
                raise CopyError(f"{path} does not exist in sandbox {sandbox.name}") from exc
            dest_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile() as spool:
                for chunk in chunks:
                    spool.write(chunk)
                spool.seek(0)
                with tarfile.open(fileobj=spool, mode="r") as tar:
                    try:
                        tar.extractall(dest_dir, filter="data")
                    except tarfile.FilterError as exc:
                        raise CopyError(
                            f"refusing unsafe archive member from {path}: {exc}"
                        ) from exc
            return dest_dir / PurePosixPath(path).name

        try:
            return await self._call(fetch)
        except docker.errors.APIError as exc:
            raise CopyError(f"cannot copy {sandbox.name}:{path}: {exc}") from exc


def _name(entry: Mapping[str, Any]) -> str:
    """A container listing entry's name (``Names`` holds ``/name``)."""
    names = entry.get("Names") or [""]
    return str(names[0]).lstrip("/")
