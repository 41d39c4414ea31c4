"""Migrations apply on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from bot.db.engine import create_engine, session_factory
from bot.db.migrate import current_revision, head_revision, upgrade
from bot.db.models import Base, Repository, Run, Task
from bot.domain.states import RunState


async def test_migrations_apply_and_match_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) is None
        assert await upgrade(engine) == head_revision()
        # A second upgrade is a no-op.
        assert await upgrade(engine) == head_revision()

        def _diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        def _tables(connection: Connection) -> set[str]:
            return set(inspect(connection).get_table_names())

        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = await conn.run_sync(_tables)
        assert {"runs", "run_events", "deliveries", "approvals", "scope_locks"} <= tables

        sessions = session_factory(engine)
        async with sessions.begin() as session:
            repo = Repository(full_name="octo/hello", default_branch="main")
            session.add(repo)
            await session.flush()
            task = Task(repository_id=repo.id, issue_number=1, title="t")
            session.add(task)
            await session.flush()
            session.add(Run(id="r1", task_id=task.id, repository_id=repo.id))
        async with sessions() as session:
            run = (await session.execute(select(Run))).scalar_one()
            assert run.state is RunState.QUEUED
            assert run.created_at.tzinfo is not None or db_url.startswith("sqlite")
    finally:
        await engine.dispose()


async def test_upgrade_from_earlier_schemas_keeps_the_data(db_url: str) -> None:
    """An installation upgrading Bosun: the schema of the first migration and of the one before
    head, with a run, its events, artifacts and deliveries in it, upgraded to head — every row
    is still there and reads through today's models. (On SQLite, 0004 used to delete every task
    and run: altering `repositories` recreates it, and dropping the old table cascaded.)"""
    from sqlalchemy import MetaData

    from bot.db.migrate import alembic_config
    from bot.db.models import Artifact, Delivery, RunEvent

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str)
    for start in ("0001", previous):
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: Base.metadata.drop_all(c))
                await conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            assert await upgrade(engine, start) == start

            def _seed(connection: Connection) -> None:
                old = MetaData()
                old.reflect(connection)
                values = {
                    "repositories": {"id": 1, "full_name": "octo/hello"},
                    "tasks": {"id": 1, "repository_id": 1, "issue_number": 7, "title": "old"},
                    "runs": {"id": "r-old", "task_id": 1, "repository_id": 1, "state": "merged"},
                    "run_events": {"id": 1, "run_id": "r-old", "seq": 1, "kind": "log"},
                    "artifacts": {"id": 1, "run_id": "r-old", "name": "summary", "path": "/x"},
                    "deliveries": {"id": "d-old", "event": "issues", "payload": "{}"},
                }
                for table, row in values.items():
                    connection.execute(
                        old.tables[table].insert().values(**_filled(old, table, row))
                    )

            async with engine.begin() as conn:
                await conn.run_sync(_seed)
            assert await upgrade(engine) == head
            if db_url.startswith("sqlite"):  # the upgrade turned them off, and on again
                async with engine.connect() as conn:
                    pragma = await conn.exec_driver_sql("PRAGMA foreign_keys")
                    assert pragma.scalar() == 1
            sessions = session_factory(engine)
            async with sessions() as session:
                run = (await session.execute(select(Run))).scalar_one()
                assert (run.id, run.state) == ("r-old", RunState.MERGED)
                assert (await session.execute(select(Task.title))).scalar_one() == "old"
                assert (await session.execute(select(RunEvent.kind))).scalar_one() == "log"
                assert (await session.execute(select(Artifact.name))).scalar_one() == "summary"
                assert (await session.execute(select(Delivery.id))).scalar_one() == "d-old"
        finally:
            await engine.dispose()


def _filled(metadata: Any, table: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` plus a value for every other column the old schema requires."""
    from datetime import UTC, datetime

    from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, Numeric, String, Text

    filled = dict(row)
    for column in metadata.tables[table].columns:
        if column.name in filled or column.nullable or column.server_default is not None:
            continue
        kind = column.type
        if isinstance(kind, Boolean):
            filled[column.name] = False
        elif isinstance(kind, Integer | Float | Numeric):
            filled[column.name] = 0
        elif isinstance(kind, DateTime):
            filled[column.name] = datetime.now(UTC)
        elif isinstance(kind, JSON):
            filled[column.name] = {}
        elif isinstance(kind, String | Text):
            filled[column.name] = ""
        else:
            filled[column.name] = "{}"  # JSON stored as text on SQLite
    return filled
