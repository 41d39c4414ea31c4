"""The embedded default: a private ``redis-server`` child when none answers on loopback.

The child requires a password: the configured one (``redis.password`` / ``password_file``), or
one generated for this start. Its configuration goes in on standard input, so the password never
appears on a command line (``/proc/<pid>/cmdline`` is readable by every local user).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import structlog
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError

from bot.errors import ConfigError

log = structlog.get_logger("bot.entrypoints.localredis")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Answer(Enum):
    OK = "ok"
    REFUSED = "refused"  # it answers, but not to this password (or wants one)
    DOWN = "down"


@dataclass
class LocalRedis:
    """A ``redis-server`` child and the password it requires."""

    process: subprocess.Popen[bytes]
    password: str = field(repr=False)
    generated: bool
    config: str = field(default="", repr=False)
    binary: str = ""

    def exited(self) -> bool:
        return self.process.poll() is not None

    def respawn(self) -> None:
        """Start the server again on the same port with the same password (it died: killed,
        out of memory); its data is gone, the database still has every delivery and run."""
        self.process = _spawn(self.binary, self.config)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when Bosun exits, however it exits (Linux prctl)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def probe(url: str, password: str | None, wait: float = 1.0) -> Answer:
    """Whether Redis at ``url`` runs commands for a client with ``password``."""
    client: Redis = Redis.from_url(
        url, password=password, socket_connect_timeout=wait, socket_timeout=wait
    )
    try:
        await client.ping()
    except (AuthenticationError, ResponseError):
        return Answer.REFUSED  # NOAUTH, WRONGPASS, or AUTH sent to a Redis without a password
    except Exception:  # noqa: BLE001 -- any other failure means "not answering"
        return Answer.DOWN
    finally:
        await client.aclose()
    return Answer.OK


async def redis_answers(url: str, password: str | None = None, wait: float = 1.0) -> bool:
    return await probe(url, password, wait) is Answer.OK


def _quoted(value: str) -> str:
    """A redis.conf argument: double-quoted, with ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_config(port: int, folder: Path, password: str) -> str:
    """The private server's configuration: loopback only, no persistence, a password."""
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        f"dir {_quoted(str(folder.resolve()))}",
        'save ""',
        "appendonly no",
        "protected-mode yes",
        f"requirepass {_quoted(password)}",
    ]
    return "\n".join(lines) + "\n"


async def ensure_redis(url: str, data_dir: Path, password: str | None) -> LocalRedis | None:
    """Return ``None`` when Redis answers at ``url`` to ``password``; otherwise start a child
    bound to the loopback port of ``url`` that requires ``password`` (or a generated one) and
    return it (the caller stops it)."""
    answer = await probe(url, password)
    if answer is Answer.OK:
        return None
    if answer is Answer.REFUSED:
        raise ConfigError(
            f"Redis at {url} refuses Bosun's password"
            + ("" if password else " (it requires one)")
            + ": set BOSUN_REDIS__PASSWORD_FILE to the file holding its password "
            "(scripts/bootstrap.sh keeps it in /etc/bosun/redis-password)"
        )
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
    generated = password is None
    secret = password if password is not None else secrets.token_hex(32)
    config = server_config(port, folder, secret)
    process = _spawn(binary, config)
    for _ in range(100):
        if await redis_answers(url, secret, wait=0.2):
            log.info("local_redis_started", port=port, pid=process.pid, generated=generated)
            return LocalRedis(process, secret, generated, config, binary)
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    raise ConfigError(f"started redis-server on port {port}, but it never answered")


def _spawn(binary: str, config: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [binary, "-"],  # the configuration, password included, comes on stdin
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    assert process.stdin is not None
    process.stdin.write(config.encode())
    process.stdin.close()
    return process


async def supervise(child: LocalRedis, every: float = 1.0) -> None:
    """Start ``child`` again whenever it exits (``bosun up``'s own Redis: nobody else would);
    runs until cancelled. The worker rides out the gap and reconciles once it answers."""
    while True:
        await asyncio.sleep(every)
        if child.exited():
            log.warning("local_redis_exited", code=child.process.returncode)
            await asyncio.to_thread(child.process.wait)
            child.respawn()
            log.info("local_redis_restarted", pid=child.process.pid)
