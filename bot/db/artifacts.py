"""Run artifacts (SPEC §4.3): a row each, an ``artifact`` event that references it, and the
bytes in an ``ArtifactStore``.

Two backends, chosen by ``settings.artifacts.backend``:

- ``FileArtifacts`` (default): files under ``<data_dir>/artifacts/<run_id>/`` on the host that
  wrote them — one host, or a volume every process mounts.
- ``DatabaseArtifacts``: ``artifact_chunks`` rows (256 KiB each), so web processes and workers
  on different hosts share nothing but the database and Redis.

Each row says where its bytes are (``Artifact.storage``), so artifacts written before the
backend changed stay readable. Reads stream (``artifact_chunks``) or load whole
(``read_artifact``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.engine import SessionFactory
from bot.db.models import Artifact, ArtifactChunk
from bot.db.runlog import append_event
from bot.errors import NotFoundError
from bot.settings import Settings

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
CHUNK = 256 * 1024
FILE, DATABASE = "file", "database"


def artifact_filename(name: str) -> str:
    """``gate:unit tests`` → ``gate_unit_tests``: a safe file name for an artifact name."""
    return _SAFE.sub("_", name).strip("._") or "artifact"


class ArtifactStore(Protocol):
    """Where artifact bytes go. ``put`` fills in ``artifact``'s location fields and returns
    the bytes it kept (a backend may cut them)."""

    storage: str

    async def put(self, session: AsyncSession, artifact: Artifact, data: bytes) -> bytes: ...


class FileArtifacts:
    storage = FILE

    def __init__(self, root: Path) -> None:
        self.root = root

    async def put(self, session: AsyncSession, artifact: Artifact, data: bytes) -> bytes:
        folder = self.root / artifact.run_id
        path = folder / artifact_filename(artifact.name)

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
        artifact.path = str(path)
        return data


class DatabaseArtifacts:
    storage = DATABASE

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def put(self, session: AsyncSession, artifact: Artifact, data: bytes) -> bytes:
        kept = data[: self.max_bytes]
        await session.execute(delete(ArtifactChunk).where(ArtifactChunk.artifact_id == artifact.id))
        for seq, start in enumerate(range(0, len(kept), CHUNK)):
            session.add(
                ArtifactChunk(artifact_id=artifact.id, seq=seq, data=kept[start : start + CHUNK])
            )
        artifact.path = ""
        return kept


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` choose."""
    if settings.artifacts.backend == "database":
        return DatabaseArtifacts(settings.artifacts.max_database_bytes)
    return FileArtifacts(settings.artifacts_dir)


async def store_artifact(
    session: AsyncSession,
    store: ArtifactStore,
    run_id: str,
    name: str,
    content: bytes | str,
    *,
    content_type: str = "text/plain; charset=utf-8",
) -> Artifact:
    """Write (or overwrite) artifact ``name`` of ``run_id`` and record it."""
    data = content.encode() if isinstance(content, str) else content
    existing = (
        await session.execute(
            select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name)
        )
    ).scalar_one_or_none()
    if existing is None:
        existing = Artifact(run_id=run_id, name=name, path="")
        session.add(existing)
        await session.flush()  # its id, for the chunks
    elif existing.storage == DATABASE and store.storage != DATABASE:
        await session.execute(delete(ArtifactChunk).where(ArtifactChunk.artifact_id == existing.id))
    kept = await store.put(session, existing, data)
    digest = hashlib.sha256(kept).hexdigest()
    existing.storage, existing.size, existing.sha256 = store.storage, len(kept), digest
    existing.content_type = content_type
    await session.flush()
    event = {"name": name, "size": len(kept), "sha256": digest, "content_type": content_type}
    if len(kept) < len(data):
        event |= {"truncated": True, "original_size": len(data)}
    await append_event(session, run_id, "artifact", event)
    return existing


async def list_artifacts(session: AsyncSession, run_id: str) -> list[Artifact]:
    rows = await session.execute(
        select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id)
    )
    return list(rows.scalars())


async def get_artifact(session: AsyncSession, run_id: str, name: str) -> Artifact:
    found = (
        await session.execute(
            select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name)
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"run {run_id} has no artifact {name!r}")
    return found


class ArtifactUnavailable(NotFoundError):
    """The artifact's bytes are not reachable from this process (a file on another host)."""


async def artifact_chunks(sessions: SessionFactory, artifact: Artifact) -> AsyncIterator[bytes]:
    """The artifact's bytes, a piece at a time (one short query per 16 chunks, so a slow
    reader holds no transaction open)."""
    if artifact.storage == DATABASE:
        seq = 0
        while True:
            async with sessions() as session:
                rows = await session.execute(
                    select(ArtifactChunk.data)
                    .where(ArtifactChunk.artifact_id == artifact.id, ArtifactChunk.seq >= seq)
                    .order_by(ArtifactChunk.seq)
                    .limit(16)
                )
                batch = list(rows.scalars())
            for piece in batch:
                yield piece
            if len(batch) < 16:
                return
            seq += len(batch)
    path = Path(artifact.path)
    try:
        handle = await asyncio.to_thread(path.open, "rb")
    except OSError as exc:
        raise _unavailable(artifact) from exc
    try:
        while piece := await asyncio.to_thread(handle.read, CHUNK):
            yield piece
    finally:
        handle.close()


async def read_artifact(session: AsyncSession, artifact: Artifact) -> bytes:
    """The artifact's bytes, whole, read within ``session``. Raises ``ArtifactUnavailable``."""
    if artifact.storage == DATABASE:
        rows = await session.execute(
            select(ArtifactChunk.data)
            .where(ArtifactChunk.artifact_id == artifact.id)
            .order_by(ArtifactChunk.seq)
        )
        return b"".join(rows.scalars())
    try:
        return await asyncio.to_thread(Path(artifact.path).read_bytes)
    except OSError as exc:
        raise _unavailable(artifact) from exc


async def read_named(session: AsyncSession, run_id: str, name: str) -> bytes | None:
    """Artifact ``name`` of ``run_id``, whole, or ``None`` when it is absent or unreadable."""
    try:
        return await read_artifact(session, await get_artifact(session, run_id, name))
    except NotFoundError:
        return None


def _unavailable(artifact: Artifact) -> ArtifactUnavailable:
    return ArtifactUnavailable(
        f"artifact {artifact.name!r} of run {artifact.run_id} is a file on the worker that "
        f"wrote it ({artifact.path}) and cannot be read here; set "
        "BOSUN_ARTIFACTS__BACKEND=database to share artifacts between hosts"
    )
