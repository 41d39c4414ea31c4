"""Audit a burst of queued runs (tests/test_fleet_queue.py and bench/fleet.py): each ran
exactly once, runs of a repository were let in in the order they were created, and every
queue position GitHub showed (the status comments in the emulator, sampled while the runs
went through) was true.

The truth comes from the database: when each run was created and when it left ``queued``
(its ``preparing`` status event). A status comment is written when its run asks for a slot
(at once when woken, else every ``worker.queue_poll_seconds``), so a comment sampled at ``t``
must match the line as it stood at some moment in ``[t - lag, t]``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from bot.db.engine import create_engine, session_factory
from bot.db.models import Run, RunEvent, Task

WAITING = re.compile(r"waiting: position (\d+) of (\d+) in the (\S+) queue")
STARTED_MARK = "agent-started"
"""What the audited runs' agent prints first (counted: exactly one per run)."""


@dataclass
class Sample:
    at: float  # time.time() when the emulator answered
    number: int  # issue
    position: int
    total: int
    line: str  # "octo/hello" or "global"


@dataclass
class CommentSampler:
    """Reads every issue's status comment from the emulator every ``interval`` seconds, in a
    thread, until stopped."""

    emulator: Any
    repo: str
    interval: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        owner, name = self.repo.split("/")
        while not self._stop.is_set():
            try:
                state = self.emulator.state(owner, name)
            except Exception:  # noqa: BLE001 -- a read that failed is no sample
                time.sleep(self.interval)
                continue
            at = time.time()
            self.reads += 1
            for issue in state.get("issues", []):
                for comment in issue.get("comments", []):
                    if "<!-- bosun:status -->" not in comment.get("body", ""):
                        continue
                    if match := WAITING.search(comment["body"]):
                        position, total, line = match.groups()
                        self.samples.append(
                            Sample(at, int(issue["number"]), int(position), int(total), line)
                        )
            self._stop.wait(self.interval)


@dataclass
class RunFacts:
    id: str
    number: int
    created: float
    state: str
    admitted: list[float]  # times it entered preparing
    started_marks: int  # agent-started lines in its log


def run_facts(database_url: str) -> list[RunFacts]:
    async def go() -> list[RunFacts]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                runs = (
                    await session.execute(
                        select(Run.id, Task.issue_number, Run.created_at, Run.state)
                        .join(Task, Task.id == Run.task_id)
                        .order_by(Run.created_at)
                    )
                ).all()
                events = (
                    await session.execute(
                        select(RunEvent.run_id, RunEvent.kind, RunEvent.data, RunEvent.created_at)
                        .where(RunEvent.kind.in_(["status", "log"]))
                        .order_by(RunEvent.id)
                    )
                ).all()
        finally:
            await engine.dispose()
        facts = {
            str(r[0]): RunFacts(str(r[0]), int(r[1]), _ts(r[2]), str(r[3].value), [], 0)
            for r in runs
        }
        for run_id, kind, data, created in events:
            fact = facts.get(str(run_id))
            if fact is None:
                continue
            if kind == "status" and data.get("to") == "preparing":
                fact.admitted.append(_ts(created))
            elif kind == "log" and STARTED_MARK in str(data.get("text", data.get("line", ""))):
                fact.started_marks += 1
        return list(facts.values())

    return asyncio.run(go())


def _ts(value: datetime) -> float:
    return value.timestamp() if value.tzinfo else value.replace(tzinfo=None).timestamp()


@dataclass(frozen=True)
class _Asked:
    """When a run joined its repository's line, as far as the samples tell: between ``low``
    and ``high``; it left the line when admitted (``left``, inf if never)."""

    low: float
    high: float
    left: float


def _asked(runs: list[RunFacts], samples: list[Sample], lag: float) -> dict[str, _Asked]:
    first_seen: dict[int, float] = {}
    for sample in samples:
        first_seen.setdefault(sample.number, sample.at)
    out = {}
    for run in runs:
        left = run.admitted[0] if run.admitted else float("inf")
        seen = first_seen.get(run.number)
        if seen is not None and seen < left:
            out[run.id] = _Asked(max(run.created, seen - lag), seen, left)
        else:  # never seen waiting: it asked somewhere between creation and admission
            out[run.id] = _Asked(run.created, left, left)
    return out


def audit(
    runs: list[RunFacts], samples: list[Sample], *, lag: float, step: float = 0.05
) -> dict[str, Any]:
    """What went wrong (empty lists when nothing did) and what was checked.

    A run is in its repository's line from when it first asks for a slot until it is let in.
    When it asked is known within bounds (it was first seen waiting at ``t``, and comments
    trail by at most ``lag``), so at each moment a run ahead is either surely in line or
    maybe. A shown ``position N of M`` is right when, at some moment in ``[t - lag, t]``, the
    runs surely ahead ≤ N - 1 ≤ the runs maybe ahead, and likewise for M. Order: a run let in
    while an earlier-created run of its repository was surely waiting is out of order.
    """
    asked = _asked(runs, samples, lag)
    by_number = {r.number: r for r in runs}
    twice = [r.number for r in runs if len(r.admitted) != 1 or r.started_marks != 1]
    out_of_order = [
        (a.number, b.number)
        for a in runs
        for b in runs
        if a.created < b.created
        and b.admitted
        and asked[a.id].high <= b.admitted[0] < asked[a.id].left
    ]
    wrong: list[dict[str, Any]] = []
    checked = 0
    for sample in samples:
        run = by_number.get(sample.number)
        if run is None or sample.line == "global":
            continue
        checked += 1
        ok = False
        for i in range(int(lag / step) + 1):
            at = sample.at - lag + i * step
            sure = [r for r in runs if asked[r.id].high <= at < asked[r.id].left]
            maybe = [r for r in runs if asked[r.id].low <= at < asked[r.id].left]
            ahead_sure = sum(1 for r in sure if r.created < run.created)
            ahead_maybe = sum(1 for r in maybe if r.created < run.created)
            if (
                ahead_sure <= sample.position - 1 <= ahead_maybe
                and len(sure) <= sample.total <= len(maybe)
                and sample.position <= sample.total
            ):
                ok = True
                break
        if not ok:
            wrong.append(
                {
                    "issue": sample.number,
                    "at": round(sample.at, 3),
                    "shown": f"{sample.position} of {sample.total}",
                }
            )
    return {
        "runs": len(runs),
        "ended": sorted({r.state for r in runs}),
        "not_exactly_once": twice,
        "admitted_out_of_order": out_of_order,
        "positions_checked": checked,
        "positions_wrong": wrong,
    }
