"""The run-event writer (jobs/run/event_log.py): the events of every run in a worker are
written together, a round per transaction, each run's in the order it produced them with
gap-free ``seq`` numbers; a flush returns once its events are stored; one run whose events
cannot be written loses no other run's events."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import event, select

from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade
from bot.db.models import Repository, Run, RunEvent, Task
from bot.errors import NotFoundError
from jobs.run.event_log import EventWriter


async def test_runs_share_rounds_and_keep_their_order(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as session:
            repo = Repository(full_name="octo/hello", default_branch="main")
            session.add(repo)
            await session.flush()
            task = Task(repository_id=repo.id, issue_number=1, title="t")
            session.add(task)
            await session.flush()
            for n in range(4):
                session.add(Run(id=f"r{n}", task_id=task.id, repository_id=repo.id))
        commits: list[float] = []
        event.listen(engine.sync_engine, "commit", lambda conn: commits.append(time.monotonic()))
        published: list[str] = []

        def writer(run_id: str) -> EventWriter:
            async def on_flushed() -> None:
                published.append(run_id)

            return EventWriter(sessions, run_id, on_flushed=on_flushed)

        writers = [writer(f"r{n}") for n in range(4)]

        async def agent(w: EventWriter) -> None:  # a line every 5 ms, a status now and then
            for i in range(60):
                w.buffer("log", {"stream": "stdout", "line": f"{w.run_id} {i}"})
                if i % 20 == 19:
                    await w.emit("progress", {"after": i})
                await asyncio.sleep(0.005)
            await w.close()

        started = time.monotonic()
        await asyncio.gather(*(agent(w) for w in writers))
        elapsed = time.monotonic() - started

        async with sessions() as session:
            rows = (await session.execute(select(RunEvent).order_by(RunEvent.id))).scalars().all()
            runs = {r.id: r for r in (await session.execute(select(Run))).scalars()}
        for n in range(4):
            mine = sorted((r for r in rows if r.run_id == f"r{n}"), key=lambda r: r.seq)
            assert [r.seq for r in mine] == list(range(1, 64))  # 60 lines + 3 progress
            assert runs[f"r{n}"].last_seq == 63
            lines = [r.data["line"] for r in mine if r.kind == "log"]
            assert lines == [f"r{n} {i}" for i in range(60)]  # as produced
            after = [r.data["after"] for r in mine if r.kind == "progress"]
            assert after == [19, 39, 59]
            # Each progress event follows the lines buffered before it.
            kinds = [r.kind for r in mine]
            assert kinds.index("progress") == 20
        # Rounds are shared: a transaction carries the events of several runs at once (each
        # run is published once per round that held its events).
        assert {"r0", "r1", "r2", "r3"} <= set(published)
        assert len(published) > 2.5 * len(commits), (len(published), len(commits))
        assert len(commits) <= elapsed / 0.02 * 1.5 + 12  # about one round per 20 ms
    finally:
        await engine.dispose()


async def test_a_run_that_cannot_be_written_loses_no_other_runs_events(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as session:
            repo = Repository(full_name="octo/hello", default_branch="main")
            session.add(repo)
            await session.flush()
            task = Task(repository_id=repo.id, issue_number=1, title="t")
            session.add(task)
            await session.flush()
            session.add(Run(id="alive", task_id=task.id, repository_id=repo.id))
        good, gone = EventWriter(sessions, "alive"), EventWriter(sessions, "gone")
        for i in range(5):  # the same round
            good.buffer("log", {"line": str(i)})
            gone.buffer("log", {"line": str(i)})
        results = await asyncio.gather(good.flush(), gone.flush(), return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], NotFoundError)
        await gone.flush()  # reported once, to the flush that waited for them
        async with sessions() as session:
            lines = (
                (await session.execute(select(RunEvent.data).where(RunEvent.run_id == "alive")))
                .scalars()
                .all()
            )
        assert [d["line"] for d in lines] == ["0", "1", "2", "3", "4"]
        with pytest.raises(ValueError, match="unknown event kind"):
            await good.emit("nonsense", {})
    finally:
        await engine.dispose()
