"""Seccomp profiles for sandboxes.

``sandbox.json`` is Bosun's own profile (see ``README.md`` here): Docker's default allow-list as
it applies to a container without capabilities, minus the calls that let one process read or
steer another (``ptrace``, ``process_vm_readv``, ``process_vm_writev``) and minus ``io_uring``.

A sandbox names its profile with ``seccomp_profile``: ``bosun`` (this file, the default),
``default`` (the engine's own default profile) or an absolute path to a JSON profile on the
worker host. ``unconfined`` is refused.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from sandboxes.errors import SandboxStartError

BUNDLED = "bosun"
"""The profile shipped with Bosun: ``sandboxes/seccomp/sandbox.json``."""
ENGINE_DEFAULT = "default"
"""The engine's built-in default profile (allows ``ptrace`` on kernels >= 4.8)."""
BUNDLED_PATH = Path(__file__).with_name("sandbox.json")


def check_profile_name(value: str) -> str:
    """``value`` if it names a usable profile; raises ``ValueError`` otherwise."""
    if value in {BUNDLED, ENGINE_DEFAULT}:
        return value
    if value.strip().lower() == "unconfined":
        raise ValueError("seccomp_profile 'unconfined' would turn the syscall filter off; refused")
    if not Path(value).is_absolute():
        raise ValueError(
            f"seccomp_profile must be 'bosun', 'default' or an absolute path, got {value!r}"
        )
    return value


@functools.lru_cache(maxsize=8)
def _read(path: Path, mtime_ns: int) -> str:
    try:
        text = path.read_text()
        profile = json.loads(text)
    except (OSError, ValueError) as exc:
        raise SandboxStartError(f"cannot use seccomp profile {path}: {exc}") from exc
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise SandboxStartError(f"seccomp profile {path} has no defaultAction; is it a profile?")
    if profile["defaultAction"] == "SCMP_ACT_ALLOW" and not profile.get("syscalls"):
        raise SandboxStartError(f"seccomp profile {path} allows everything; refused")
    return json.dumps(profile, separators=(",", ":"))


def profile_json(name: str) -> str | None:
    """The profile's JSON text for the engine (``seccomp=<json>``); ``None`` for the engine's
    default. Raises ``SandboxStartError`` if a custom profile cannot be read."""
    if check_profile_name(name) == ENGINE_DEFAULT:
        return None
    path = BUNDLED_PATH if name == BUNDLED else Path(name)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise SandboxStartError(f"cannot use seccomp profile {path}: {exc}") from exc
    return _read(path, mtime)
