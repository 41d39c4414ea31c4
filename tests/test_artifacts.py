"""The artifact store on both databases: the filesystem and database backends keep the bytes
exactly, stream them in pieces, cut an oversized artifact (and say so), and a row written by
one backend stays readable after the backend changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select, text

from bot.db.artifacts import (
    CHUNK,
    ArtifactUnavailable,
    DatabaseArtifacts,
    FileArtifacts,
    artifact_chunks,
    get_artifact,
    read_artifact,
    read_named,
    store_artifact,
)
from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade
from bot.db.models import Repository, Run, RunEvent, Task
from bot.db.runlog import new_run_id
from bot.domain.states import RunState


async def _run(sessions) -> str:  # type: ignore[no-untyped-def]
    async with sessions.begin() as session:
        repo = Repository(full_name="octo/hello", default_branch="main")
        session.add(repo)
        await session.flush()
        task = Task(repository_id=repo.id, title="t")
        session.add(task)
        await session.flush()
        run = Run(
            id=new_run_id(), task_id=task.id, repository_id=repo.id, state=RunState.QUEUED,
            profile="default",
        )  # fmt: skip
        session.add(run)
        return run.id


@pytest.mark.postgres
async def test_both_backends_keep_the_bytes_and_stream_them(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    try:
        run_id = await _run(sessions)
        blob = os.urandom(3 * CHUNK + 123)
        async with sessions.begin() as session:
            await store_artifact(session, DatabaseArtifacts(10_000_000), run_id, "session", blob)
            await store_artifact(session, FileArtifacts(tmp_path), run_id, "diff", "+x\n")
        async with sessions() as session:
            kept = await get_artifact(session, run_id, "session")
            assert kept.storage == "database" and kept.size == len(blob) and kept.path == ""
            assert await read_artifact(session, kept) == blob
            assert await read_named(session, run_id, "diff") == b"+x\n"
            assert await read_named(session, run_id, "absent") is None
        pieces = [piece async for piece in artifact_chunks(sessions, kept)]
        assert len(pieces) == 4 and b"".join(pieces) == blob

        # The backend changes: the same name is overwritten in the other store, no chunk left.
        async with sessions.begin() as session:
            await store_artifact(session, FileArtifacts(tmp_path), run_id, "session", b"small")
        async with sessions() as session:
            moved = await get_artifact(session, run_id, "session")
            assert moved.storage == "file" and await read_artifact(session, moved) == b"small"
            chunks = await session.execute(text("SELECT count(*) FROM artifact_chunks"))
            assert chunks.scalar_one() == 0
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_an_oversized_artifact_is_cut_and_says_so(db_url: str) -> None:
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    try:
        run_id = await _run(sessions)
        async with sessions.begin() as session:
            await store_artifact(
                session, DatabaseArtifacts(1000), run_id, "transcript", b"y" * 5000
            )
        async with sessions() as session:
            kept = await get_artifact(session, run_id, "transcript")
            assert kept.size == 1000 and await read_artifact(session, kept) == b"y" * 1000
            events = (
                await session.execute(select(RunEvent).where(RunEvent.kind == "artifact"))
            ).scalars()
            (event,) = [e.data for e in events]
            assert event["truncated"] is True and event["original_size"] == 5000
    finally:
        await engine.dispose()


async def test_a_file_on_another_host_is_named_as_such(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    await upgrade(engine)
    sessions = session_factory(engine)
    try:
        run_id = await _run(sessions)
        async with sessions.begin() as session:
            await store_artifact(session, FileArtifacts(tmp_path / "a"), run_id, "diff", "d")
        (tmp_path / "a" / run_id / "diff").unlink()  # as seen from a web process elsewhere
        async with sessions() as session:
            row = await get_artifact(session, run_id, "diff")
            with pytest.raises(ArtifactUnavailable) as failure:
                await read_artifact(session, row)
        assert "BOSUN_ARTIFACTS__BACKEND=database" in str(failure.value)
    finally:
        await engine.dispose()
