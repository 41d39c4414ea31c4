"""Engine and session factory. SQLite gets WAL, a busy timeout and foreign keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionFactory = async_sessionmaker[AsyncSession]


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, echo: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; creates the SQLite file's folder when needed."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 15})
        engine = create_async_engine(url, echo=echo, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    parsed = make_url(url)
    schema = parsed.query.get("search_path")
    if isinstance(schema, str):
        # `?search_path=NAME` keeps Bosun's tables in one schema of a shared database.
        parsed = parsed.difference_update_query(["search_path"])
        kwargs.setdefault("connect_args", {"server_settings": {"search_path": schema}})
    return create_async_engine(parsed, echo=echo, **kwargs)


def sqlite_file_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file as ``engine`` (same pragmas), for a writer
    that does a whole transaction in one call on its own thread; None for PostgreSQL or an
    in-memory database (which another engine would not see)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    sync = create_sync_engine(url.set(drivername="sqlite"), connect_args={"timeout": 15})
    event.listen(sync, "connect", _sqlite_pragmas)
    return sync


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)
