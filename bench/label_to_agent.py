"""Label → agent process running in its container (SPEC §10: p50 ≤ 2 s, p95 ≤ 5 s warm).

The real stack on loopback: the GitHub emulator in its own process, Bosun web + arq worker
(``tests.stack.running_stack``) on SQLite, Redis and the local Docker engine. The agent is a
``script`` profile whose first action prints ``date +%s.%N`` inside the container (the same
clock as the host), so "agent process started" is read from the run's first ``log`` event.

One cold run first (fresh mirror, no cached token or permission, first Docker client), then
``--runs`` issues labelled one after another, each waiting for the previous run to finish.

    .venv/bin/python -m bench.label_to_agent --runs 20
    .venv/bin/python -m bench.label_to_agent --smoke    # one short round: does it still run?

A stage that could not be measured (a probe that no longer fires after a refactor) fails the
benchmark rather than leaving a hole in the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bench import probes
from bench.experiments import shared_ssl_context
from bench.stages import PREPARE_PARTS, STAGES, Sample, measure
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bot.logs import configure_logging
from tests.emulator.client import EmulatorClient
from tests.emulator.world import WebhookReceiver, World, make_source_repo
from tests.stack import AGENT_IMAGE, BosunStack, free_port, make_stack_settings, running_stack

DEFAULT_OUT = Path(__file__).parent / "results" / "label_to_agent.json"
AGENT = "date +%s.%N; echo benchmark > bench.txt"
DONE_STATES = {"review_ready", "failed", "cancelled", "timed_out", "rejected", "merged"}


def start_emulator(data: Path) -> tuple[subprocess.Popen[str], str]:
    """The emulator in its own process (GitHub is not inside Bosun's process either)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator", "serve", "--port", "0", "--data", str(data)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"emulator did not start (said {url!r})")
    return proc, url


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def deliveries_settled(stack: BosunStack) -> bool:
    pending = stack.db("SELECT count(*) FROM deliveries WHERE status IN ('received','processing')")
    return bool(pending[0][0] == 0)


def run_of_issue(stack: BosunStack, number: int) -> tuple[str, str, str] | None:
    rows = stack.db(
        "SELECT runs.id, runs.delivery_id, runs.state FROM runs JOIN tasks ON tasks.id = "
        "runs.task_id WHERE tasks.issue_number = ?",
        number,
    )
    return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None


async def job_done(redis: Any, job_id: str) -> bool:
    from arq.jobs import Job

    return (
        await Job(job_id, redis, _queue_name="", _deserializer=redis.job_deserializer).result_info()
        is not None
    )


def one_run(stack: BosunStack, redis: Any, recorder: probes.Recorder, index: int) -> Sample:
    number = stack.emulator.create_issue(
        stack.repo, f"Benchmark issue {index}", "Write bench.txt.", "alice"
    )
    wait(
        lambda: len(stack.emulator.deliveries(wait=True)) and deliveries_settled(stack),
        30,
        "the issues.opened delivery to be processed",
    )
    time.sleep(0.2)  # idle host before the label
    t_label = time.time()
    stack.label(number)
    run = wait(
        lambda: (r := run_of_issue(stack, number)) and r[2] in DONE_STATES and r, 120, "the run"
    )
    run_id = run[0]
    wait(lambda: stack.call(job_done(redis, f"run:{run_id}")), 30, "the run job's result")
    return stack.call(measure(stack, redis, recorder, run_id, run[1], t_label, run[2]))


def render(cold: Sample, warm: list[Sample]) -> tuple[str, dict[str, Any]]:
    rows, data = [], {}
    for key, title in STAGES[:8]:
        rows.append(_row(key, title, cold.stages, [s.stages for s in warm], data))
    for key, title in PREPARE_PARTS:
        if any(key in s.timings for s in warm):
            rows.append(_row(key, title, cold.timings, [s.timings for s in warm], data))
    for key, title in STAGES[8:]:
        rows.append(_row(key, title, cold.stages, [s.stages for s in warm], data))
    text = table(["stage (seconds)", "p50", "p95", "max", "cold run"], rows)
    return text, data


def _row(
    key: str,
    title: str,
    cold: dict[str, float],
    warm: list[dict[str, float]],
    data: dict[str, Any],
) -> list[Any]:
    stats = summary([values[key] for values in warm if key in values])
    data[key] = {**stats, "cold": cold.get(key)}
    return [title, stats["p50"], stats["p95"], stats["max"], cold.get(key, "—")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.label_to_agent")
    parser.add_argument("--runs", type=int, default=20, help="warm runs after the cold one")
    parser.add_argument("--out", type=Path, help=f"result file (default {DEFAULT_OUT})")
    add_redis_option(parser)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database)")
    parser.add_argument(
        "--experiment-shared-ssl",
        action="store_true",
        help="preview a fix: all httpx clients share one SSL context (bench/experiments.py)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=0,
        help="sandbox.pool_size: started sandboxes kept ready (0: every run starts its own)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one short round (the cold run and one warm run) to check the benchmark still runs",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs = 1
    if not 1 <= args.runs <= 200:
        parser.error("--runs must be 1..200")
    out_path: Path = args.out or (
        Path(tempfile.gettempdir()) / "label_to_agent.smoke.json" if args.smoke else DEFAULT_OUT
    )
    configure_logging(args.log_level, "json")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    load_before = loadavg()
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-"))
    root.chmod(0o755)  # the remapped sandbox uid must traverse it to the workspaces
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    emulator_proc, url = start_emulator(root / "emulator")
    emulator = EmulatorClient(url)
    try:
        port = free_port()
        app = emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
        source = make_source_repo(
            root / "source", {"README.md": "# Hello\n", "src/app.py": "print('hi')\n"}
        )
        world = World(emulator, app, None, WebhookReceiver(url=""), source)  # type: ignore[arg-type]
        work = root / "work"
        work.mkdir(mode=0o755)
        settings = make_stack_settings(
            root,
            world,
            args.redis,
            namespace,
            work,
            port,
            profiles={"bench": {"runner": "script", "command": ["sh", "-c", AGENT]}},
            default_profile="bench",
            sandbox={"pool_size": args.pool_size},
        )
        experiment = shared_ssl_context() if args.experiment_shared_ssl else nullcontext()
        with (
            experiment,
            probes.installed() as recorder,
            running_stack(settings, world, port) as stack,
        ):
            world.repo = emulator.create_repo("octo", "hello", str(source))
            emulator.add_user("alice", "octo/hello", "write")
            redis = stack.call(_arq(args.redis))
            samples: list[Sample] = []
            for index in range(args.runs + 1):
                sample = one_run(stack, redis, recorder, index)
                samples.append(sample)
                total = sample.stages.get("received_to_agent", float("nan"))
                print(
                    f"run {index:2d} {sample.state:12s} {sample.sandbox:6s} "
                    f"webhook→agent {total:.3f}s",
                    flush=True,
                )
            stack.call(redis.aclose())
    finally:
        emulator.close()
        emulator_proc.terminate()
        emulator_proc.wait(10)
        asyncio.run(_purge(args.redis, namespace, root / "bosun.db"))
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    cold, warm = samples[0], samples[1:]
    unmeasured = sorted({key for s in samples for key in s.unmeasured()})
    text, data = render(cold, warm)
    print(
        f"\nLabel → agent process started ({len(warm)} warm runs + 1 cold), {AGENT_IMAGE}, "
        f"pool size {args.pool_size}, load {load_before} → {loadavg()}\n"
    )
    print(text)
    write_result(
        out_path,
        {
            "load_average_at_start": load_before,
            "benchmark": "label_to_agent",
            "runs": len(warm),
            "pool_size": args.pool_size,
            "load_average_at_end": loadavg(),
            "agent": AGENT,
            "experiment_shared_ssl": args.experiment_shared_ssl,
            "stages": data,
            "samples": [s.as_json() for s in samples],
            "table": text,
            "unmeasured": unmeasured,
        },
    )
    print(f"\nwritten to {out_path}")
    if unmeasured:
        print(f"stages not measured (update bench/probes.py or bench/stages.py): {unmeasured}")
        return 1
    return 0


async def _arq(url: str) -> Any:
    from bot.services import redis_pool

    return redis_pool(url, "unused")


async def _purge(url: str, namespace: str, database: Path) -> None:
    """Once Bosun has stopped: delete every key naming this run's namespace and arq's keys for
    each delivery and run the database knows."""
    jobs: list[str] = []
    if database.exists():
        with contextlib.closing(sqlite3.connect(database)) as conn:
            jobs += [f"d:{row[0]}" for row in conn.execute("SELECT id FROM deliveries")]
            jobs += [f"run:{row[0]}" for row in conn.execute("SELECT id FROM runs")]
    redis = await _arq(url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"*{namespace}*", count=1000)]
        for job in jobs:
            keys += [f"arq:result:{job}", f"arq:job:{job}", f"arq:retry:{job}"]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
    finally:
        await redis.aclose(close_connection_pool=True)


if __name__ == "__main__":
    raise SystemExit(main())
