"""``INSERT … ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL alike, for rows that two
workers may create at the same moment (a repository, a task, an installation)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


async def insert_ignore(
    session: AsyncSession, model: type[Any], values: dict[str, Any], conflict: list[str]
) -> None:
    """Insert ``values`` into ``model``'s table unless a row with the same ``conflict``
    columns exists."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    module = postgresql if dialect == "postgresql" else sqlite
    statement = (
        module.insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
    )
    await session.execute(statement)
