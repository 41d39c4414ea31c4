"""Queue pickup latency and the CPU of an idle worker (issue 18, item 4).

Targets: enqueue → job start p99 ≤ 20 ms, and an idle worker using ≤ 1 % of a core, without
polling Redis fast. The real CLI (``bosun migrate``, ``bosun worker``) on a temporary SQLite
file and the local Redis under a random namespace. First the worker is left idle for
``--idle-seconds`` (after its start-up jobs) and its CPU time read from /proc; then ``--jobs``
``ping`` jobs are enqueued one at a time, each after a random pause of 50 to 250 ms (the worker
is idle between them, the case where a polling worker is slowest). Pickup is arq's own
``start_time - enqueue_time`` of each job (the host's clock, millisecond resolution).

    .venv/bin/python -m bench.queue_pickup [--poll-delay 0.5] [--jobs 300] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from arq.jobs import Job

from bench.servers import BOSUN, _tree_cpu_ticks
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bot.services import redis_pool

RESULTS = Path(__file__).parent / "results"


def _env(root: Path, redis_url: str, namespace: str, poll_delay: float) -> dict[str, str]:
    return {
        **os.environ,
        "BOSUN_DATABASE__URL": f"sqlite+aiosqlite:///{root / 'bosun.db'}",
        "BOSUN_REDIS__URL": redis_url,
        "BOSUN_REDIS__NAMESPACE": namespace,
        "BOSUN_DATA_DIR": str(root / "data"),
        "BOSUN_LOG_FORMAT": "json",
        "BOSUN_LOG_LEVEL": "warning",
        "BOSUN_WORKER__POLL_DELAY": str(poll_delay),
    }


def cpu_seconds(pid: int) -> float:
    return _tree_cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


async def pickups(redis_url: str, queue: str, jobs: int, pause: tuple[float, float]) -> list[Job]:
    client = redis_pool(redis_url, queue)
    try:
        first = await client.enqueue_job("ping", payload="ready")
        assert first is not None
        await first.result(timeout=60, poll_delay=0.05)  # the worker is up and polling
        done: list[Job] = []
        for _ in range(jobs):
            await asyncio.sleep(random.uniform(*pause))
            job = await client.enqueue_job("ping", payload="pickup")
            assert job is not None
            done.append(job)
        for job in done:
            await job.result(timeout=30, poll_delay=0.05)
        return done
    finally:
        await client.close(close_connection_pool=True)


async def delays_ms(redis_url: str, queue: str, jobs: list[Job]) -> list[float]:
    client = redis_pool(redis_url, queue)
    try:
        out = []
        for job in jobs:
            info = await Job(job.job_id, client, _deserializer=client.job_deserializer).info()
            assert info is not None and info.enqueue_time is not None
            start = getattr(info, "start_time", None)
            assert start is not None, f"job {job.job_id} has no start time"
            out.append((start - info.enqueue_time).total_seconds() * 1000)
        return out
    finally:
        await client.close(close_connection_pool=True)


def purge(redis_url: str, namespace: str, jobs: list[Job]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [f"arq:job:{j.job_id}" for j in jobs] + [f"arq:result:{j.job_id}" for j in jobs]
    keys += list(client.scan_iter(match=f"*{namespace}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_pickup")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--poll-delay", type=float, default=None, help="worker.poll_delay (default: the setting's)"
    )
    add_redis_option(parser)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one short round (10 jobs, 1 s idle)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.idle_seconds = 10, 1.0
    if not (1 <= args.jobs <= 10_000 and 1 <= args.idle_seconds <= 600):
        parser.error("--jobs 1..10000, --idle-seconds 1..600")
    from bot.settings import WorkerSettings

    poll_delay = args.poll_delay or WorkerSettings().poll_delay
    out_path = args.out or (
        Path(tempfile.gettempdir()) / "queue_pickup.smoke.json"
        if args.smoke
        else RESULTS / "queue_pickup.json"
    )

    load_start = loadavg()
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-pickup-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    queue = f"{namespace}:queue"
    env = _env(root, args.redis, namespace, poll_delay)
    jobs: list[Job] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([str(BOSUN), "migrate"], env=env, check=True, capture_output=True)
        with (root / "worker.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(BOSUN), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        # Up and past its start-up jobs (reconcile, sweep), then idle.
        jobs = asyncio.run(pickups(args.redis, queue, 0, (0, 0)))
        time.sleep(2.0)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cores = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        busy0, t1 = cpu_seconds(proc.pid), time.monotonic()
        jobs = asyncio.run(pickups(args.redis, queue, args.jobs, (0.05, 0.25)))
        busy_cores = (cpu_seconds(proc.pid) - busy0) / (time.monotonic() - t1)
        delays = asyncio.run(delays_ms(args.redis, queue, jobs))
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited; see {root / 'worker.log'}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        purge(args.redis, namespace, jobs)
        shutil.rmtree(root, ignore_errors=True)
    stats = summary(delays)
    text = table(
        ["enqueue → job start (ms)", "n", "p50", "p95", "p99", "max"],
        [
            [
                "ping jobs, worker idle between",
                len(delays),
                *(stats[k] for k in ("p50", "p95", "p99", "max")),
            ]
        ],
    )
    text += (
        f"\n\nworker.poll_delay {poll_delay} s; idle worker CPU {idle_cores * 100:.2f} % of a core "
        f"over {args.idle_seconds:g} s; while picking up {busy_cores * 100:.1f} %; "
        f"load average {load_start} → {loadavg()}"
    )
    print(text)
    result: dict[str, Any] = {
        "benchmark": "queue_pickup",
        "load_average_at_start": load_start,
        "load_average_at_end": loadavg(),
        "poll_delay_s": poll_delay,
        "jobs": len(delays),
        "pickup_ms": {k: round(v, 2) for k, v in stats.items()},
        "idle_worker_cpu_percent": round(idle_cores * 100, 3),
        "busy_worker_cpu_percent": round(busy_cores * 100, 2),
        "table": text,
    }
    write_result(out_path, result)
    print(f"written to {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
