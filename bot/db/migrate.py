"""Apply Alembic migrations programmatically (``bosun migrate``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Bring the database to ``revision``; returns the revision it is at afterwards."""

    def _run(connection: Connection, /) -> str | None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            async with connection.begin():
                return await connection.run_sync(_run)
        # SQLite alters a table by copying it into a new one and dropping the old (alembic's
        # batch mode); with foreign keys on, that drop deletes every row that references the
        # table through ON DELETE CASCADE (all tasks and runs, when `repositories` is altered).
        # The pragma only takes effect outside a transaction.
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await connection.commit()
        try:
            async with connection.begin():
                reached = await connection.run_sync(_run)
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if broken:
                    raise RuntimeError(f"the migration left rows without their parent: {broken}")
            return reached
        finally:
            await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            await connection.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_current)


def autogenerate(engine_url: str, message: str) -> None:
    """Write a new revision from the models' difference to a database at ``engine_url``."""
    from sqlalchemy import create_engine

    sync_url = engine_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    with create_engine(sync_url).begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
