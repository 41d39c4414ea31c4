"""The collaborator-permission cache (SPEC §3.2: checked live, cached briefly) cannot be forged
by whoever writes to Redis: Bosun signs what it caches with a key Redis never holds, and a
value it did not sign is ignored and the permission asked of GitHub again."""

from __future__ import annotations

from typing import Any

from bot.services import Services
from bot.settings import Settings
from jobs.context import JobContext
from jobs.deliveries.process import permission_of


class RecordingPort:
    """The one port method the cache sits in front of; every other call would fail."""

    full_name = "octo/hello"

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def permission(self, login: str) -> str:
        self.asked.append(login)
        return self.answer


async def test_a_forged_cache_entry_is_ignored(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"github": settings.github.model_copy(update={"webhook_secret": _secret()})}
    )
    bosun = JobContext(settings, Services.build(settings))
    try:
        port: Any = RecordingPort("read")
        assert await permission_of(bosun, port, "Mallory") == "read"
        assert await permission_of(bosun, port, "mallory") == "read"  # cached, signed
        assert port.asked == ["Mallory"]
        key = settings.redis.key("perm", "octo/hello", "mallory")
        stored = (await bosun.services.redis.get(key)).decode()
        assert stored.startswith("read.") and len(stored) > 60
        for forged in ("admin", "admin." + "0" * 64, stored.replace("read", "admin", 1)):
            await bosun.services.redis.set(key, forged, ex=60)
            assert await permission_of(bosun, port, "mallory") == "read"
        assert len(port.asked) == 4  # each forgery sent Bosun back to GitHub
    finally:
        await bosun.services.close()


def _secret() -> Any:
    from pydantic import SecretStr

    return SecretStr("webhook-secret-for-the-cache")
