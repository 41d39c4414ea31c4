"""What one webhook intake costs, part by part, in one process with nothing else running in it.

The pieces ``POST /webhooks/github`` does for each delivery, timed one at a time (wall and CPU
per operation): signature + JSON parse, the ORM insert in its own transaction (as the handler
does it), a Core insert for comparison, arq's ``enqueue_job``, a plain Redis pipeline for
comparison, the same two writes batched 50 deliveries at a time (what a group commit would pay
per delivery), and the two structlog lines. Helps read ``bench.webhook_ack``'s numbers.

    .venv/bin/python -m bench.ingest_parts [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from sqlalchemy import insert, text

from bench.loadgen import labeled_body
from bench.stats import add_redis_option, table
from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade
from bot.db.models import Delivery
from bot.services import redis_pool
from tests.services import POSTGRES_URL

N = 300
ROUNDS = 5
BATCH = 50
CONCURRENCY = 16


async def timed(name: str, op: Callable[[int], Awaitable[None]], rows: list[list[object]]) -> None:
    """Per-operation wall and CPU ms: the median of ``ROUNDS`` rounds of ``N`` operations
    (the median resists other work on a shared host)."""
    for i in range(20):  # warm up
        await op(-1 - i)
    walls, cpus = [], []
    for _ in range(ROUNDS):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(N):
            await op(i)
        walls.append((time.perf_counter() - wall0) / N * 1000)
        cpus.append((time.process_time() - cpu0) / N * 1000)
    rows.append([name, round(statistics.median(walls), 3), round(statistics.median(cpus), 3)])


async def run(database_url: str, redis_url: str) -> list[list[object]]:
    body = labeled_body()
    secret = b"bench"
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    engine = create_engine(database_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    redis = redis_pool(redis_url, f"{namespace}:queue")
    sink = io.StringIO()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sink),
    )
    log = structlog.get_logger("bench")
    rows: list[list[object]] = []
    ids: list[str] = []
    pending: list[Delivery] = []
    write_lock = asyncio.Lock()
    queued: list[str] = []

    async def verify_parse(_: int) -> None:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, signature)
        json.loads(body)

    async def orm_insert(_: int) -> None:
        async with sessions.begin() as session:
            session.add(Delivery(id=str(uuid.uuid4()), event="issues", payload=body.decode()))

    async def core_insert(_: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                insert(Delivery).values(id=str(uuid.uuid4()), event="issues", payload=body.decode())
            )

    async def orm_insert_batch(i: int) -> None:
        # One transaction per BATCH operations: the cost a group commit would pay per delivery.
        pending.append(Delivery(id=str(uuid.uuid4()), event="issues", payload=body.decode()))
        if len(pending) >= BATCH or i == N - 1:
            async with sessions.begin() as session:
                session.add_all(pending)
            pending.clear()

    async def redis_pipeline_batch(i: int) -> None:
        job = str(uuid.uuid4())
        ids.append(job)
        queued.append(job)
        if len(queued) >= BATCH or i == N - 1:
            pipe = redis.pipeline(transaction=True)
            for one in queued:
                pipe.psetex(f"arq:job:d:{one}", 86_400_000, b"x")
                pipe.zadd(f"{namespace}:queue", {f"d:{one}": time.time() * 1000})
            await pipe.execute()
            queued.clear()

    async def orm_insert_concurrent(i: int) -> None:
        # CONCURRENCY inserts at once, each in its own transaction (as under load).
        if i % CONCURRENCY == 0:
            await asyncio.gather(*(orm_insert(i) for _ in range(CONCURRENCY)))

    async def orm_insert_serialized(i: int) -> None:
        # The same, with the transactions queued on one asyncio.Lock instead of SQLite's lock.
        async def one() -> None:
            async with write_lock:
                await orm_insert(i)

        if i % CONCURRENCY == 0:
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))

    async def arq_enqueue(_: int) -> None:
        job = str(uuid.uuid4())
        ids.append(job)
        await redis.enqueue_job("process_delivery", job, _job_id=f"d:{job}")

    async def redis_pipeline(_: int) -> None:
        job = str(uuid.uuid4())
        ids.append(job)
        pipe = redis.pipeline(transaction=True)
        pipe.psetex(f"arq:job:d:{job}", 86_400_000, b"x")
        pipe.zadd(f"{namespace}:queue", {f"d:{job}": time.time() * 1000})
        await pipe.execute()

    async def two_log_lines(_: int) -> None:
        structlog.contextvars.bind_contextvars(delivery_id="x", installation_id=1, repo="o/r")
        log.info("delivery_recorded", gh_event="issues", action="labeled", queued=True)
        log.info("request_completed", method="POST", path="/webhooks/github", status=202)
        sink.seek(0)
        sink.truncate()

    try:
        await timed("HMAC-SHA256 verify + json.loads (12 KB body)", verify_parse, rows)
        await timed("ORM insert, own transaction (as the handler)", orm_insert, rows)
        await timed("Core insert, own transaction", core_insert, rows)
        await timed(f"ORM insert, {BATCH} per transaction (per delivery)", orm_insert_batch, rows)
        await timed(
            f"ORM insert, {CONCURRENCY} concurrent transactions (per delivery)",
            orm_insert_concurrent,
            rows,
        )
        await timed(
            f"same, {CONCURRENCY} concurrent behind one asyncio.Lock", orm_insert_serialized, rows
        )
        await timed("arq enqueue_job (as the handler)", arq_enqueue, rows)
        await timed("plain Redis MULTI: PSETEX + ZADD", redis_pipeline, rows)
        await timed(
            f"same, {BATCH} deliveries per MULTI (per delivery)", redis_pipeline_batch, rows
        )
        await timed("two structlog JSON lines", two_log_lines, rows)
    finally:
        keys = [f"arq:job:d:{j}" for j in ids] + [f"{namespace}:queue"]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
        await redis.aclose()
        await engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_parts")
    add_redis_option(parser)
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("BOSUN_BENCH_POSTGRES_URL", POSTGRES_URL),
        help="use PostgreSQL (a temporary schema in this database) instead of SQLite",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="one short round (1 round of 20 operations per part)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        global N, ROUNDS  # the scale every part is timed at
        N, ROUNDS = 20, 1
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-parts-"))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    url = f"sqlite+aiosqlite:///{root / 'bosun.db'}"
    if args.postgres:
        asyncio.run(_schema(args.postgres, f"CREATE SCHEMA {schema}"))
        url = f"{args.postgres}?search_path={schema}"
    try:
        rows = asyncio.run(run(url, args.redis))
    finally:
        if args.postgres:
            asyncio.run(_schema(args.postgres, f"DROP SCHEMA {schema} CASCADE"))
        shutil.rmtree(root, ignore_errors=True)
    database = "postgresql" if args.postgres else "sqlite"
    print(f"database: {database}; median of {ROUNDS} rounds of {N} operations each\n")
    print(table(["part of one intake", "wall ms/op", "CPU ms/op"], rows))
    return 0


async def _schema(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
