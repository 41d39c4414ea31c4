"""Scope locks: which focus paths overlap, the ``Focus:`` line of an issue, and locks taken in
the database by contending workers (SQLite and PostgreSQL), with leases that outlive no crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bot.db.engine import SessionFactory, create_engine, session_factory
from bot.db.migrate import upgrade
from bot.db.models import Repository, ScopeLock
from jobs.admission.locks import (
    acquire_scope,
    focus_from_issue,
    globs_overlap,
    release_scope,
    renew_scope,
    run_scope,
)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a/**", "a/b.py", True),
        ("a/b.py", "a/**", True),
        ("src", "src/x.py", True),  # a bare name may be a folder
        ("src/", "src/deep/x.py", True),
        ("*.py", "lib/y.py", True),  # no slash: any depth
        ("docs/*.md", "docs/intro.md", True),
        ("src/api/**", "src/*/views.py", True),
        ("**/test_*.py", "tests/test_locks.py", True),
        ("./a/b.py", "/a/b.py", True),
        ("a/**", "b/**", False),
        ("src/api/**", "src/web/**", False),
        ("docs/*.md", "docs/intro.rst", False),
        ("a/b.py", "a/c.py", False),
        ("src/a*/x.py", "src/b*/x.py", False),
    ],
)
def test_glob_overlap(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap


def test_focus_line_in_the_issue_wins_over_config() -> None:
    body = "Fix the parser.\n\nFocus: `src/parser/**`, docs/parser.md\n"
    assert focus_from_issue(body) == ["src/parser/**", "docs/parser.md"]
    assert run_scope(body, ["src/**"]) == ["src/parser/**", "docs/parser.md"]
    assert run_scope("No focus here.", ["src/**"]) == ["src/**"]
    assert run_scope("No focus here.", []) == []
    fenced = "```\nfocus: secret/**\n```\nFOCUS: ./lib/a.py lib/b.py\n"
    assert focus_from_issue(fenced) == ["lib/a.py", "lib/b.py"]
    assert focus_from_issue("Focus: ../outside, ok/**") == ["ok/**"]


@pytest.fixture
async def two_workers(db_url: str) -> AsyncIterator[tuple[SessionFactory, SessionFactory]]:
    """Two engines on one database, as two worker processes would have, and repository 1."""
    engines = [create_engine(db_url), create_engine(db_url)]
    await upgrade(engines[0])
    sessions = (session_factory(engines[0]), session_factory(engines[1]))
    async with sessions[0].begin() as session:
        session.add(Repository(id=1, full_name="octo/app"))
        session.add(Repository(id=2, full_name="octo/other"))
    yield sessions
    for engine in engines:
        await engine.dispose()


async def take(sessions: SessionFactory, run_id: str, paths: list[str], repo: int = 1) -> bool:
    conflict = await acquire_scope(
        sessions,
        repository_id=repo,
        run_id=run_id,
        paths=paths,
        holder=f"worker-of-{run_id}",
        lease_seconds=30,
    )
    return conflict is None


async def test_overlapping_scopes_take_turns(
    two_workers: tuple[SessionFactory, SessionFactory],
) -> None:
    one, two = two_workers
    assert await take(one, "r1", ["src/api/**"])
    conflict = await acquire_scope(
        two, repository_id=1, run_id="r2", paths=["src/api/views.py"], holder="w2", lease_seconds=30
    )
    assert conflict is not None and conflict.run_id == "r1"
    assert "src/api/**" in conflict.describe()
    # Disjoint paths, or the same paths in another repository, do not wait.
    assert await take(two, "r3", ["docs/**"])
    assert await take(two, "r4", ["src/api/**"], repo=2)
    # Taking it again is harmless for the holder.
    assert await take(one, "r1", ["src/api/**"])
    await release_scope(one, "r1")
    assert await take(two, "r2", ["src/api/views.py"])


async def test_contending_workers_get_one_lock(
    two_workers: tuple[SessionFactory, SessionFactory],
) -> None:
    one, two = two_workers
    for round_ in range(5):
        runs = [f"c{round_}-{i}" for i in range(6)]
        results = await asyncio.gather(
            *(take(two_workers[i % 2], run, ["lib/**"]) for i, run in enumerate(runs))
        )
        assert sum(results) == 1, results
        async with one() as session:
            held = list((await session.execute(select(ScopeLock.run_id))).scalars())
        assert held == [runs[results.index(True)]]
        await release_scope(two, held[0])


async def test_crashed_holder_blocks_only_until_its_lease_expires(
    two_workers: tuple[SessionFactory, SessionFactory],
) -> None:
    one, two = two_workers
    conflict = await acquire_scope(
        one, repository_id=1, run_id="dead", paths=["a/**"], holder="w1", lease_seconds=0.6
    )
    assert conflict is None
    assert not await take(two, "next", ["a/b.py"])
    await asyncio.sleep(0.8)  # "dead"'s worker never renews
    assert await take(two, "next", ["a/b.py"])
    async with two() as session:
        held = list((await session.execute(select(ScopeLock.run_id))).scalars())
    assert held == ["next"]  # the lapsed row is gone


async def test_renewed_lease_keeps_blocking(
    two_workers: tuple[SessionFactory, SessionFactory],
) -> None:
    one, two = two_workers
    conflict = await acquire_scope(
        one, repository_id=1, run_id="live", paths=["a/**"], holder="w1", lease_seconds=0.6
    )
    assert conflict is None
    for _ in range(3):
        await asyncio.sleep(0.3)
        assert await renew_scope(one, "live", 0.6)
    assert not await take(two, "next", ["a/b.py"])
    await release_scope(one, "live")
    assert not await renew_scope(one, "live", 0.6)
