"""Run artifacts: files under ``<data_dir>/artifacts/<run_id>/``, a row each, and an
``artifact`` event that references them (SPEC §4.3)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Artifact
from bot.runs import append_event

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def artifact_filename(name: str) -> str:
    """``gate:unit tests`` → ``gate_unit_tests``: a safe file name for an artifact name."""
    return _SAFE.sub("_", name).strip("._") or "artifact"


async def store_artifact(
    session: AsyncSession,
    root: Path,
    run_id: str,
    name: str,
    content: bytes | str,
    *,
    content_type: str = "text/plain; charset=utf-8",
    suffix: str = "",
) -> Artifact:
    """Write (or overwrite) artifact ``name`` of ``run_id`` and record it."""
    data = content.encode() if isinstance(content, str) else content
    folder = root / run_id
    path = folder / f"{artifact_filename(name)}{suffix}"

    def _write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    await asyncio.to_thread(_write)
    digest = hashlib.sha256(data).hexdigest()
    existing = (
        await session.execute(
            select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name)
        )
    ).scalar_one_or_none()
    if existing is None:
        existing = Artifact(run_id=run_id, name=name, path=str(path))
        session.add(existing)
    existing.path, existing.size, existing.sha256 = str(path), len(data), digest
    existing.content_type = content_type
    await session.flush()
    await append_event(
        session,
        run_id,
        "artifact",
        {"name": name, "size": len(data), "sha256": digest, "content_type": content_type},
    )
    return existing


async def list_artifacts(session: AsyncSession, run_id: str) -> list[Artifact]:
    rows = await session.execute(
        select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id)
    )
    return list(rows.scalars())
