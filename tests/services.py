"""Real services the tests run on: Redis, PostgreSQL, Docker.

Under CI (``CI=true``) a missing service is a test failure, never a skip; on a developer's
machine it is a skip that names what to start.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from bot.settings import split_redis_password

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# The password the set-up's Redis requires (scripts/bootstrap.sh writes it, root-only). Set
# BOSUN_TEST_REDIS_PASSWORD_FILE="" for a Redis without one.
REDIS_PASSWORD_FILE = os.environ.get("BOSUN_TEST_REDIS_PASSWORD_FILE", "/etc/bosun/redis-password")


def with_redis_password(url: str, password_file: str = REDIS_PASSWORD_FILE) -> str:
    """``url`` with the password from ``password_file`` when it names none and the file is
    readable (``redis://:PASSWORD@host``)."""
    if not password_file or split_redis_password(url)[1] is not None:
        return url
    try:
        password = Path(password_file).read_text().strip()
    except OSError:
        return url
    if not password:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f":{quote(password, safe='')}@{parts.netloc}"))


REDIS_URL = with_redis_password(os.environ.get("BOSUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
POSTGRES_URL = os.environ.get(
    "BOSUN_TEST_POSTGRES_URL", "postgresql+asyncpg://bosun:bosun@127.0.0.1:5432/bosun_test"
)


def missing(service: str, hint: str) -> None:
    """Fail under CI, skip elsewhere, naming the service and how to start it."""
    message = f"{service} is not available: {hint}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_client():  # type: ignore[no-untyped-def]
    """A docker-py client for the local engine, or a CI failure / local skip."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException as exc:
        missing("Docker engine", f"{exc} (run scripts/bootstrap.sh)")
    return client
