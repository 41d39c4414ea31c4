"""Percentiles and plain-text tables shared by the benchmarks."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.services import with_redis_password


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of ``values``."""
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return str(value)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg() -> list[float]:
    """The host's 1, 5 and 15 minute load averages (other work on the machine skews results)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def write_result(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` with the date and machine as pretty JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_end": loadavg(),
    }
    path.write_text(json.dumps({**stamped, **data}, indent=2, default=str) + "\n")


def add_redis_option(parser: argparse.ArgumentParser) -> None:
    """``--redis URL``: the Redis the benchmark's Bosun uses (``BOSUN_BENCH_REDIS``, else the
    local one with the test services' password)."""
    parser.add_argument(
        "--redis",
        default=with_redis_password(
            os.environ.get("BOSUN_BENCH_REDIS", "redis://127.0.0.1:6379/0")
        ),
    )
