"""Live log (SPEC §10: an agent line reaches an SSE client within 250 ms p99).

Bosun as separate processes, as deployed: one ``bosun worker`` and two ``bosun serve`` web
processes on SQLite (or ``--database-url``), Redis and the local Docker engine, with the GitHub
emulator in a process of its own. ``--runs`` issues are labelled at once; each run's ``script``
agent prints ``tick <n> <time>`` every ``--interval`` seconds, the time taken inside the
sandbox (``time.time()``: the container shares the host's clock). ``--subscribers`` Server-Sent
Event clients, spread evenly over the runs and the web processes, follow the runs' streams from
before the first line to the end. For every line and subscriber: the delay from the time in the
line to the moment the subscriber read the frame; lines a subscriber never got; lines out of
order (by ``seq`` and by tick number); duplicates.

    .venv/bin/python -m bench.live_log
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.label_to_agent import _purge, start_emulator, wait
from bench.servers import _tree_cpu_ticks
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bench.webhook_ack import host_busy_seconds, own_cpu_seconds
from bot.logs import configure_logging
from bot.settings import Settings
from tests.emulator.client import EmulatorClient
from tests.emulator.world import WebhookReceiver, World, make_source_repo
from tests.lifecycle_stack import settings_env
from tests.stack import free_port, make_stack_settings

DEFAULT_OUT = Path(__file__).parent / "results" / "live_log.json"
BOSUN = Path(sys.executable).with_name("bosun")
TICKER = r"""
import sys, time
count, interval, delay = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
time.sleep(delay)
start = time.time()
for n in range(count):
    ahead = start + n * interval - time.time()
    if ahead > 0:
        time.sleep(ahead)
    print(f"tick {n} {time.time():.6f}", flush=True)
sys.exit(3)  # the run ends (failed), and with it every stream
"""


def ticker_command(lines: int, interval: float, start_delay: float) -> list[str]:
    """The ``script`` agent's argv: wait ``start_delay`` s, then print ``lines`` lines
    ``tick <n> <time.time()>`` every ``interval`` s, then exit 3."""
    return ["python3", "-c", TICKER, str(lines), str(interval), str(start_delay)]


@dataclass
class Subscriber:
    index: int
    run_id: str
    web: str
    connected_at: float = 0.0
    ended: bool = False
    error: str = ""
    seqs: list[int] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    """Seconds from the time in a line to its arrival, for lines written after connecting."""
    stored: list[float] = field(default_factory=list)
    """Seconds from the time in a line to the event's row (``created_at``)."""
    history: int = 0
    """Lines written before this subscriber connected (read from the log, not timed)."""


def _iso_seconds(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


async def follow(client: httpx.AsyncClient, sub: Subscriber, token: str, deadline: float) -> None:
    """Read ``sub``'s run stream until its ``end`` event (or ``deadline``)."""
    url = f"{sub.web}/api/v1/runs/{sub.run_id}/events/stream"
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    try:
        async with asyncio.timeout(max(1.0, deadline - time.time())):
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    sub.error = f"HTTP {response.status_code}"
                    return
                sub.connected_at = time.time()
                pending = b""
                async for chunk in response.aiter_raw():
                    arrived = time.time()
                    pending += chunk.replace(b"\r\n", b"\n")
                    *frames, pending = pending.split(b"\n\n")
                    for frame in frames:
                        if _frame(sub, frame, arrived):
                            sub.ended = True
                            return
    except TimeoutError:
        sub.error = "timed out before the end event"
    except httpx.HTTPError as exc:
        sub.error = f"{type(exc).__name__}: {exc}"


def _frame(sub: Subscriber, frame: bytes, arrived: float) -> bool:
    """Record one SSE frame; whether it is the stream's end."""
    fields: dict[str, str] = {}
    for line in frame.decode().split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    if fields.get("event") == "end":
        return True
    if "id" in fields:
        sub.seqs.append(int(fields["id"]))
    if fields.get("event") != "log":
        return False
    event = json.loads(fields["data"])
    text = str(event["data"].get("line", ""))
    if not text.startswith("tick "):
        return False
    _, number, stamp = text.split()
    written = float(stamp)
    sub.ticks.append(int(number))
    if written >= sub.connected_at:
        sub.delays.append(arrived - written)
        sub.stored.append(_iso_seconds(event["created_at"]) - written)
    else:
        sub.history += 1
    return False


async def subscribe_all(subs: list[Subscriber], token: str, deadline: float) -> list[Subscriber]:
    limits = httpx.Limits(max_connections=len(subs), max_keepalive_connections=0)
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(follow(client, sub, token, deadline) for sub in subs))
    return subs


def disorder(values: list[int]) -> int:
    """How many values are not greater than the one before them."""
    return sum(1 for before, after in itertools.pairwise(values) if after <= before)


def report(subs: list[Subscriber], lines_per_run: int) -> tuple[str, dict[str, Any]]:
    delays = [d for s in subs for d in s.delays]
    stored = [d for s in subs for d in s.stored]
    after_store = [d - st for s in subs for d, st in zip(s.delays, s.stored, strict=True)]
    missing = sum(lines_per_run - len(set(s.ticks)) for s in subs)
    duplicates = sum(len(s.ticks) - len(set(s.ticks)) for s in subs)
    out_of_order = sum(disorder(s.seqs) + disorder(s.ticks) for s in subs)
    data = {
        "subscribers": len(subs),
        "lines_per_run": lines_per_run,
        "lines_expected": lines_per_run * len(subs),
        "lines_timed": len(delays),
        "lines_from_history": sum(s.history for s in subs),
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "streams_not_ended": sum(1 for s in subs if not s.ended),
        "errors": sorted({s.error for s in subs if s.error}),
        "delay": summary(delays),
        "line_to_stored": summary(stored),
        "stored_to_subscriber": summary(after_store),
    }
    rows = [
        ["line in sandbox → subscriber read it", *_ms(data["delay"])],
        ["  line in sandbox → event row stored (worker)", *_ms(data["line_to_stored"])],
        ["  event row stored → subscriber read it (web)", *_ms(data["stored_to_subscriber"])],
    ]
    text = table(["delay (ms)", "n", "p50", "p95", "p99", "max"], rows)
    text += (
        f"\n\nlines expected {data['lines_expected']}, timed {data['lines_timed']}, "
        f"from history {data['lines_from_history']}; missing {missing}, duplicates "
        f"{duplicates}, out of order {out_of_order}; streams not ended "
        f"{data['streams_not_ended']}"
    )
    return text, data


def _ms(stats: dict[str, float]) -> list[Any]:
    return [int(stats["n"]), *(f"{stats[k] * 1000:.0f}" for k in ("p50", "p95", "p99", "max"))]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def make_token(database_url: str) -> str:
    from bot.control.tokens import create_token
    from bot.db.engine import create_engine, session_factory

    async def go() -> str:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine).begin() as session:
                secret, _ = await create_token(session, "bench-live", "read")
                return secret
        finally:
            await engine.dispose()

    return asyncio.run(go())


def runs_of(database_url: str) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from bot.db.engine import create_engine, session_factory
    from bot.db.models import Run

    async def go() -> list[tuple[str, str]]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                rows = await session.execute(select(Run.id, Run.state).order_by(Run.created_at))
                return [(str(r[0]), str(r[1].value)) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(go())


@dataclass
class Deployment:
    """Bosun as deployed (a worker and web processes) with the GitHub emulator beside it."""

    root: Path
    emulator: EmulatorClient
    settings: Settings
    webs: list[str]
    database_url: str
    processes: list[subprocess.Popen[bytes]]
    repo: str = "octo/hello"

    def label_issues(self, count: int, title: str = "Tick") -> list[tuple[str, str]]:
        """Open and label ``count`` issues; the runs (id, state) once all exist."""
        for n in range(count):
            number = self.emulator.create_issue(self.repo, f"{title} {n}", "Print ticks.", "alice")
            self.emulator.add_labels(self.repo, number, ["bosun"], "alice")
        found: list[tuple[str, str]] = wait(
            lambda: (runs := runs_of(self.database_url)) and len(runs) >= count and runs,
            60,
            f"{count} runs",
        )
        return found


@contextlib.contextmanager
def deployed(
    *,
    runs: int,
    webs: int,
    command: list[str],
    redis: str,
    database_url: str = "",
    keep: bool = False,
    workers: int = 1,
    repo_cap: int | None = None,
    worker: dict[str, Any] | None = None,
) -> Iterator[Deployment]:
    """``workers`` ``bosun worker`` and ``webs`` ``bosun serve`` processes on loopback, the
    emulator in its own process, the repository ``octo/hello`` (alice may write; at most
    ``repo_cap`` runs at once, default ``runs``) whose runs' ``script`` agent runs
    ``command``; everything stopped and removed afterwards (``keep``: the folder). ``worker``
    overrides worker settings (default: ``runs`` runs at once)."""
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-live-"))
    root.chmod(0o755)  # the remapped sandbox uid must traverse it to the workspaces
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    emulator_proc, url = start_emulator(root / "emulator")
    emulator = EmulatorClient(url)
    processes: list[subprocess.Popen[bytes]] = []
    database_url = database_url or f"sqlite+aiosqlite:///{root / 'bosun.db'}"
    try:
        ports = [free_port() for _ in range(webs)]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        app = emulator.create_app(f"{urls[0]}/webhooks/github", "webhook-secret")
        config = f"limits:\n  concurrent_runs: {repo_cap or runs}\n"
        source = make_source_repo(
            root / "source", {"README.md": "# Hello\n", ".github/bosun.yml": config}
        )
        world = World(emulator, app, None, WebhookReceiver(url=""), source)  # type: ignore[arg-type]
        work = root / "work"
        work.mkdir(mode=0o755)
        settings = make_stack_settings(
            root,
            world,
            redis,
            namespace,
            work,
            ports[0],
            profiles={"ticker": {"runner": "script", "command": command}},
            default_profile="ticker",
            database={"url": database_url},
            worker={
                "poll_delay": 0.05,
                "max_jobs": runs + 4,
                "max_concurrent_runs": runs,
                **(worker or {}),
            },
            log_level="warning",
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BOSUN_", "OTEL_"))},
            **settings_env(settings),
        }
        subprocess.run([str(BOSUN), "migrate"], env=env, check=True, capture_output=True)
        logs = root / "logs"
        logs.mkdir()

        def spawn(name: str, *argv: str, **extra: str) -> None:
            with (logs / f"{name}.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        [str(BOSUN), *argv], env={**env, **extra}, stdout=log, stderr=log
                    )
                )

        for index in range(workers):
            spawn(f"worker-{index}", "worker", BOSUN_WORKER__NAME=f"worker-{index}")
        for index, port in enumerate(ports):
            spawn(f"web-{index}", "serve", "--port", str(port))
        for web in urls:
            wait(lambda web=web: _healthy(f"{web}/healthz"), 60, f"{web}/healthz")
        world.repo = emulator.create_repo("octo", "hello", str(source))
        emulator.add_user("alice", "octo/hello", "write")
        yield Deployment(root, emulator, settings, urls, database_url, processes)
    finally:
        for proc in reversed(processes):
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        emulator.close()
        emulator_proc.terminate()
        emulator_proc.wait(10)
        if emulator_proc.stdout is not None:
            emulator_proc.stdout.close()
        with contextlib.suppress(Exception):
            asyncio.run(_purge(redis, namespace, root / "bosun.db"))
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_log")
    parser.add_argument("--runs", type=int, default=8, help="concurrent runs")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--webs", type=int, default=2, help="web processes")
    parser.add_argument("--seconds", type=float, default=30.0, help="each agent prints for")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between lines")
    parser.add_argument("--start-delay", type=float, default=5.0, help="agent waits first")
    parser.add_argument("--database-url", default="", help="default: SQLite in the temp folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_redis_option(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one short round (2 runs, 4 subscribers, 1 web process, 1 s of lines)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.subscribers, args.webs = 2, 4, 1
        args.seconds, args.interval, args.start_delay = 1.0, 0.1, 2.0
        if args.out == DEFAULT_OUT:  # a smoke round's numbers are no result
            args.out = Path(tempfile.gettempdir()) / f"{DEFAULT_OUT.stem}.smoke.json"
    if not (1 <= args.runs <= 32 and args.subscribers >= args.runs and args.webs >= 1):
        parser.error("--runs 1..32, --subscribers at least --runs, --webs at least 1")
    configure_logging("warning", "json")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lines_per_run = round(args.seconds / args.interval)

    load_before = loadavg()
    command = ticker_command(lines_per_run, args.interval, args.start_delay)
    with deployed(
        runs=args.runs,
        webs=args.webs,
        command=command,
        redis=args.redis,
        database_url=args.database_url,
        keep=args.keep,
    ) as bosun:
        token = make_token(bosun.database_url)
        started = time.time()
        runs = bosun.label_issues(args.runs)
        subs = [
            Subscriber(i, runs[i % args.runs][0], bosun.webs[(i // args.runs) % args.webs])
            for i in range(args.subscribers)
        ]
        deadline = time.time() + args.start_delay + args.seconds + 180
        print(
            f"{args.runs} runs queued in {time.time() - started:.2f}s; "
            f"{len(subs)} subscribers over {args.webs} web processes",
            flush=True,
        )
        tick = os.sysconf("SC_CLK_TCK")
        processes = bosun.processes
        before = [_tree_cpu_ticks(p.pid) / tick for p in processes]
        host0, own0, t0 = host_busy_seconds(), own_cpu_seconds(), time.monotonic()
        asyncio.run(subscribe_all(subs, token, deadline))
        elapsed = time.monotonic() - t0
        used = [_tree_cpu_ticks(p.pid) / tick - b for p, b in zip(processes, before, strict=True)]
        names = ["worker", *(f"web {chr(65 + i)}" for i in range(args.webs))]
        cpu = {name: round(u / elapsed, 2) for name, u in zip(names, used, strict=True)}
        cpu["subscribers (this process)"] = round((own_cpu_seconds() - own0) / elapsed, 2)
        busy = (host_busy_seconds() - host0) / elapsed
        cpu["everything else (Docker, Redis, other work)"] = round(busy - sum(cpu.values()), 2)
        cpu["host busy"] = round(busy, 2)
        final = runs_of(bosun.database_url)
        database_url = bosun.database_url

    text, data = report(subs, lines_per_run)
    late = sum(1 for s in subs if s.history)
    print(
        f"\nLive log: {args.runs} runs, one line per {args.interval * 1000:.0f} ms for "
        f"{args.seconds:.0f} s, {args.subscribers} SSE subscribers over {args.webs} web "
        f"processes ({late} connected after their run's first line)\n"
    )
    print(text)
    print("\nCPU in cores while subscribed: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    write_result(
        args.out,
        {
            "load_average_at_start": load_before,
            "benchmark": "live_log",
            "runs": args.runs,
            "webs": args.webs,
            "interval_s": args.interval,
            "seconds": args.seconds,
            "database": database_url.split(":", 1)[0].split("+", 1)[0],
            "run_states": [state for _, state in final],
            **data,
            "cpu_cores": cpu,
            "table": text,
        },
    )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
