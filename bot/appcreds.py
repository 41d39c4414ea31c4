"""GitHub App credentials registered through the manifest flow (``GET /setup``, SPEC §3.4).

The flow stores the App's id, private key, webhook secret and OAuth client in the
``app_credentials`` table. Settings stay the first source: a value configured in the
environment is never replaced; a Bosun configured with none of them takes the stored ones (the
web process at start and right after the flow, workers before each job until they have them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from sqlalchemy import select

from bot.db.engine import SessionFactory
from bot.db.models import AppCredentials
from bot.settings import Settings

MANIFEST_NAME = "app-manifest.yml"


def manifest_path() -> Path:
    """The App manifest: shipped inside the package (wheel), or at the repository root."""
    packaged = Path(__file__).parent / MANIFEST_NAME
    return packaged if packaged.exists() else Path(__file__).parent.parent / MANIFEST_NAME


def app_manifest(public_url: str) -> dict[str, Any]:
    """``app-manifest.yml`` with every ``{public_url}`` replaced."""
    text = manifest_path().read_text().replace("{public_url}", public_url.rstrip("/"))
    manifest: dict[str, Any] = yaml.safe_load(text)
    return manifest


async def load_stored(sessions: SessionFactory) -> AppCredentials | None:
    """The most recently registered App, if the manifest flow ever ran."""
    async with sessions() as session:
        rows = await session.execute(
            select(AppCredentials).order_by(AppCredentials.id.desc()).limit(1)
        )
        return rows.scalar_one_or_none()


def with_stored(settings: Settings, stored: AppCredentials | None) -> Settings:
    """``settings`` with the stored App filled in where the environment configured no App."""
    github = settings.github
    if stored is None or github.app_id is not None or github.private_key_pem():
        return settings
    update: dict[str, Any] = {
        "app_id": stored.app_id,
        "private_key": SecretStr(stored.private_key),
        "slug": stored.slug,
    }
    if github.webhook_secret is None:
        update["webhook_secret"] = SecretStr(stored.webhook_secret)
    if github.client_id is None and stored.client_id:
        update["client_id"] = stored.client_id
    if github.client_secret is None and stored.client_secret:
        update["client_secret"] = SecretStr(stored.client_secret)
    return settings.model_copy(update={"github": github.model_copy(update=update)})


__all__ = ["app_manifest", "load_stored", "manifest_path", "with_stored"]
