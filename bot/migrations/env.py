"""Alembic environment. Run through ``bot.db.migrate`` (``bosun migrate``), which hands over
an open connection in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from bot.db.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `bosun migrate` (bot.db.migrate.upgrade)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; use `bosun migrate`")
run_migrations_online()
