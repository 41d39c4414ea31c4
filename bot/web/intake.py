"""Group commit for webhook deliveries (SPEC §3.1, §10).

A request handler hands its verified delivery to ``DeliveryIntake.submit`` and waits. One
writer task takes every delivery waiting at that moment and, for the whole batch, runs one
database transaction (``INSERT … ON CONFLICT DO NOTHING RETURNING id``, then one ``UPDATE``
counting the redeliveries among them) and one Redis round trip that enqueues the new jobs.
Only then is each handler answered, so a ``202`` still means "stored". Batches form by
themselves: while one is being written, the next requests queue up behind it, so a quiet
server writes batches of one with no added delay and a busy one writes hundreds at a time.
A batch's enqueue overlaps the next batch's transaction (the two are independent: the enqueue
skips ids already queued), so a batch waits for one database transaction, not for the Redis
round trip of the batch before it.

On SQLite the transaction runs whole on the writer's own thread and connection (one hand-off
per batch, not one per statement through aiosqlite); on PostgreSQL it runs on the writer's
asyncpg connection. Both run the same statements (``_write_rows``).

The enqueue writes arq's own job format (``arq:job:<id>`` with ``PX`` expiry, then ``ZADD`` on
the queue), skipping ids whose job or result exists, in one Lua script: the same outcome as
arq's ``enqueue_job`` with ``_job_id``, without its per-job ``WATCH`` round trips. The job is
JSON, as ``bot.jobcodec`` writes it for every queue client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from sqlalchemy import Connection, Engine, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot import jobcodec
from bot.db.engine import sqlite_file_engine
from bot.db.models import Delivery
from bot.domain.states import DeliveryStatus
from bot.jobids import PROCESS_DELIVERY, delivery_job_id
from bot.queuewake import wake_channel

log = structlog.get_logger("bot.web.intake")

MAX_BATCH = 500

_ENQUEUE = f"""
local queued = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('EXISTS', '{result_key_prefix}' .. id) == 0
     and redis.call('SET', '{job_key_prefix}' .. id, ARGV[i + 1], 'PX', ARGV[1], 'NX') then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    queued = queued + 1
  end
end
if queued > 0 then
  redis.call('PUBLISH', KEYS[2], '')
end
return queued
"""


@dataclass(frozen=True)
class IncomingDelivery:
    id: str
    event: str
    action: str | None
    installation_id: int | None
    repository: str | None
    payload: str
    trace_parent: str | None = None
    """The span that received it (tracing on), continued by its processing."""


@dataclass(frozen=True)
class Recorded:
    """What became of one delivery: ``duplicate`` (its id was stored before), ``process``
    (it still needs processing: new, or a redelivery of one never processed), ``queued``
    (its job is in Redis; ``False`` when Redis failed and the reconciler will enqueue it)."""

    duplicate: bool
    process: bool
    queued: bool


@dataclass
class _Pending:
    delivery: IncomingDelivery
    done: asyncio.Future[Recorded] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


async def enqueue_jobs(
    redis: ArqRedis, function: str, args_by_id: dict[str, tuple[Any, ...]]
) -> int:
    """Enqueue ``function(*args)`` under each job id not already queued or finished, and wake
    the workers (``bot.queuewake``), in one round trip; returns how many were enqueued."""
    if not args_by_id:
        return 0
    now = timestamp_ms()
    argv: list[Any] = [redis.expires_extra_ms, now]
    for job_id, args in args_by_id.items():
        job = serialize_job(function, args, {}, None, now, serializer=jobcodec.serialize)
        argv += [job_id, job]
    queue = redis.default_queue_name
    result = await redis.eval(_ENQUEUE, 2, queue, wake_channel(queue), *argv)  # type: ignore[misc]
    return int(result)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is gone (not the statement refused)."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, InterfaceError)
    return isinstance(exc, ConnectionError)


class DeliveryIntake:
    """The one writer of deliveries in a web process. ``start`` it with the app, ``stop`` it
    at shutdown (waiting deliveries are written first)."""

    def __init__(self, engine: AsyncEngine, redis: ArqRedis, *, max_batch: int = MAX_BATCH):
        self.engine = engine
        self.redis = redis
        self.max_batch = max_batch
        self._waiting: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.written = 0
        self._conn: AsyncConnection | None = None
        self._file: Engine | None = sqlite_file_engine(engine)
        self._file_conn: Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock: int | None = None
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        # One statement for every batch, executed with a list of rows: compiled once and
        # cached; SQLAlchemy sends it as multi-row INSERTs ("insertmanyvalues").
        self._insert = (
            dialect.insert(Delivery)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(Delivery.id)
        )

    async def _connection(self) -> AsyncConnection:
        """The writer's own connection, held across batches: no pool round trip per batch."""
        if self._conn is None or self._conn.closed:
            self._conn = await self.engine.connect()
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def start(self) -> None:
        if self._task is None:
            if self._file is not None and self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="bosun-intake")
            self._task = asyncio.create_task(self._run(), name="bosun-intake")

    async def stop(self) -> None:
        if self._task is None:
            return
        await self._waiting.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._drop_connection()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close_file)
            self._thread.shutdown()
            self._thread = None

    def _close_file(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self._file_conn is not None:
            with contextlib.suppress(Exception):
                self._file_conn.close()
            self._file_conn = None

    async def submit(self, delivery: IncomingDelivery) -> Recorded:
        """Store the delivery (with the others waiting now) and enqueue its processing.
        Raises what the database raised when it could not be stored."""
        if self._task is None:
            raise RuntimeError("the delivery intake is not started")
        pending = _Pending(delivery)
        self._waiting.put_nowait(pending)
        return await pending.done

    async def _run(self) -> None:
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < self.max_batch and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            try:
                recorded = await self._record(batch)
            except Exception as exc:  # noqa: BLE001 -- every waiting handler gets the error
                log.error("delivery_batch_failed", size=len(batch), error=str(exc))
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
                    self._waiting.task_done()
                continue
            # The enqueue goes on while the next batch is written.
            task = asyncio.create_task(self._enqueue_and_answer(batch, *recorded))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _record(self, batch: list[_Pending]) -> tuple[list[str], set[str], set[str]]:
        """Store the batch: (its distinct ids, ids inserted now, ids to process)."""
        unique: dict[str, IncomingDelivery] = {}
        copies: Counter[str] = Counter()
        for pending in batch:
            unique.setdefault(pending.delivery.id, pending.delivery)
            copies[pending.delivery.id] += 1
        inserted, unprocessed = await self._store(list(unique.values()), copies)
        self.batches += 1
        self.written += len(inserted)
        return list(unique), inserted, inserted | unprocessed

    async def _enqueue_and_answer(
        self, batch: list[_Pending], ids: list[str], inserted: set[str], process: set[str]
    ) -> None:
        queued = False
        try:
            jobs = {delivery_job_id(i): (i,) for i in ids if i in process}
            await enqueue_jobs(self.redis, PROCESS_DELIVERY, jobs)
            queued = True
        except Exception as exc:  # noqa: BLE001 -- stored already; the reconciler enqueues
            log.warning("delivery_enqueue_failed", size=len(process), error=str(exc))
        first_seen: set[str] = set()
        for pending in batch:
            delivery_id = pending.delivery.id
            new = delivery_id in inserted and delivery_id not in first_seen
            first_seen.add(delivery_id)
            wanted = delivery_id in process
            if not pending.done.done():
                pending.done.set_result(
                    Recorded(duplicate=not new, process=wanted, queued=queued and wanted)
                )
            self._waiting.task_done()

    async def _store(
        self, deliveries: list[IncomingDelivery], copies: Counter[str]
    ) -> tuple[set[str], set[str]]:
        """Write the batch in one transaction on the writer's connection."""
        rows = [
            {
                "id": d.id,
                "event": d.event,
                "action": d.action,
                "installation_id": d.installation_id,
                "repository": d.repository,
                "payload": d.payload,
                "status": DeliveryStatus.RECEIVED,
                "trace_parent": d.trace_parent,
            }
            for d in deliveries
        ]
        if self._thread is not None:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._store_in_file, rows, deliveries, copies
            )
        while True:
            reused = self._conn is not None and not self._conn.closed
            conn = await self._connection()
            try:
                async with conn.begin():
                    return await conn.run_sync(self._write_rows, rows, deliveries, copies)
            except Exception as exc:
                await self._drop_connection()  # the next batch starts on a fresh connection
                if not (reused and _connection_lost(exc)):
                    raise
                # The held connection died with the server it was on (a database restart,
                # a failover): write the batch again at once on a fresh one rather than answer
                # this batch 503 long after the database came back.
                log.info("delivery_writer_reconnecting", error=str(exc)[:300])
            except BaseException:
                await self._drop_connection()
                raise

    def _store_in_file(
        self,
        rows: list[dict[str, Any]],
        deliveries: list[IncomingDelivery],
        copies: Counter[str],
    ) -> tuple[set[str], set[str]]:
        """The SQLite transaction, whole, on the writer's thread."""
        assert self._file is not None
        if self._file_conn is None:
            self._file_conn = self._file.connect()
        if self._lock is None:
            self._lock = os.open(f"{self._file.url.database}.intake-lock", os.O_RDWR | os.O_CREAT)
        # The web processes' writers take turns through a lock the kernel hands over at once;
        # left to SQLite, a writer that finds the database locked sleeps 1 ms, 2 ms, 5 ms...
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            with self._file_conn.begin():
                return self._write_rows(self._file_conn, rows, deliveries, copies)
        except BaseException:
            self._file_conn.close()
            self._file_conn = None
            raise
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _write_rows(
        self,
        conn: Connection,
        rows: list[dict[str, Any]],
        deliveries: list[IncomingDelivery],
        copies: Counter[str],
    ) -> tuple[set[str], set[str]]:
        """Insert the rows and count every other copy of an id as a redelivery; returns (ids
        inserted now, ids stored before and not processed yet)."""
        inserted = set(conn.execute(self._insert, rows).scalars())
        again: dict[int, list[str]] = {}
        for d in deliveries:
            extra = copies[d.id] - (1 if d.id in inserted else 0)
            if extra:
                again.setdefault(extra, []).append(d.id)
        unprocessed: set[str] = set()
        for extra, ids in again.items():
            counted = (
                update(Delivery)
                .where(Delivery.id.in_(ids))
                .values(redeliveries=Delivery.redeliveries + extra)
                .returning(Delivery.id, Delivery.status)
            )
            for delivery_id, status in conn.execute(counted).all():
                if delivery_id not in inserted and status == DeliveryStatus.RECEIVED:
                    unprocessed.add(delivery_id)
        return inserted, unprocessed


__all__ = [
    "PROCESS_DELIVERY",
    "DeliveryIntake",
    "IncomingDelivery",
    "Recorded",
    "delivery_job_id",
    "enqueue_jobs",
]
