"""Redis is a privilege boundary: the Redis the set-up starts (scripts/bootstrap.sh) and the one
``bosun up`` starts for itself refuse clients without the password, or with a wrong one; the
password never shows in logs, ``bosun doctor`` or ``bosun config docs``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from bot.entrypoints.localredis import ensure_redis, redis_answers, supervise
from bot.errors import ConfigError
from bot.settings import RedisSettings, Settings
from tests.lifecycle_stack import BOSUN, BosunProcess
from tests.services import REDIS_PASSWORD_FILE, REDIS_URL, missing
from tests.stack import free_port


def resp(port: int, *commands: str) -> list[bytes]:
    """Redis' first reply line to each inline command, straight off the wire."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rwb")
        for command in commands:
            stream.write(command.encode() + b"\r\n")
            stream.flush()
            replies.append(stream.readline().rstrip(b"\r\n"))
    return replies


def assert_refuses_strangers(port: int, password: str) -> None:
    nothing = resp(port, "PING", "SET bosun:stranger 1", "KEYS *", "CONFIG GET requirepass")
    assert all(reply.startswith(b"-NOAUTH") for reply in nothing), nothing
    wrong = resp(port, "AUTH not-the-password", "PING")
    assert wrong[0].startswith(b"-WRONGPASS"), wrong
    assert wrong[1].startswith(b"-NOAUTH"), wrong
    assert resp(port, f"AUTH {password}", "PING") == [b"+OK", b"+PONG"]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_set_up_redis_refuses_clients_without_the_password() -> None:
    url = urlsplit(REDIS_URL)
    if url.password is None:
        missing(
            "a Redis that requires a password",
            f"no password in {REDIS_PASSWORD_FILE!r} (run scripts/bootstrap.sh test)",
        )
    assert url.port is not None and url.password is not None
    assert_refuses_strangers(url.port, url.password)
    assert os.stat(REDIS_PASSWORD_FILE).st_mode & 0o077 == 0  # root-only (owner only)


async def test_private_redis_requires_a_generated_password(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        missing("redis-server", "install redis-server (scripts/bootstrap.sh test)")
    port = free_port()
    local = await ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path, None)
    assert local is not None
    try:
        assert local.generated and len(local.password) == 64
        assert_refuses_strangers(port, local.password)
        assert local.password not in _cmdline(local.process.pid)  # /proc is world-readable
        # Bosun without that password is told what to set, not handed another server.
        with pytest.raises(ConfigError, match="BOSUN_REDIS__PASSWORD_FILE"):
            await ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path, None)
        with pytest.raises(ConfigError, match="refuses Bosun's password"):
            await ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path, "wrong")
        assert await ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path, local.password) is None
    finally:
        local.stop()

    configured = await ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path, "configured-pw")
    assert configured is not None
    try:
        assert not configured.generated
        assert_refuses_strangers(port, "configured-pw")
    finally:
        configured.stop()


def _environ(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BOSUN_", "DOCKER_"))}
    return {
        **base,
        "BOSUN_DATA_DIR": str(tmp_path / "data"),
        "BOSUN_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}",
        "BOSUN_SANDBOX__WORKDIR": str(tmp_path / "work"),
        "BOSUN_LOG_FORMAT": "json",
        "BOSUN_LOG_LEVEL": "debug",
        **env,
    }


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ready_checks(port: int) -> dict[str, object] | None:
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    checks = body.get("checks") if isinstance(body, dict) else None
    return checks if isinstance(checks, dict) else None


@pytest.fixture
def bosun_up(tmp_path: Path) -> Iterator[list[BosunProcess]]:
    if shutil.which("redis-server") is None:
        missing("redis-server", "install redis-server (scripts/bootstrap.sh test)")
    started: list[BosunProcess] = []
    yield started
    for process in started:
        if process.alive():
            assert process.proc is not None
            process.proc.send_signal(signal.SIGINT)
            try:
                process.proc.wait(30)
            except subprocess.TimeoutExpired:
                process.stop()


def _start_up(
    tmp_path: Path, started: list[BosunProcess], name: str, **env: str
) -> tuple[BosunProcess, int]:
    web_port = free_port()
    argv = [str(BOSUN), "up", "--port", str(web_port)]
    process = BosunProcess(name, argv, _environ(tmp_path, **env), tmp_path / f"{name}.log")
    started.append(process.start())

    def redis_up() -> bool:
        checks = _ready_checks(web_port)
        redis = checks.get("redis") if checks else None
        return isinstance(redis, dict) and redis.get("ok") is True

    _wait(redis_up, 60, f"bosun up's /readyz to see Redis\n{process.output()[-3000:]}")
    return process, web_port


def _redis_child(parent: int) -> int:
    out = subprocess.run(
        ["pgrep", "-P", str(parent), "redis-server"], capture_output=True, text=True
    ).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def _stop(process: BosunProcess) -> None:
    assert process.proc is not None
    process.proc.send_signal(signal.SIGINT)
    process.proc.wait(30)


def test_bosun_up_starts_its_redis_with_a_generated_password(
    tmp_path: Path, bosun_up: list[BosunProcess]
) -> None:
    redis_port = free_port()
    process, _ = _start_up(
        tmp_path, bosun_up, "up", BOSUN_REDIS__URL=f"redis://127.0.0.1:{redis_port}/0"
    )
    child = _redis_child(process.pid)
    assert "requirepass" not in _cmdline(child)
    # Web and worker share the password; nobody else gets in.
    nothing = resp(redis_port, "PING", "KEYS *")
    assert all(reply.startswith(b"-NOAUTH") for reply in nothing), nothing
    assert resp(redis_port, "AUTH guess", "PING")[0].startswith(b"-WRONGPASS")
    output = process.output()
    assert '"event": "local_redis_started"' in output and '"generated": true' in output
    assert '"event": "worker_started"' in output
    _stop(process)
    _wait(lambda: not Path(f"/proc/{child}").exists(), 15, "the private redis-server to stop")


def test_password_never_reaches_logs_doctor_or_config_docs(
    tmp_path: Path, bosun_up: list[BosunProcess]
) -> None:
    password = "pw-" + secrets.token_hex(12)
    redis_port = free_port()
    url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
    process, web_port = _start_up(tmp_path, bosun_up, "up", BOSUN_REDIS__URL=url)
    assert_refuses_strangers(redis_port, password)  # the configured password, not a new one

    doctors = []
    password_file = tmp_path / "redis-password"
    password_file.write_text(password + "\n")
    plain_url = f"redis://127.0.0.1:{redis_port}/0"
    for env in (
        {"BOSUN_REDIS__URL": url},
        {"BOSUN_REDIS__URL": plain_url, "BOSUN_REDIS__PASSWORD": password},
        {"BOSUN_REDIS__URL": plain_url, "BOSUN_REDIS__PASSWORD_FILE": str(password_file)},
    ):
        doctor = subprocess.run(
            [sys.executable, "-m", "bot.entrypoints.cli", "doctor", "--format", "json"],
            capture_output=True,
            text=True,
            env=_environ(tmp_path, **env),
            timeout=120,
        )
        doctors.append(doctor.stdout + doctor.stderr)
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["redis"]["status"] == "ok", checks["redis"]
        assert checks["redis"]["detail"].startswith(plain_url)
    wrong = subprocess.run(
        [sys.executable, "-m", "bot.entrypoints.cli", "doctor", "--format", "json"],
        capture_output=True,
        text=True,
        env=_environ(
            tmp_path, BOSUN_REDIS__URL=f"redis://:wrong-{password}@127.0.0.1:{redis_port}/0"
        ),
        timeout=120,
    )
    redis_check = {c["name"]: c for c in json.loads(wrong.stdout)["checks"]}["redis"]
    assert redis_check["status"] == "fail" and "password" in redis_check["fix"]
    docs = subprocess.run(
        [str(BOSUN), "config", "docs"],
        capture_output=True,
        text=True,
        env=_environ(tmp_path, BOSUN_REDIS__URL=url),
        timeout=60,
        check=True,
    )
    # Something worth logging happened on both sides: a webhook refused, a queue poll, a ping.
    httpx.post(f"http://127.0.0.1:{web_port}/webhooks/github", content=b"{}", timeout=5)
    _stop(process)
    output = process.output()
    assert '"event": "bosun_up"' in output and '"event": "worker_started"' in output
    for text in (output, *doctors, wrong.stdout + wrong.stderr, docs.stdout):
        assert password not in text


def test_settings_keep_the_password_secret(tmp_path: Path) -> None:
    settings = Settings.model_validate({"redis": {"url": "redis://:s%40cret@cache:6379/2"}})
    assert settings.redis.url == "redis://cache:6379/2"
    assert settings.redis.password_value() == "s@cret"
    assert "s@cret" not in repr(settings) and "s@cret" not in settings.model_dump_json()
    acl = RedisSettings(url="redis://bosun:pw@cache:6379/2")
    assert (acl.url, acl.password_value()) == ("redis://bosun@cache:6379/2", "pw")
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert RedisSettings(password_file=secret_file).password_value() == "from-file"
    with pytest.raises(ValidationError, match="one place"):
        RedisSettings(url="redis://:a@cache", password_file=secret_file)
    with pytest.raises(ConfigError, match=r"cannot read redis\.password_file"):
        RedisSettings(password_file=tmp_path / "absent").password_value()


async def test_bosun_up_restarts_its_redis_when_it_dies(tmp_path: Path) -> None:
    """``bosun up``'s own redis-server, SIGKILLed, is started again on the same port with the
    same password (and still refuses strangers); its worker rides out the gap."""
    if shutil.which("redis-server") is None:
        missing("redis-server", "install redis-server (scripts/bootstrap.sh test)")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    local = await ensure_redis(url, tmp_path, None)
    assert local is not None
    watching = asyncio.create_task(supervise(local, every=0.1))
    try:
        first = local.process.pid
        os.kill(first, signal.SIGKILL)
        for _ in range(100):
            if local.process.pid != first and await redis_answers(url, local.password, 0.2):
                break
            await asyncio.sleep(0.05)
        assert local.process.pid != first and await redis_answers(url, local.password)
        assert_refuses_strangers(port, local.password)
        assert local.password not in _cmdline(local.process.pid)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        local.stop()


def test_bosun_up_stores_a_signed_webhook_and_its_worker_processes_it(
    tmp_path: Path, bosun_up: list[BosunProcess]
) -> None:
    """The README's `bosun up` answers webhooks through the same intake as `bosun web` (its
    protocol answers them itself): stored once, a replay is a duplicate, its worker decides it."""
    secret = "up-secret-" + secrets.token_hex(4)
    process, web_port = _start_up(
        tmp_path,
        bosun_up,
        "up",
        BOSUN_REDIS__URL=f"redis://127.0.0.1:{free_port()}/0",
        BOSUN_GITHUB__WEBHOOK_SECRET=secret,
    )
    body = json.dumps({"zen": "Approachable is better than simple.", "hook_id": 1}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "up-" + secrets.token_hex(6),
        "X-Hub-Signature-256": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }
    url = f"http://127.0.0.1:{web_port}/webhooks/github"
    first = httpx.post(url, content=body, headers=headers, timeout=10)
    assert first.status_code == 202 and first.json()["status"] == "accepted", first.text
    again = httpx.post(url, content=body, headers=headers, timeout=10)
    assert again.status_code == 202 and again.json()["status"] == "duplicate", again.text
    forged = httpx.post(
        url, content=body, headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    )
    assert forged.status_code == 401
    _wait(
        lambda: '"event": "delivery_processed"' in process.output(),
        30,
        f"bosun up's worker to process the delivery\n{process.output()[-3000:]}",
    )
    _stop(process)
