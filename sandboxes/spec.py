"""``SandboxSpec``: everything needed to start one locked-down agent container."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandboxes.seccomp import BUNDLED, check_profile_name

WORKSPACE_MOUNT = "/workspace"
"""Where the run's workspace is mounted inside every sandbox."""

_DOCKER_SOCKETS = ("docker.sock", "containerd.sock", "podman.sock")
_TOKEN_PATTERN = re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^[0-9]+[bkmg]?$", re.IGNORECASE)


class BindMount(BaseModel):
    """An extra host path mounted into the sandbox (for example the model gateway's socket dir)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    source: Path
    """Absolute host path to mount."""
    target: str
    """Absolute path inside the container."""
    read_only: bool = True
    """Mount read-only (the default; the gateway socket dir needs no more)."""

    @field_validator("source")
    @classmethod
    def _source(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"mount source must be absolute: {value}")
        if any(sock in str(value) for sock in _DOCKER_SOCKETS) or str(value) in {"/", "/run"}:
            raise ValueError(f"refusing to mount {value} into a sandbox (engine socket or root)")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts:
            raise ValueError(f"mount target must be an absolute path without '..': {value}")
        if str(path) in {"/", WORKSPACE_MOUNT}:
            raise ValueError(f"mount target {value} is reserved")
        return str(path)


class SandboxSpec(BaseModel):
    """One sandbox. Resource fields share their names with ``SandboxSettings`` so a caller can
    pass ``settings.sandbox.model_dump(include=...)`` straight in."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    """The run this sandbox belongs to (label ``bosun.run_id``; the reaper keys on it)."""
    image: str = Field(min_length=1)
    """Image to run, for example ``bosun-agent:latest``."""
    workspace: Path
    """Host directory bind-mounted read-write at ``/workspace``."""
    user: str = "1000:1000"
    """``uid:gid`` the container's processes run as. Never 0."""
    home: str = "/home/agent"
    """Home directory inside the container (a size-limited tmpfs owned by ``user``)."""
    memory: str = "2g"
    """Memory limit (docker units, e.g. ``512m``); swap is disabled by matching memswap."""
    cpus: float = Field(default=1.0, gt=0, le=64)
    """CPU limit (fractions allowed)."""
    pids: int = Field(default=512, gt=0)
    """Maximum number of processes and threads."""
    tmpfs_size: str = "256m"
    """Size of each of the ``/tmp`` and home tmpfs mounts."""
    timeout_seconds: float = Field(default=1800, gt=0)
    """Default hard deadline for each exec; the exec is killed and reported ``timed_out``."""
    output_limit_bytes: int = Field(default=5_000_000, gt=0)
    """Output kept per exec; the rest is counted, dropped and noted."""
    env: dict[str, str] = Field(default_factory=dict)
    """Plain, non-secret environment for every exec. The host environment is never passed."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra container labels (``bosun.*`` keys are reserved)."""
    mounts: tuple[BindMount, ...] = ()
    """Extra bind mounts, read-only by default."""
    runtime: str | None = None
    """OCI runtime, for example ``runsc`` (gVisor); ``None`` uses the engine default."""
    network: Literal["none"] = "none"
    """Network mode. Always ``none``: the model gateway arrives through a mounted socket."""
    seccomp_profile: str = BUNDLED
    """Syscall filter: ``bosun`` (Bosun's profile, no ``ptrace``), ``default`` (the engine's) or
    an absolute path to a JSON profile. Never ``unconfined``."""

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        match = re.fullmatch(r"([0-9]+):([0-9]+)", value)
        if match is None:
            raise ValueError(f"user must be numeric 'uid:gid', got {value!r}")
        if int(match.group(1)) == 0 or int(match.group(2)) == 0:
            raise ValueError("sandboxes never run as root: uid and gid must not be 0")
        return value

    @field_validator("seccomp_profile")
    @classmethod
    def _seccomp(cls, value: str) -> str:
        return check_profile_name(value)

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"workspace must be an absolute host path: {value}")
        return value

    @field_validator("memory", "tmpfs_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _SIZE.match(value):
            raise ValueError(f"size must look like 512m or 2g, got {value!r}")
        return value.lower()

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
            if _TOKEN_PATTERN.search(text):
                raise ValueError(f"env {name} holds what looks like a GitHub token; never pass one")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = [key for key in value if key.startswith("bosun.")]
        if reserved:
            raise ValueError(f"labels {reserved} use the reserved 'bosun.' prefix")
        return value

    @model_validator(mode="after")
    def _home(self) -> SandboxSpec:
        home = PurePosixPath(self.home)
        if not home.is_absolute() or str(home) in {"/", "/tmp", WORKSPACE_MOUNT}:  # noqa: S108
            raise ValueError(f"home must be an absolute dedicated path, got {self.home!r}")
        return self

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1])
