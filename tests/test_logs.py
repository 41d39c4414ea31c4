"""Logs are JSON lines off a TTY, carry bound context, and never show secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from litestar.testing import AsyncTestClient

from bot.logs import configure_logging, redact_text, secret_field
from bot.web.app import create_app
from tests.conftest import make_settings

LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "arq", "arq.worker", "alembic", "httpx")


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Each test starts as a fresh process would (whatever an earlier test in this process did
    to the library loggers, as a server started with uvicorn's own config does) and leaves
    logging as it found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        logger.handlers[:], logger.level, logger.propagate, logger.disabled = [], 0, True, False
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (kept, was, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate, logger.disabled = (
            kept,
            was,
            propagate,
            disabled,
        )


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


GITLAB = "glpat-" + "Qm7xK2pV9sT4wZ8bN3cR"


def test_standard_library_records_come_out_as_redacted_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """uvicorn, arq, alembic, githubkit and httpx log through the standard library: their
    records go through the same processors as Bosun's own, secrets and tracebacks included."""
    configure_logging("info", "json")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id="r-7")
    logging.getLogger("uvicorn.error").warning(
        "cannot reach %s", "redis://:s3cretPassw0rd@redis:6379/0", extra={"api_key": "abc123"}
    )
    try:
        raise ConnectionError(f"push to https://gitlab.example/a.git refused token {GITLAB}")
    except ConnectionError:
        logging.getLogger("arq.worker").exception("job failed")
    logging.getLogger("alembic.runtime.migration").debug("below the level: not shown")
    structlog.get_logger("bot.test").info("metered", input_tokens=1200, max_tokens=4096)
    structlog.contextvars.clear_contextvars()
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.strip().splitlines()]
    assert [(r.get("logger", "-"), r["level"]) for r in lines] == [
        ("uvicorn.error", "warning"),
        ("arq.worker", "error"),
        ("-", "info"),
    ]
    first, second, third = lines
    assert first["event"] == "cannot reach redis://[redacted]@redis:6379/0"
    assert first["api_key"] == "[redacted]" and first["run_id"] == "r-7"
    assert "timestamp" in first
    assert second["event"] == "job failed" and "ConnectionError" in second["exception"]
    assert "[redacted]" in second["exception"]
    assert (third["input_tokens"], third["max_tokens"]) == (1200, 4096)
    assert "s3cretPassw0rd" not in err and GITLAB not in err and "abc123" not in err


def test_console_on_a_terminal_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    logging.getLogger("githubkit").warning("token %s rejected", GITLAB)
    err = capsys.readouterr().err
    assert "token [redacted] rejected" in err and "githubkit" in err
    assert not err.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("webhook_secret", True),
        ("accessToken", True),
        ("api_key", True),
        ("apiKey", True),
        ("x-api-key", True),
        ("private_key_pem", True),
        ("authorization", True),
        ("db.password", True),
        ("input_tokens", False),
        ("output_tokens", False),
        ("max_tokens", False),
        ("cache_read_tokens", False),
        ("tokens_in", False),
        ("key", False),
        ("cache_key", False),
        ("tokenizer", False),
    ],
)
def test_field_names_name_a_credential_by_whole_words(name: str, secret: bool) -> None:
    assert secret_field(name) is secret


async def test_the_web_app_leaves_logging_to_bosun(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Litestar configures the root logger by default, which replaced Bosun's handler once
    the app was built: uvicorn's lines came out as plain text."""
    configure_logging("info", "json")
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", redis_url)
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 42, extra={"color_message": "\x1b[36m%d\x1b[0m"}
        )
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    started = next(line for line in lines if line.get("logger") == "uvicorn.error")
    assert started["event"] == "Started server process [42]"
    assert "color_message" not in started
