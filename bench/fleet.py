"""Eight agents at once on 2 cores, then a burst of queued runs across three workers (issue 18,
item 3).

**Part 1, eight at once.** Bosun as deployed (``bench.live_log.deployed``: one ``bosun
worker``, one ``bosun serve``, SQLite unless ``--database-url``, Redis, Docker, the GitHub
emulator). Idle first: signed ``watch`` deliveries (an event Bosun records and then ignores) at
``--rate``/s open loop for ``--seconds`` (``bench/loadgen.fixed_rate``, latency from the
scheduled send time) while a client reads the fleet API (``GET /api/v1/runs``) back to back.
Then eight issues are labelled; each run's ``script`` agent works for ``--work`` seconds (it
prints a line and rewrites a file every 0.5 s, then exits 3); once all eight are running the
same load is measured again. Targets: webhook p99 under load ≤ 1.5 times idle, fleet API p95 ≤
100 ms.

**Part 2, the queue.** ``--queue-runs`` issues labelled at once on one repository that allows 2
runs at a time, three ``bosun worker`` processes, PostgreSQL (a temporary schema in
``--postgres``); each agent prints a mark, works 1 s and exits. Every run must start exactly
once, in creation order, and every ``waiting: position N of M`` its status comment showed
(sampled every 0.25 s) must have been true (tests/queue_audit.py; tests/test_fleet_queue.py
checks the same with 12 runs).

    .venv/bin/python -m bench.fleet [--work 60] [--queue-runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.live_log import Deployment, deployed, make_token, runs_of
from bench.loadgen import Target, fixed_rate
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bench.webhook_ack import _schema, host_busy_seconds
from tests.queue_audit import STARTED_MARK, CommentSampler, audit, run_facts
from tests.services import POSTGRES_URL

RESULTS = Path(__file__).parent / "results"
ENDED = {"failed", "review_ready", "cancelled", "timed_out", "rejected", "merged"}
WORKER = r"""
import sys, time
seconds = float(sys.argv[1])
end = time.time() + seconds
n = 0
while time.time() < end:
    n += 1
    print(f"working {n}", flush=True)
    with open("progress.txt", "w") as f:
        f.write(str(n) * 1000)
    time.sleep(0.5)
sys.exit(3)
"""


def worker_command(seconds: float) -> list[str]:
    return ["python3", "-c", WORKER, str(seconds)]


async def measure(bosun: Deployment, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """Webhook ack latency at ``rate``/s and fleet API latency, at the same time."""
    port = int(bosun.webs[0].rsplit(":", 1)[1])
    target = Target(port=port, secret=b"webhook-secret", event="watch")
    api: list[float] = []
    errors = 0
    stop = asyncio.Event()

    async def poll_api() -> None:
        nonlocal errors
        async with httpx.AsyncClient(
            base_url=bosun.webs[0], headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as client:
            while not stop.is_set():
                started = time.perf_counter()
                answer = await client.get("/api/v1/runs")
                api.append(time.perf_counter() - started)
                errors += answer.status_code != 200
                await asyncio.sleep(0.05)

    host0, t0 = host_busy_seconds(), time.monotonic()
    poller = asyncio.create_task(poll_api())
    out = await fixed_rate(target, rate, seconds)
    stop.set()
    await poller
    hooks = summary([x * 1000 for x in out.latencies])
    fleet = summary([x * 1000 for x in api])
    return {
        "webhook_sent": len(out.sent),
        "webhook_acked": len(out.acked),
        "webhook_ms": {k: round(v, 2) for k, v in hooks.items()},
        "fleet_api_requests": len(api),
        "fleet_api_errors": errors,
        "fleet_api_ms": {k: round(v, 2) for k, v in fleet.items()},
        "host_busy_cores": round((host_busy_seconds() - host0) / (time.monotonic() - t0), 2),
        "load_average": loadavg(),
    }


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    raise TimeoutError(f"no {what} within {timeout:.0f} s")


def eight_at_once(args: argparse.Namespace) -> dict[str, Any]:
    with deployed(
        runs=args.agents,
        webs=1,
        command=worker_command(args.work),
        redis=args.redis,
        database_url=args.database_url,
    ) as bosun:
        token = make_token(bosun.database_url)
        idle = asyncio.run(measure(bosun, token, args.rate, args.seconds))
        bosun.label_issues(args.agents, title="Work")
        wait_for(
            lambda: [s for _, s in runs_of(bosun.database_url)].count("running") == args.agents,
            180,
            f"{args.agents} runs running",
        )
        started = time.monotonic()
        loaded = asyncio.run(measure(bosun, token, args.rate, args.seconds))
        still = [s for _, s in runs_of(bosun.database_url)].count("running")
        if time.monotonic() - started > args.work:
            print("warning: the agents ended before the loaded phase did", flush=True)
        ended = wait_for(
            lambda: (
                (s := [x for _, x in runs_of(bosun.database_url)]) and ENDED.issuperset(s) and s
            ),
            args.work + 180,
            "the runs' end",
        )
    ratio = loaded["webhook_ms"]["p99"] / idle["webhook_ms"]["p99"]
    return {
        "agents": args.agents,
        "work_seconds": args.work,
        "idle": idle,
        "loaded": loaded,
        "running_at_end_of_loaded_phase": still,
        "run_states": sorted(set(ended)),
        "webhook_p99_ratio": round(ratio, 2),
        "fleet_api_p95_ms": loaded["fleet_api_ms"]["p95"],
    }


def queue_burst(args: argparse.Namespace) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_schema(args.postgres, f"CREATE SCHEMA {schema}"))
    try:
        with deployed(
            runs=args.queue_runs,
            webs=1,
            command=["sh", "-c", f"echo {STARTED_MARK}; sleep 1; exit 3"],
            redis=args.redis,
            database_url=f"{args.postgres}?search_path={schema}",
            workers=3,
            repo_cap=2,
            worker={"max_concurrent_runs": 8, "queue_poll_seconds": args.queue_poll},
        ) as bosun:
            sampler = CommentSampler(bosun.emulator, bosun.repo)
            sampler.start()
            started = time.monotonic()
            try:
                bosun.label_issues(args.queue_runs, title="Queued")
                labelled = time.monotonic() - started
                wait_for(
                    lambda: (
                        (s := [x for _, x in runs_of(bosun.database_url)])
                        and len(s) == args.queue_runs
                        and ENDED.issuperset(s)
                    ),
                    args.queue_runs * 20 + 120,
                    "every queued run's end",
                )
                elapsed = time.monotonic() - started
            finally:
                sampler.stop()
            facts = run_facts(bosun.database_url)
    finally:
        asyncio.run(_schema(args.postgres, f"DROP SCHEMA {schema} CASCADE"))
    report = audit(facts, sampler.samples, lag=args.queue_poll + 4.0)
    if args.trace:
        trace = {"facts": [vars(f) for f in facts], "samples": [vars(s) for s in sampler.samples]}
        args.trace.write_text(json.dumps(trace))
    report["positions_wrong"] = report["positions_wrong"][:20]
    return {
        **report,
        "workers": 3,
        "repo_cap": 2,
        "seconds_to_label_all": round(labelled, 1),
        "seconds_until_all_ended": round(elapsed, 1),
        "comment_reads": sampler.reads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--work", type=float, default=60.0, help="seconds each agent works")
    parser.add_argument("--rate", type=float, default=50.0, help="webhook deliveries/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="each measured phase")
    parser.add_argument("--queue-runs", type=int, default=100)
    parser.add_argument("--queue-poll", type=float, default=1.0, help="worker.queue_poll_seconds")
    parser.add_argument("--database-url", default="", help="part 1; default SQLite")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BOSUN_BENCH_POSTGRES_URL", POSTGRES_URL),
        help="part 2 runs in a temporary schema of this database",
    )
    add_redis_option(parser)
    parser.add_argument("--skip", choices=["agents", "queue"], help="run one part only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--trace", type=Path, help="write the queue part's runs and samples here")
    parser.add_argument("--smoke", action="store_true", help="2 agents for 6 s, 6 queued runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.agents, args.work, args.seconds, args.queue_runs = 2, 8.0, 2.0, 6
    if not (1 <= args.agents <= 32 and args.seconds < args.work and 2 <= args.queue_runs <= 500):
        parser.error("--agents 1..32, --seconds below --work, --queue-runs 2..500")
    out_path = args.out or (
        Path(tempfile.gettempdir()) / "fleet.smoke.json" if args.smoke else RESULTS / "fleet.json"
    )
    load_start = loadavg()
    result: dict[str, Any] = {"benchmark": "fleet", "load_average_at_start": load_start}
    if args.skip != "agents":
        result["eight_at_once"] = part = eight_at_once(args)
        rows = [
            [phase, part[phase]["webhook_ms"]["p50"], part[phase]["webhook_ms"]["p99"],
             part[phase]["webhook_acked"], part[phase]["fleet_api_ms"]["p50"],
             part[phase]["fleet_api_ms"]["p95"], part[phase]["host_busy_cores"],
             part[phase]["load_average"][0]]
            for phase in ("idle", "loaded")
        ]  # fmt: skip
        print(
            table(
                [
                    "phase",
                    "webhook p50 ms",
                    "webhook p99 ms",
                    "acked",
                    "fleet API p50 ms",
                    "fleet API p95 ms",
                    "host busy cores",
                    "load 1 min",
                ],
                rows,
            )
        )
        print(f"webhook p99 loaded / idle: {part['webhook_p99_ratio']}", flush=True)
    if args.skip != "queue":
        result["queue"] = queue = queue_burst(args)
        print({k: v for k, v in queue.items() if k != "positions_wrong"}, flush=True)
        print(f"positions wrong: {len(queue['positions_wrong'])}", flush=True)
    result["load_average_at_end"] = loadavg()
    write_result(out_path, result)
    print(f"written to {out_path}")
    queue = result.get("queue", {})
    return 1 if queue.get("not_exactly_once") or queue.get("admitted_out_of_order") else 0


if __name__ == "__main__":
    raise SystemExit(main())
