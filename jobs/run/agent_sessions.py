"""Agent sessions across runs (SPEC §4.2): ``/resume`` continues the agent's conversation where
the runner supports it, not only its branch.

A runner keeps its sessions under the sandbox's home, a tmpfs that vanishes with the sandbox.
After the agent, while the sandbox still runs, a ``tar`` *inside* the sandbox packs the
runner's session folders to standard output; Bosun keeps the bytes as the run's ``session``
artifact and the session id in ``session.json``. A run continuing a timed-out parent puts the
archive in its read-only input folder and unpacks it, again inside its own sandbox, into the
home before the agent starts; the runner then gets the session id.

The archive is written by the agent's sandbox, so it is untrusted: the host only stores and
copies its bytes and never unpacks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.artifacts import read_named
from bot.db.models import Run
from bot.domain.states import RunState
from sandboxes.base import Sandbox, SandboxBackend

ARCHIVE = "session"
META = "session.json"
MAX_ARCHIVE_BYTES = 32 * 1024 * 1024
RESUMABLE = frozenset({RunState.TIMED_OUT})
"""Parents whose agent session a follow-up run continues: the agent was stopped mid-task."""

_PACK = 'cd "$HOME" || exit 1; exec tar -czf - --ignore-failed-read -- "$@"'
_UNPACK = 'exec tar -xzf "$1" -C "$HOME"'


@dataclass(frozen=True)
class SavedSession:
    runner: str
    session_id: str
    archive: bytes


async def pack(backend: SandboxBackend, sandbox: Sandbox, dirs: tuple[str, ...]) -> bytes | None:
    """The runner's session folders as a gzipped tar, or ``None`` if they cannot be packed
    whole (missing ``tar``, or larger than ``MAX_ARCHIVE_BYTES``)."""
    result = await backend.exec(
        sandbox,
        ["/bin/sh", "-c", _PACK, "bosun-session", *dirs],
        timeout=60,
        output_limit=MAX_ARCHIVE_BYTES,
    )
    if not result.ok or result.truncated:
        return None
    return result.stdout


async def unpack(backend: SandboxBackend, sandbox: Sandbox, archive_path: str) -> bool:
    """Unpack the archive at ``archive_path`` (inside the sandbox) into the sandbox's home."""
    result = await backend.exec(
        sandbox, ["/bin/sh", "-c", _UNPACK, "bosun-unpack", archive_path], timeout=60
    )
    return result.ok


def metadata(runner: str, session_id: str) -> str:
    return json.dumps({"runner": runner, "session_id": session_id})


async def parent_session(session: AsyncSession, run: Run, runner: str) -> SavedSession | None:
    """The session a follow-up of ``run``'s parent continues, when the parent was stopped
    mid-task and kept a session of the same runner."""
    if run.parent_run_id is None:
        return None
    parent = await session.get(Run, run.parent_run_id)
    if parent is None or parent.state not in RESUMABLE:
        return None
    raw_meta = await read_named(session, parent.id, META)
    archive = await read_named(session, parent.id, ARCHIVE)
    if raw_meta is None or archive is None:
        return None
    try:
        meta = json.loads(raw_meta)
    except ValueError:
        return None
    if meta.get("runner") != runner or not meta.get("session_id"):
        return None
    return SavedSession(runner, str(meta["session_id"]), archive)


__all__ = ["ARCHIVE", "META", "SavedSession", "metadata", "pack", "parent_session", "unpack"]
