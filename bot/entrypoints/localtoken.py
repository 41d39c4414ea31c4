"""The host's own admin token: what lets ``bosun`` commands run on the Bosun host work without
``--token`` (the README's tour), the way a local socket's file mode lets a local user in.

``bosun up`` replaces the token named ``local-admin`` at every start and writes its secret to
``<data_dir>/cli-token``, readable by its owner only (0600); the CLI reads that file when no
token is given. Whoever can read the file could read the database too, so it grants nothing
new; a remote CLI still needs ``bosun token create`` and ``BOSUN_TOKEN``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import delete

from bot.control.tokens import create_token
from bot.db.engine import create_engine, session_factory
from bot.db.models import ApiToken
from bot.settings import Settings

TOKEN_NAME = "local-admin"  # noqa: S105 -- a name, not a secret
TOKEN_FILE = "cli-token"  # noqa: S105 -- a file name


async def write_local_token(settings: Settings) -> Path:
    """A fresh ``local-admin`` token (the previous one stops working), its secret in
    ``<data_dir>/cli-token`` (0600)."""
    engine = create_engine(settings.database.url)
    try:
        async with session_factory(engine).begin() as session:
            await session.execute(delete(ApiToken).where(ApiToken.name == TOKEN_NAME))
            secret, _row = await create_token(session, TOKEN_NAME, "admin")
    finally:
        await engine.dispose()
    path = settings.data_dir / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(TOKEN_FILE + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.replace(temporary, path)
    return path


def read_local_token() -> str | None:
    """The host's admin token, when this process may read it (``None`` otherwise)."""
    try:
        path = Settings().data_dir / TOKEN_FILE
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return text or None
