"""structlog setup: JSON lines in production, console on a TTY, secrets redacted — for Bosun's
own structlog loggers and for every standard-library record (uvicorn, arq, alembic, githubkit,
httpx), which go through structlog's ``ProcessorFormatter`` and the same processors.

Every request and job clears the context and binds what identifies it (``delivery_id``,
``installation_id``, ``repo``, ``run_id``) with ``structlog.contextvars.bind_contextvars``.

Redaction has two rules: a field named for a credential (``webhook_secret``, ``token``,
``apiKey``, ``authorization``; a whole word of the name, so ``input_tokens`` and
``max_tokens`` are counts and stay) is blanked, and any text has what
``bot.domain.secrets`` finds in it replaced (the same rules as the diff scanner and git's
output).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from bot.domain.secrets import REDACTED, redact_text

__all__ = ["REDACTED", "configure_logging", "get_logger", "redact_text", "secret_field"]

_SECRET_WORDS = frozenset(
    {
        "secret",
        "token",
        "password",
        "passwd",
        "passphrase",
        "authorization",
        "cookie",
        "cookies",
        "apikey",
        "credential",
        "credentials",
    }
)
"""Words that make a field a credential wherever they stand in its name (plurals of "token"
are counts: ``input_tokens``)."""
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("access", "key"), ("auth", "key"), ("signing", "key")}
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"[^a-z0-9]+")


def secret_field(name: str) -> bool:
    """Whether a log field named ``name`` holds a credential, by the words of its name
    (``snake_case``, ``camelCase``, ``kebab-case``, ``dotted.names``)."""
    words = [w for w in _WORD.split(_CAMEL.sub("_", name).lower()) if w]
    return any(w in _SECRET_WORDS for w in words) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    )


_OWN_FIELDS = frozenset({"timestamp", "level"})
"""Fields structlog itself writes (never data): not scanned."""
_MEMO_CHARS = 256
_redact_short = functools.lru_cache(maxsize=4096)(redact_text)
"""Short values repeat (event names, loggers, repositories, actions): each is scanned once
per process, not on every line (the scan is most of a log line's cost)."""


def _redact(value: Any, key: str = "") -> Any:
    if key and secret_field(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return _redact_short(value) if len(value) <= _MEMO_CHARS else redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        # ProcessorFormatter's own entries (_record, _from_structlog), structlog's fields
        if key.startswith("_") or key in _OWN_FIELDS:
            continue
        event_dict[key] = _redact(event_dict[key], key)
    return event_dict


_LIBRARY_NOISE = ("color_message",)
"""Extras libraries put on their records for their own formatters (uvicorn's message with
terminal colour codes)."""


def _drop_library_noise(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in _LIBRARY_NOISE:
        event_dict.pop(key, None)
    return event_dict


class _BosunHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs (and replaces when called again)."""


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the standard library's root logger, at an entrypoint."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Exceptions are rendered to text before redaction, so a traceback is redacted too.
    last: list[Any] = [structlog.processors.format_exc_info, redact_processor]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            *last,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _drop_library_noise,
            timestamper,
        ],
        processors=[*last, structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _BosunHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _BosunHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("httpx", "httpcore", "arq.worker", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
