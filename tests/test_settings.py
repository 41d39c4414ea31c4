"""Settings come from ``BOSUN_<GROUP>__<FIELD>``; secrets never print; docs cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.entrypoints.configdoc import render
from bot.settings import Settings


def test_nested_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSUN_DATABASE__URL", "postgresql+asyncpg://u:p@db/bosun")
    monkeypatch.setenv("BOSUN_REDIS__URL", "redis://cache:6379/2")
    monkeypatch.setenv("BOSUN_GITHUB__API_URL", "https://ghe.example/api/v3")
    monkeypatch.setenv("BOSUN_GITHUB__WEBHOOK_SECRET", "s3cret-value")
    monkeypatch.setenv("BOSUN_GITHUB__APP_ID", "42")
    monkeypatch.setenv("BOSUN_SANDBOX__PIDS", "64")
    settings = Settings()
    assert settings.database.url.endswith("@db/bosun")
    assert settings.redis.url == "redis://cache:6379/2"
    assert settings.github.api_url == "https://ghe.example/api/v3"
    assert settings.github.app_id == 42
    assert settings.sandbox.pids == 64
    assert settings.github.webhook_secret is not None
    assert settings.github.webhook_secret.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in settings.model_dump_json()


def test_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSUN_SANDBOX__PIDS", "-3")
    with pytest.raises(ValueError, match=r"sandbox\.pids"):
        Settings()


def test_private_key_file(tmp_path: Path) -> None:
    key = tmp_path / "app.pem"
    key.write_text("PEM")
    settings = Settings.model_validate({"github": {"private_key_file": key}})
    assert settings.github.private_key_pem() == "PEM"
    with pytest.raises(ValueError, match="not both"):
        Settings.model_validate({"github": {"private_key_file": key, "private_key": "x"}})


def test_configuration_doc_is_generated_from_the_model() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == render(), "run: bosun config docs > docs/configuration.md"
    for name in ("BOSUN_DATABASE__URL", "BOSUN_REDIS__URL", "BOSUN_GITHUB__WEBHOOK_SECRET"):
        assert f"`{name}`" in doc.read_text()
