"""Webhook ack latency and intake throughput of ``bosun serve`` (SPEC §10).

Targets: p99 ≤ 10 ms at 200 signed deliveries/s; ≥ 2,000 deliveries/s sustained on 2 cores
with none lost or duplicated. The real CLI (``bosun migrate``, ``bosun serve``) on a temporary
SQLite file and the local Redis under a random namespace; no worker runs, so every delivery's
``process_delivery`` job stays queued and can be counted. Afterwards: the deliveries table holds
exactly the acknowledged ids, the queue one job per delivery; then the namespace is purged.

    .venv/bin/python -m bench.webhook_ack
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import redis
from sqlalchemy import text

from bench.loadgen import Outcome, Target, fixed_rate, saturate
from bench.servers import BosunServe, ProbotApp, Receiver
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bot.db.engine import create_engine
from tests.services import POSTGRES_URL

RESULTS = Path(__file__).parent / "results"
SECRET = "bench-webhook-secret"
# Samples only while a thread holds the GIL (CPU attribution), one stack root per thread.
PY_SPY_FLAGS = ["--rate", "250", "--format", "raw", "--nonblocking", "--gil", "--threads"]


def host_busy_seconds() -> float:
    """CPU seconds the whole host spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def phase_row(name: str, out: Outcome, cpu: float) -> dict[str, Any]:
    lat = summary([x * 1000 for x in out.latencies])
    return {
        "phase": name,
        "sent": len(out.sent),
        "acked_202": len(out.acked),
        "errors": out.errors,
        "statuses": out.statuses,
        "seconds": round(out.seconds, 2),
        "rate_per_s": round(out.rate, 1),
        "peak_connections": out.peak_connections,
        "latency_ms": {k: round(v, 2) for k, v in lat.items()},
        "server_cpu_cores": round(cpu / out.seconds, 2) if out.seconds else 0,
    }


async def run_phases(
    target: Target, server: Receiver, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    rows: list[dict[str, Any]] = []
    sent: list[str] = []
    acked: list[str] = []

    async def phase(name: str, coro: Any) -> Outcome:
        cpu0, host0, gen0 = server.cpu_seconds(), host_busy_seconds(), own_cpu_seconds()
        out: Outcome = await coro
        row = phase_row(name, out, server.cpu_seconds() - cpu0)
        if out.seconds:
            row["host_busy_cores"] = round((host_busy_seconds() - host0) / out.seconds, 2)
            row["loadgen_cores"] = round((own_cpu_seconds() - gen0) / out.seconds, 2)
            row["other_cores"] = round(
                row["host_busy_cores"] - row["loadgen_cores"] - row["server_cpu_cores"], 2
            )
        rows.append(row)
        sent.extend(out.sent)
        acked.extend(out.acked)
        print(
            f"{name:24s} {row['rate_per_s']:8.1f}/s  p50 {row['latency_ms']['p50']:7.2f} ms  "
            f"p99 {row['latency_ms']['p99']:8.2f} ms  non-202 {row['sent'] - row['acked_202']}"
            f"  CPU: server {row['server_cpu_cores']}, loadgen {row.get('loadgen_cores')}, "
            f"others {row.get('other_cores')} cores",
            flush=True,
        )
        return out

    await phase("warm-up 100/s", fixed_rate(target, 100, min(3, args.seconds)))
    await phase(f"fixed {args.rate:g}/s", fixed_rate(target, args.rate, args.seconds))
    best, best_rate = 1, 0.0
    for concurrency in (1, 4) if args.smoke else (1, 4, 16, 64):
        out = await phase(f"ramp c={concurrency}", saturate(target, concurrency, args.ramp_seconds))
        if out.rate > best_rate * 1.05:
            best, best_rate = concurrency, out.rate
    profiler = None
    if args.py_spy and server.proc is not None:
        where = ["--pid", str(server.proc.pid), "--output", str(args.py_spy_out)]
        profiler = subprocess.Popen(
            [
                str(args.py_spy),
                "record",
                *where,
                *PY_SPY_FLAGS,
                "--duration",
                str(int(args.seconds)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    await phase(f"sustained c={best}", saturate(target, best, args.seconds))
    if profiler is not None:
        profiler.wait(60)
    return rows, sent, acked


async def stored_deliveries(url: str) -> tuple[list[str], dict[str, int]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = [r[0] for r in await conn.execute(text("SELECT id FROM deliveries"))]
            grouped = await conn.execute(
                text("SELECT status, count(*) FROM deliveries GROUP BY status")
            )
            return rows, {str(k): int(v) for k, v in grouped}
    finally:
        await engine.dispose()


def verify(
    server: BosunServe, redis_url: str, namespace: str, sent: list[str], acked: list[str]
) -> dict[str, Any]:
    rows, statuses = asyncio.run(stored_deliveries(server.database_url))
    stored = set(rows)
    client = redis.Redis.from_url(redis_url)
    queued = client.zcard(f"{namespace}:queue")
    jobs = 0
    for start in range(0, len(acked), 1000):
        pipe = client.pipeline(transaction=False)
        for delivery in acked[start : start + 1000]:
            pipe.exists(f"arq:job:d:{delivery}")
        jobs += sum(pipe.execute())
    return {
        "sent": len(sent),
        "acked_202": len(acked),
        "unique_ids_sent": len(set(sent)),
        "rows": len(rows),
        "duplicate_rows": len(rows) - len(stored),
        "acked_but_missing": len(set(acked) - stored),
        "stored_but_not_sent": len(stored - set(sent)),
        "delivery_status": statuses,
        "queue_zcard": queued,
        "acked_with_job": jobs,
        "ok": len(set(acked) - stored) == 0
        and len(rows) == len(stored)
        and not stored - set(sent)
        and jobs == len(acked)
        and queued == len(stored),
    }


def purge(redis_url: str, namespace: str, sent: list[str]) -> int:
    client = redis.Redis.from_url(redis_url)
    keys = [f"arq:job:d:{d}" for d in sent] + [f"arq:retry:d:{d}" for d in sent]
    keys += list(client.scan_iter(match=f"*{namespace}*", count=1000))
    removed = 0
    for start in range(0, len(keys), 1000):
        removed += cast(int, client.delete(*keys[start : start + 1000]))
    return removed


def render(rows: list[dict[str, Any]]) -> str:
    return table(
        [
            "phase",
            "deliveries/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "not acked",
            "CPU server / loadgen / others",
        ],
        [
            [
                r["phase"],
                r["rate_per_s"],
                r["latency_ms"]["p50"],
                r["latency_ms"]["p95"],
                r["latency_ms"]["p99"],
                r["latency_ms"]["max"],
                r["sent"] - r["acked_202"],
                f"{r['server_cpu_cores']} / {r.get('loadgen_cores')} / {r.get('other_cores')}",
            ]
            for r in rows
        ],
    )


async def _schema(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_ack")
    parser.add_argument("--rate", type=float, default=200, help="fixed-rate phase, deliveries/s")
    parser.add_argument("--seconds", type=float, default=30, help="fixed and sustained phases")
    parser.add_argument("--ramp-seconds", type=float, default=5)
    add_redis_option(parser)
    parser.add_argument("--log-level", default="info", help="bosun serve's log level")
    parser.add_argument("--web-workers", type=int, default=1, help="bosun serve --workers N")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("BOSUN_BENCH_POSTGRES_URL", POSTGRES_URL),
        help="use PostgreSQL (a temporary schema in this database) instead of SQLite",
    )
    parser.add_argument(
        "--probot", action="store_true", help="measure the no-op Probot app instead"
    )
    parser.add_argument("--out", type=Path, help="default: bench/results/<receiver>.json")
    parser.add_argument(
        "--py-spy", type=Path, help="py-spy binary: profile the server during the sustained phase"
    )
    parser.add_argument("--py-spy-out", type=Path, default=RESULTS / "webhook_ack.pyspy.txt")
    parser.add_argument(
        "--smoke", action="store_true", help="one short round (1 s phases) to check it still runs"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds = args.ramp_seconds = 1
    if not (1 <= args.rate <= 20_000 and 1 <= args.seconds <= 120 and 1 <= args.ramp_seconds <= 60):
        parser.error("rate 1..20000/s, seconds 1..120, ramp-seconds 1..60")
    name = "probot_intake" if args.probot else "webhook_ack_pg" if args.postgres else "webhook_ack"
    out_path = args.out or (
        Path(tempfile.gettempdir()) / f"{name}.smoke.json"
        if args.smoke
        else RESULTS / f"{name}.json"
    )

    load_before = loadavg()
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-ack-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    server: Receiver
    if args.probot:
        server = ProbotApp(root, SECRET)
    else:
        database_url = None
        if args.postgres:
            schema = namespace.replace("-", "_")
            asyncio.run(_schema(args.postgres, f"CREATE SCHEMA {schema}"))
            database_url = f"{args.postgres}?search_path={schema}"
        server = BosunServe(
            root,
            SECRET,
            args.redis,
            namespace,
            args.log_level,
            database_url,
            workers=args.web_workers,
        )
    sent: list[str] = []
    check: dict[str, Any] = {}
    try:
        server.start()
        print(f"{server.name} on 127.0.0.1:{server.port}", flush=True)
        target = Target(port=server.port, secret=SECRET.encode(), ok_status=server.ok_status)
        rows, sent, acked = asyncio.run(run_phases(target, server, args))
        time.sleep(0.5)
        server.stop()
        if isinstance(server, BosunServe):
            check = verify(server, args.redis, namespace, sent, acked)
    finally:
        server.stop()
        removed = purge(args.redis, namespace, sent) if sent and not args.probot else 0
        if args.postgres:
            asyncio.run(_schema(args.postgres, f"DROP SCHEMA {schema} CASCADE"))
        shutil.rmtree(root, ignore_errors=True)
    text = render(rows)
    print("\n" + text)
    if check:
        print(f"\nintegrity: {check}\npurged {removed} Redis keys")
    write_result(
        out_path,
        {
            "load_average_at_start": load_before,
            "benchmark": name,
            "receiver": server.name,
            "log_level": None if args.probot else args.log_level,
            "database": None if args.probot else ("postgresql" if args.postgres else "sqlite"),
            "body_bytes": len(target.body),
            "phases": rows,
            "integrity": check or None,
            "table": text,
        },
    )
    print(f"written to {out_path}")
    return 0 if args.probot or check.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
