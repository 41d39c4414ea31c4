"""Jobs and results travel as JSON: a job forged in Redis as a pickle is refused, never run, and
the worker carries on with the next job (real Redis, a real arq worker in burst mode)."""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from arq.constants import job_key_prefix
from arq.jobs import Job, JobStatus, SerializationError
from arq.utils import timestamp_ms

from bot import jobcodec
from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.services import Services
from bot.settings import Settings
from jobs.worker import build_worker


class MakeDirectory:
    """Unpickling this makes a directory: the smallest proof that a pickle runs code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def forged_job(marker: Path) -> bytes:
    """A job in arq's format for Bosun's ``ping``, pickled, whose loading makes ``marker``."""
    job = {"t": 1, "f": "ping", "a": [], "k": {"payload": MakeDirectory(marker)}, "et": 0}
    return pickle.dumps(job)


async def _migrated(settings: Settings) -> None:
    engine = create_engine(settings.database.url)
    await upgrade(engine)  # the worker's start-up reconcile reads the database
    await engine.dispose()


async def test_forged_pickle_job_is_refused_and_the_worker_runs_the_next_job(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The payload is armed: pickle, arq's default, would run it.
    armed = tmp_path / "armed"
    pickle.loads(forged_job(armed))
    assert armed.is_dir()

    await _migrated(settings)
    marker = tmp_path / "pwned"
    services = Services.build(settings)
    try:
        redis = services.redis
        forged_id = f"{settings.redis.namespace}-forged"
        now = timestamp_ms()
        # Pushed the way arq itself queues a job: the job key, then the queue's sorted set.
        await redis.set(job_key_prefix + forged_id, forged_job(marker), px=60_000)
        await redis.zadd(settings.redis.queue_name, {forged_id: now - 1000})
        legit = await redis.enqueue_job(
            "ping", payload="after", _job_id=f"{settings.redis.namespace}-ping"
        )
        assert legit is not None

        worker = build_worker(settings, burst=True, handle_signals=False)
        with structlog.testing.capture_logs() as logs, caplog.at_level(logging.WARNING):
            try:
                await worker.main()
            finally:
                await worker.close()

        assert not marker.exists(), "the forged pickle was unpickled in the worker"
        assert await legit.status() is JobStatus.complete
        assert (await legit.result(timeout=5))["payload"] == "after"
        assert worker.jobs_failed == 1  # the forged job, refused without running
        rejected = [e for e in logs if e["event"] == "job_payload_rejected"]
        assert rejected and rejected[0]["pickle"] is True
        assert rejected[0]["log_level"] == "warning"
        assert f"deserializing job {forged_id} failed" in caplog.text
        # arq recorded it as failed and dropped it from the queue: it will not come back.
        forged = Job(forged_id, redis, _deserializer=redis.job_deserializer)
        info = await forged.result_info()
        assert info is not None and info.success is False
        assert isinstance(info.result, jobcodec.JobError)
        assert info.result.kind == "DeserializationError"
        assert await redis.zscore(settings.redis.queue_name, forged_id) is None
        assert await redis.exists(job_key_prefix + forged_id) == 0
        # Jobs and results are stored as JSON.
        raw = await redis.get(f"arq:result:{legit.job_id}")
        assert raw is not None and raw.startswith(b"{")
    finally:
        await services.close()


async def test_enqueue_refuses_arguments_that_are_not_json(settings: Settings) -> None:
    services = Services.build(settings)
    try:
        with pytest.raises(SerializationError):
            await services.redis.enqueue_job("ping", payload={1, 2})
    finally:
        await services.close()


def test_failed_results_keep_the_exception_as_type_and_message() -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    raw = jobcodec.serialize({"r": ValueError("bad run id"), "when": stamp, "a": ("x", 1)})
    back = jobcodec.deserialize(raw)
    assert isinstance(back["r"], jobcodec.JobError)
    assert (back["r"].kind, back["r"].message) == ("ValueError", "bad run id")
    assert str(back["r"]) == "ValueError: bad run id"
    assert back["when"] == "2026-01-02T03:04:05+00:00"
    assert back["a"] == ["x", 1]
    # Re-serializing a JobError keeps it as it was.
    assert jobcodec.deserialize(jobcodec.serialize({"r": back["r"]}))["r"].kind == "ValueError"


@pytest.mark.parametrize(
    "raw",
    [
        pickle.dumps({"f": "ping"}),
        b"\x80\x05garbage",
        b"[1, 2]",
        b'"text"',
        b"{" * 100_000,
        uuid.uuid4().bytes,
    ],
)
def test_anything_but_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(jobcodec.PayloadRejected):
        jobcodec.deserialize(raw)
