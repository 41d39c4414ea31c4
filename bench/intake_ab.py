"""Intake side by side: ``bosun serve`` against a no-op Probot 14 app under the same wrk load
(issue 18, item 2).

Both receivers run at once on loopback (Bosun on a temporary SQLite file, or PostgreSQL with
``--postgres``, and the local Redis under a random namespace; no worker, so every job stays
queued and can be counted). wrk (C, one thread) drives each in turn, alternating
A/B/A/B for ``--rounds`` rounds of ``--seconds`` with ``--connections`` keep-alive
connections: the same signed 12.4 KB ``issues.labeled`` body (``bench/loadgen.labeled_body``;
the signature covers the body only, so it is computed once) and a fresh ``X-GitHub-Delivery``
per request (a counter in wrk's Lua script, prefixed by the round). Afterwards Bosun's
deliveries table must hold exactly one row per request wrk completed with a 2xx, with one
queued job each. Then an open-loop phase at ``--rate``/s (``bench/loadgen.fixed_rate``,
latency from the scheduled send time) measures Bosun's ack latency.

    .venv/bin/python -m bench.intake_ab [--web-workers 2] [--rounds 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.loadgen import Target, fixed_rate, labeled_body
from bench.servers import BosunServe, ProbotApp, Receiver
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bench.webhook_ack import (
    SECRET,
    _schema,
    host_busy_seconds,
    purge,
    stored_deliveries,
)
from tests.services import POSTGRES_URL

RESULTS = Path(__file__).parent / "results"

WRK_SCRIPT = """
local body = io.open(os.getenv("BENCH_BODY")):read("*a")
local prefix = os.getenv("BENCH_PREFIX")
local n = 0
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
wrk.headers["X-GitHub-Event"] = "issues"
wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIGNATURE")
request = function()
  n = n + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. n
  return wrk.format()
end
"""

_NUMBER = r"([\d.]+)(us|ms|s)"


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests, rate, errors and the latency distribution from ``wrk --latency``."""
    out: dict[str, Any] = {}
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rate_per_s"] = float(m.group(1))
    out["non_2xx"] = int(m.group(1)) if (m := re.search(r"Non-2xx.*?:\s+(\d+)", text)) else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    for pct in ("50", "90", "99"):
        if m := re.search(rf"\s{pct}(?:\.000)?%\s+{_NUMBER}", text):
            out[f"p{pct}_ms"] = round(_ms(m.group(1), m.group(2)), 2)
    return out


def run_wrk(
    port: int, seconds: float, connections: int, prefix: str, files: dict[str, Path]
) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_BODY": str(files["body"]),
        "BENCH_PREFIX": prefix,
        "BENCH_SIGNATURE": files["signature"].read_text(),
    }
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(files["script"]),
            f"http://127.0.0.1:{port}/webhooks/github",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return parse_wrk(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake_ab")
    parser.add_argument("--rounds", type=int, default=4, help="A/B pairs")
    parser.add_argument("--seconds", type=float, default=10.0, help="one wrk round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--web-workers", type=int, default=2, help="bosun serve --workers N")
    parser.add_argument("--log-level", default="info", help="bosun serve's log level")
    parser.add_argument("--rate", type=float, default=200, help="open-loop phase, deliveries/s")
    parser.add_argument("--rate-seconds", type=float, default=30)
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("BOSUN_BENCH_POSTGRES_URL", POSTGRES_URL),
        help="Bosun on PostgreSQL (a temporary schema in this database) instead of SQLite",
    )
    add_redis_option(parser)
    parser.add_argument(
        "--baseline-source",
        type=Path,
        help="also measure Bosun from this source tree (e.g. `git archive <commit> bot jobs "
        "sandboxes | tar -x -C DIR`), in the same rounds",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="one short A/B round (1 s each, one web process)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.seconds, args.rate_seconds, args.web_workers = 1, 1.0, 1.0, 1
    if not (1 <= args.rounds <= 50 and 1 <= args.seconds <= 120 and 1 <= args.connections <= 512):
        parser.error("--rounds 1..50, --seconds 1..120, --connections 1..512")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk; scripts/bootstrap.sh test)")
    out_path = args.out or (
        Path(tempfile.gettempdir()) / "intake_ab.smoke.json"
        if args.smoke
        else RESULTS / "intake_ab.json"
    )

    load_start = loadavg()
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-ab-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    body = labeled_body()
    files = {"body": root / "body.json", "signature": root / "sig", "script": root / "ab.lua"}
    files["body"].write_bytes(body)
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    files["signature"].write_text(f"sha256={signature}")
    files["script"].write_text(WRK_SCRIPT)
    database_url = None
    if args.postgres:
        schema = namespace.replace("-", "_")
        asyncio.run(_schema(args.postgres, f"CREATE SCHEMA {schema}"))
        database_url = f"{args.postgres}?search_path={schema}"
    bosun = BosunServe(
        root, SECRET, args.redis, namespace, args.log_level, database_url, workers=args.web_workers
    )
    probot = ProbotApp(root, SECRET)
    receivers: list[Receiver] = [probot, bosun]
    if args.baseline_source:
        (root / "baseline").mkdir()
        base_url = None
        if args.postgres:
            asyncio.run(_schema(args.postgres, f"CREATE SCHEMA {schema}_base"))
            base_url = f"{args.postgres}?search_path={schema}_base"
        baseline = BosunServe(
            root / "baseline",
            SECRET,
            args.redis,
            f"{namespace}-base",
            args.log_level,
            base_url,
            workers=args.web_workers,
        )
        baseline.name = "bosun-baseline"
        baseline.settings_env["PYTHONPATH"] = str(args.baseline_source.resolve())
        receivers.append(baseline)
    rounds: list[dict[str, Any]] = []
    bosun_ids: list[str] = []
    answered: dict[str, int] = {}  # prefix → requests wrk saw answered with a 2xx
    open_loop: dict[str, Any] = {}
    open_base: dict[str, Any] = {}
    check: dict[str, Any] = {}
    try:
        for receiver in receivers:
            receiver.start()
        for i in range(args.rounds):
            for receiver in receivers:
                prefix = f"{namespace}-{receiver.name}-{i}-"
                cpu0, host0, t0 = receiver.cpu_seconds(), host_busy_seconds(), time.monotonic()
                row = run_wrk(receiver.port, args.seconds, args.connections, prefix, files)
                elapsed = time.monotonic() - t0
                row |= {
                    "round": i,
                    "receiver": receiver.name,
                    "server_cores": round((receiver.cpu_seconds() - cpu0) / elapsed, 2),
                    "server_cpu_ms_per_delivery": round(
                        (receiver.cpu_seconds() - cpu0) * 1000 / max(1, row.get("requests", 0)), 3
                    ),
                    "host_busy_cores": round((host_busy_seconds() - host0) / elapsed, 2),
                    "load_average": loadavg()[0],
                }
                rounds.append(row)
                if isinstance(receiver, BosunServe):
                    ok = row.get("requests", 0) - row["non_2xx"]
                    if receiver is bosun:  # the one checked afterwards
                        answered[prefix] = ok
                    # wrk may stop with one request in flight per connection
                    bosun_ids += [f"{prefix}{n}" for n in range(1, ok + args.connections + 1)]
                print(
                    f"round {i} {receiver.name:12s} {row.get('rate_per_s', 0):8.0f}/s  "
                    f"p50 {row.get('p50_ms')} ms  p99 {row.get('p99_ms')} ms  "
                    f"non-2xx {row['non_2xx']}  socket errors {row['socket_errors']}  "
                    f"server {row['server_cores']} cores, host {row['host_busy_cores']}",
                    flush=True,
                )
        open_loop = asyncio.run(_open_loop(bosun, args.rate, args.rate_seconds))
        if args.baseline_source:
            open_base = asyncio.run(_open_loop(baseline, args.rate, args.rate_seconds))
            open_base.pop("acked_ids")
        time.sleep(0.5)
        bosun.stop()
        check = _verify(
            bosun, args.redis, namespace, answered, args.connections, open_loop.pop("acked_ids")
        )
    finally:
        for receiver in receivers:
            receiver.stop()
        purge(args.redis, namespace, bosun_ids)
        if args.postgres:
            asyncio.run(_schema(args.postgres, f"DROP SCHEMA {schema} CASCADE"))
            if args.baseline_source:
                asyncio.run(_schema(args.postgres, f"DROP SCHEMA {schema}_base CASCADE"))
        shutil.rmtree(root, ignore_errors=True)

    def rates(name: str) -> list[float]:
        return [r.get("rate_per_s", 0.0) for r in rounds if r["receiver"] == name]

    ratios = [b / p for b, p in zip(rates(bosun.name), rates(probot.name), strict=True) if p]
    base_ratios = [
        b / p for b, p in zip(rates("bosun-baseline"), rates(probot.name), strict=False) if p
    ]
    text = table(
        [
            "round",
            "receiver",
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "server cores",
            "server CPU ms/delivery",
            "host busy",
            "load 1 min",
        ],
        [
            [
                r["round"],
                r["receiver"],
                r.get("rate_per_s"),
                r.get("p50_ms"),
                r.get("p99_ms"),
                r["non_2xx"],
                r["server_cores"],
                r["server_cpu_ms_per_delivery"],
                r["host_busy_cores"],
                r["load_average"],
            ]
            for r in rounds
        ],
    )
    text += f"\n\nBosun / Probot per round: {', '.join(f'{x:.2f}' for x in ratios)} "
    text += f"(median {statistics.median(ratios):.2f}); "
    if base_ratios:
        text += f"baseline / Probot: {', '.join(f'{x:.2f}' for x in base_ratios)}; "
        text += f"baseline open loop p99 {open_base['latency_ms']['p99']:.2f} ms; "
    text += (
        f"open loop {args.rate:g}/s: {open_loop['rate_per_s']}/s acked, "
        f"p50 {open_loop['latency_ms']['p50']:.2f} ms, "
        f"p99 {open_loop['latency_ms']['p99']:.2f} ms; "
        f"integrity ok: {check.get('ok')}; load average {load_start} → {loadavg()}"
    )
    print("\n" + text)
    write_result(
        out_path,
        {
            "benchmark": "intake_ab",
            "load_average_at_start": load_start,
            "load_average_at_end": loadavg(),
            "database": "postgresql" if args.postgres else "sqlite",
            "web_workers": args.web_workers,
            "connections": args.connections,
            "seconds": args.seconds,
            "log_level": args.log_level,
            "body_bytes": len(body),
            "rounds": rounds,
            "ratio_per_round": [round(x, 3) for x in ratios],
            "ratio_median": round(statistics.median(ratios), 3),
            "baseline_source": str(args.baseline_source) if args.baseline_source else None,
            "baseline_ratio_per_round": [round(x, 3) for x in base_ratios],
            "open_loop": open_loop,
            "open_loop_baseline": open_base or None,
            "integrity": check,
            "table": text,
        },
    )
    print(f"written to {out_path}")
    return 0 if check.get("ok") else 1


async def _open_loop(server: Receiver, rate: float, seconds: float) -> dict[str, Any]:
    target = Target(port=server.port, secret=SECRET.encode(), ok_status=server.ok_status)
    await fixed_rate(target, 50, 1)  # fresh connections, warm
    out = await fixed_rate(target, rate, seconds)
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": len(out.sent),
        "rate_per_s": round(out.rate, 1),
        "errors": out.errors,
        "latency_ms": {
            k: round(v, 2) for k, v in summary([x * 1000 for x in out.latencies]).items()
        },
        "acked_ids": out.acked,
    }


def _verify(
    server: BosunServe,
    redis_url: str,
    namespace: str,
    answered: dict[str, int],
    connections: int,
    acked: list[str],
) -> dict[str, Any]:
    """Each wrk round stored between ``n`` (the requests wrk saw answered) and ``n + c`` rows
    (wrk stops with up to one request in flight per connection, which the server may or may
    not have stored: one whose body had not fully arrived is dropped unanswered), every row
    once and with its job; every delivery the open-loop phase saw acknowledged is stored
    (that generator knows each answered id)."""
    import redis

    rows, statuses = asyncio.run(stored_deliveries(server.database_url))
    stored = set(rows)
    off_count = 0
    for prefix, n in answered.items():
        mine = sum(1 for r in stored if r.startswith(prefix))
        off_count += not n <= mine <= n + connections
    client = redis.Redis.from_url(redis_url)
    queued = int(client.zcard(f"{namespace}:queue"))
    return {
        "wrk_2xx": sum(answered.values()),
        "open_loop_acked": len(acked),
        "rows": len(rows),
        "duplicate_rows": len(rows) - len(stored),
        "rounds_with_a_row_count_off": off_count,
        "open_loop_acked_but_missing": len(set(acked) - stored),
        "delivery_status": statuses,
        "queue_zcard": queued,
        "ok": not off_count
        and not set(acked) - stored
        and len(rows) == len(stored)
        and queued == len(stored),
    }


if __name__ == "__main__":
    raise SystemExit(main())
