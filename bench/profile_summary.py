"""Summarise a py-spy ``--format raw --threads`` profile (collapsed stacks): where time goes.

    .venv/bin/python -m bench.profile_summary bench/results/webhook_ack.pyspy.txt.gz

Prints the top frames by inclusive share (a frame counted once per sample) and by self share,
grouped by thread, plus the share of a few named buckets (SQLAlchemy, aiosqlite, arq/redis,
logging, Litestar, uvicorn) of the event-loop thread's samples.
"""

from __future__ import annotations

import argparse
import gzip
from collections import Counter
from pathlib import Path

BUCKETS = {
    "sqlalchemy": "sqlalchemy/",
    "aiosqlite (thread hop)": "aiosqlite/",
    "sqlite3 C calls": "sqlite3/",
    "arq enqueue / redis": ("arq/", "redis/"),
    "structlog / logging": ("structlog/", "logging/", "bot/logs.py"),
    "litestar": "litestar/",
    "uvicorn / h11 / httptools": ("uvicorn/", "h11/", "httptools/"),
    "bot.web.webhooks (handler)": "bot/web/webhooks.py",
    "asyncio event loop": "asyncio/",
    "json": "json/",
    "hmac / hashlib": ("hmac.py", "hashlib"),
}


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in raw.decode().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def _thread_name(frame: str) -> str:
    """``thread (123): Thread-64 (_connection_worker_thread)`` → ``Thread-N (_connection…)``."""
    if not frame.startswith("thread ("):
        return "?"
    name = frame.split(": ", 1)[-1]
    head, _, rest = name.partition(" ")
    if head.startswith("Thread-") and head[7:].isdigit():
        head = "Thread-N"
    return f"{head} {rest}".strip()


def summarise(path: Path, top: int) -> str:
    stacks = parse(path)
    total = sum(c for _, c in stacks)
    by_thread: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    loop_total = 0
    for frames, count in stacks:
        thread = _thread_name(frames[0])
        by_thread[thread] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
        self_time[frames[-1]] += count
        if thread == "MainThread":
            loop_total += count
            joined = ";".join(frames)
            for name, needles in BUCKETS.items():
                if any(n in joined for n in ((needles,) if isinstance(needles, str) else needles)):
                    buckets[name] += count
    lines = [f"{total} samples in {path.name}", "", "threads:"]
    lines += [f"  {c / total:6.1%}  {t}" for t, c in by_thread.most_common(8)]
    lines += ["", f"main thread buckets (of its {loop_total} samples; buckets overlap):"]
    lines += [f"  {c / max(loop_total, 1):6.1%}  {n}" for n, c in buckets.most_common()]
    lines += ["", "top inclusive frames:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in inclusive.most_common(top)]
    lines += ["", "top self frames:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in self_time.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    print(summarise(args.profile, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
