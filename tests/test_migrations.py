"""Migrations apply on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
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
