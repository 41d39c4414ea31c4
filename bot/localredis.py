"""The embedded default: a private ``redis-server`` child when none answers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import structlog
from redis.asyncio import Redis

from bot.errors import ConfigError

log = structlog.get_logger("bot.localredis")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _die_with_parent() -> None:
    """In the child: get SIGTERM when Bosun exits, however it exits (Linux prctl)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def redis_answers(url: str, wait: float = 1.0) -> bool:
    client: Redis = Redis.from_url(url, socket_connect_timeout=wait, socket_timeout=wait)
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001 -- any failure means "not answering"
        return False
    finally:
        await client.aclose()


async def ensure_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Return ``None`` when Redis answers at ``url``; otherwise start a child bound to the
    loopback port of ``url`` and return its process (the caller stops it)."""
    if await redis_answers(url):
        return None
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in LOOPBACK:
        raise ConfigError(f"Redis at {url} does not answer, and it is not local to start one")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "Redis does not answer and `redis-server` is not installed: "
            "install it (`apt-get install redis-server`) or set BOSUN_REDIS__URL"
        )
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder.resolve())]
    argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    process = subprocess.Popen(  # noqa: ASYNC220 -- a long-lived child, started once
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    for _ in range(100):
        if await redis_answers(url, wait=0.2):
            log.info("local_redis_started", port=port, pid=process.pid)
            return process
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    process.kill()
    raise ConfigError(f"started redis-server on port {port}, but it never answered")
