"""The dependency caches as the settings configure them (``sandboxes.caches`` does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandboxes.caches import Caches

if TYPE_CHECKING:
    from bot.settings import Settings


def caches_of(settings: Settings) -> Caches | None:
    """The worker's caches, or ``None`` when they are off."""
    group = settings.caches
    if not group.enabled:
        return None
    return Caches(
        group.dir or settings.data_dir / "caches",
        max_bytes=group.max_bytes,
        max_bytes_per_repository=group.max_bytes_per_repository,
    )
