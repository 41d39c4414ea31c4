"""Settings from an env file and from ``*_FILE`` variables (``bot.envfiles``): every secret can
come from a file (Docker/Compose secrets, systemd credentials), conflicts and unreadable files
are clear errors, and no error message quotes a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import Settings

SECRETS = {
    # (variable without _FILE) → how to read it back from Settings
    "BOSUN_GITHUB__WEBHOOK_SECRET": lambda s: s.github.webhook_secret.get_secret_value(),
    "BOSUN_GITHUB__CLIENT_SECRET": lambda s: s.github.client_secret.get_secret_value(),
    "BOSUN_METRICS__TOKEN": lambda s: s.metrics.token.get_secret_value(),
    "BOSUN_DASHBOARD__SECRET_KEY": lambda s: s.dashboard.secret_key.get_secret_value(),
    "BOSUN_DATABASE__URL": lambda s: s.database.url,
}


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    monkeypatch.delenv("BOSUN_ENV_FILE", raising=False)


def test_every_secret_reads_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for n, name in enumerate(SECRETS):
        path = tmp_path / f"secret{n}"
        value = (
            "postgresql+asyncpg://bosun:pw@db/bosun" if "DATABASE" in name else f"value-{n}-" * 4
        )
        path.write_text(value + "\n")  # the newline `echo` and editors add is not part of it
        monkeypatch.setenv(f"{name}_FILE", str(path))
    settings = Settings()
    for n, (name, read) in enumerate(SECRETS.items()):
        expected = "postgresql+asyncpg://bosun:pw@db/bosun" if "DATABASE" in name else None
        assert read(settings) == (expected or f"value-{n}-" * 4), name
    # The settings that had a file setting of their own keep it.
    key = tmp_path / "redis-password"
    key.write_text("r3dis\n")
    monkeypatch.setenv("BOSUN_REDIS__PASSWORD_FILE", str(key))
    assert Settings().redis.password_value() == "r3dis"


def test_json_settings_read_json_from_their_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(
        '[{"name": "chat", "url": "https://chat.example/h", "secret": "0123456789abcdef"}]'
    )
    monkeypatch.setenv("BOSUN_NOTIFY__ENDPOINTS_FILE", str(endpoints))
    (endpoint,) = Settings().notify.endpoints
    assert endpoint.secret.get_secret_value() == "0123456789abcdef"


def test_env_file_and_its_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "hook"
    secret.write_text("from-a-file")
    (tmp_path / ".env").write_text(
        "# comment\nBOSUN_GITHUB__APP_ID=7\nBOSUN_SANDBOX__PIDS=100\n"
        f"BOSUN_GITHUB__WEBHOOK_SECRET_FILE={secret}\nUNRELATED=1\n"
    )
    monkeypatch.setenv("BOSUN_SANDBOX__PIDS", "64")  # the environment wins over the file
    settings = Settings()
    assert settings.github.app_id == 7
    assert settings.sandbox.pids == 64
    assert settings.github.webhook_secret is not None
    assert settings.github.webhook_secret.get_secret_value() == "from-a-file"
    other = tmp_path / "other.env"
    other.write_text("BOSUN_GITHUB__APP_ID=8\n")
    monkeypatch.setenv("BOSUN_ENV_FILE", str(other))
    assert Settings().github.app_id == 8
    monkeypatch.setenv("BOSUN_ENV_FILE", "")
    assert Settings().github.app_id is None
    monkeypatch.setenv("BOSUN_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError, match=r"BOSUN_ENV_FILE=.*no such file"):
        Settings()


def test_an_env_file_others_may_write_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A .env that someone else wrote (a repository checked out here) is not configuration."""
    env = tmp_path / ".env"
    env.write_text("BOSUN_DATABASE__URL=postgresql+asyncpg://attacker@evil/db\n")
    env.chmod(0o666)
    with pytest.raises(ConfigError, match=r"refusing the env file .*writable by no one else"):
        Settings()
    env.chmod(0o644)
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(env, 12345, 12345)
        with pytest.raises(ConfigError, match=r"owner uid 12345"):
            Settings()
    monkeypatch.setenv("BOSUN_ENV_FILE", "")
    assert "evil" not in Settings().database.url


def test_conflicts_and_unreadable_files_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "hook"
    secret.write_text("x")
    monkeypatch.setenv("BOSUN_GITHUB__WEBHOOK_SECRET_FILE", str(secret))
    monkeypatch.setenv("BOSUN_GITHUB__WEBHOOK_SECRET", "y")
    with pytest.raises(ConfigError, match=r"BOSUN_GITHUB__WEBHOOK_SECRET or .*_FILE, not both"):
        Settings()
    monkeypatch.delenv("BOSUN_GITHUB__WEBHOOK_SECRET")
    monkeypatch.setenv("BOSUN_GITHUB__WEBHOOK_SECRET_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"cannot read BOSUN_GITHUB__WEBHOOK_SECRET_FILE=.*nope"):
        Settings()
    # An unknown _FILE variable is ignored like any unknown variable.
    monkeypatch.delenv("BOSUN_GITHUB__WEBHOOK_SECRET_FILE")
    monkeypatch.setenv("BOSUN_NO_SUCH_THING_FILE", "/nope")
    Settings()


def test_configuration_errors_never_quote_a_secret(tmp_path: Path) -> None:
    """pydantic's own message repeats the input it refused, which may hold a secret."""
    env = {
        "PATH": "/usr/bin:/bin",
        "BOSUN_ENV_FILE": "",
        "BOSUN_REDIS__PASSWORD": "hunter2-redis-password",
        "BOSUN_REDIS__URL": "redis://:other-password-in-url@127.0.0.1:6379/0",
        "BOSUN_METRICS__TOKEN": "hunter2-metrics-token",
        "BOSUN_RETENTION__DELIVERIES_DAYS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot.entrypoints.cli", "doctor"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "set the Redis password in one place" in done.stderr
    assert "retention.deliveries_days (1) must cover more than" in done.stderr
    for secret in ("hunter2", "other-password"):
        assert secret not in done.stderr + done.stdout
