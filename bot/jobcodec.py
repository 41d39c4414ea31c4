"""The job queue's wire format: JSON, never pickle.

arq stores every job (``arq:job:<id>``) and every result (``arq:result:<id>``) as bytes made by
a serializer, pickle by default. Unpickling runs whatever the bytes say, so with pickle anyone
who can write to Redis could run code in the worker. Bosun's jobs take JSON-safe arguments and
return JSON-safe results, and every ``ArqRedis`` and ``Worker`` it builds uses this pair
(``bot.services.redis_pool``, ``jobs.worker.build_worker``; ``bot.web.intake`` serializes with it
directly). A payload that is not a JSON object is refused with a warning; arq then records the
job as failed without running it.

Results may hold an exception (a failed job's): it is written as its type name and message and
read back as a ``JobError``. Datetimes are written as ISO 8601 text. Anything else that is not
JSON-safe is refused, so a job enqueued with such an argument fails at the enqueue.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, NoReturn

import structlog

log = structlog.get_logger("bot.jobcodec")

_ERROR_KEY = "__bosun_error__"
_PICKLE_PROTOCOL_MARK = 0x80  # the first byte of every pickle of protocol 2 and later


class JobError(Exception):
    """A failed job's exception, as read back from its stored result."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.message = message


class PayloadRejected(ValueError):
    """Bytes from Redis that are not a job or result Bosun wrote."""


def _encode(value: Any) -> Any:
    if isinstance(value, BaseException):
        kind = value.kind if isinstance(value, JobError) else type(value).__name__
        message = value.message if isinstance(value, JobError) else str(value)
        return {_ERROR_KEY: kind, "message": message[:2000]}
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-safe in a job or its result")


def _decode(obj: dict[str, Any]) -> Any:
    if obj.keys() == {_ERROR_KEY, "message"}:
        kind, message = obj[_ERROR_KEY], obj["message"]
        if isinstance(kind, str) and isinstance(message, str):
            return JobError(kind, message)
    return obj


def serialize(data: dict[str, Any]) -> bytes:
    """A job or result as JSON bytes (raises ``TypeError`` on a value that is not JSON-safe)."""
    return json.dumps(data, default=_encode, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    """A job or result from JSON bytes. Anything else is refused, never interpreted."""
    try:
        value = json.loads(raw, object_hook=_decode)
    except (ValueError, RecursionError) as exc:
        _rejected(raw, "not JSON", exc)
    if not isinstance(value, dict):
        _rejected(raw, "not a JSON object", None)
    return value


def _rejected(raw: bytes, reason: str, cause: BaseException | None) -> NoReturn:
    looks_pickled = bool(raw) and raw[0] == _PICKLE_PROTOCOL_MARK
    log.warning(
        "job_payload_rejected",
        reason=reason,
        size=len(raw),
        pickle=looks_pickled,
        detail="refused, never run: Bosun's jobs are JSON (a forged or foreign job?)",
    )
    raise PayloadRejected(f"job payload refused: {reason}") from cause


__all__ = ["JobError", "PayloadRejected", "deserialize", "serialize"]
