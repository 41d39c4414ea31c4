"""Logs are JSON lines off a TTY, carry bound context, and never show secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from bot.logs import configure_logging, redact_text


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_lines_with_context_and_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(delivery_id="d-1", run_id="r-9")
    log = structlog.get_logger("t")
    token = "ghs_" + "A" * 36
    log.info(
        "delivery_recorded", webhook_secret="hunter2", url=f"https://x-access-token:{token}@h/r"
    )
    structlog.contextvars.clear_contextvars()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "delivery_recorded"
    assert record["delivery_id"] == "d-1" and record["run_id"] == "r-9"
    assert record["webhook_secret"] == "[redacted]"
    assert token not in line and "hunter2" not in line


def test_redact_text_private_key() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----"
    assert "abc" not in redact_text(f"key: {pem}")
