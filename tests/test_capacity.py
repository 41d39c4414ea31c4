"""Capacity slots on real Redis, shared by independent clients (as separate worker processes
would be): caps hold under contention, the line is first come first served, a crashed holder's
slot frees itself when its lease lapses, and a release wakes the next run's deferred job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from arq.connections import ArqRedis

from bot.services import redis_pool
from jobs.admission.capacity import Capacity, Slot
from tests.services import REDIS_URL

T0 = 1_700_000_000.0  # enqueue times: fixed, so the expected order is explicit


@pytest.fixture
async def clients(redis_namespace: str) -> AsyncIterator[list[ArqRedis]]:
    """Two independent Redis clients (two "workers"), each with its own connection pool."""
    pools = [redis_pool(REDIS_URL, f"{redis_namespace}:queue") for _ in range(2)]
    yield pools
    for pool in pools:
        await pool.aclose(close_connection_pool=True)


def capacity_factory(redis_namespace: str, **overrides: float) -> Callable[[ArqRedis], Capacity]:
    def make(redis: ArqRedis) -> Capacity:
        values: dict[str, float] = {
            "global_cap": 2,
            "lease_seconds": 30.0,
            "waiter_ttl_seconds": 30.0,
            **overrides,
        }
        return Capacity(
            redis,
            namespace=redis_namespace,
            queue_name=f"{redis_namespace}:queue",
            global_cap=int(values["global_cap"]),
            lease_seconds=values["lease_seconds"],
            waiter_ttl_seconds=values["waiter_ttl_seconds"],
        )

    return make


async def test_global_cap_queues_in_enqueue_order(
    clients: list[ArqRedis], redis_namespace: str
) -> None:
    one, two = (capacity_factory(redis_namespace, global_cap=1)(c) for c in clients)
    assert (await one.acquire("a", repository_id=1, enqueued_at=T0, repo_cap=5)).granted
    # The later run asks first; the earlier one still stands ahead of it.
    late = await two.acquire("c", repository_id=2, enqueued_at=T0 + 2, repo_cap=5)
    early = await one.acquire("b", repository_id=3, enqueued_at=T0 + 1, repo_cap=5)
    assert early == Slot(False, 1, 2, "global")
    late = await two.acquire("c", repository_id=2, enqueued_at=T0 + 2, repo_cap=5)
    assert late == Slot(False, 2, 2, "global")
    assert late.describe("o/r") == "waiting: position 2 of 2 in the global queue"

    woken = await one.release("a", repository_id=1, repo_cap=5)
    assert "b" in woken
    # c asks before b: the slot is still b's turn.
    assert not (await two.acquire("c", repository_id=2, enqueued_at=T0 + 2, repo_cap=5)).granted
    assert (await one.acquire("b", repository_id=3, enqueued_at=T0 + 1, repo_cap=5)).granted
    # Asking again while holding keeps the slot (a re-delivered job does not take a second).
    assert (await one.acquire("b", repository_id=3, enqueued_at=T0 + 1, repo_cap=5)).granted
    assert (await two.acquire("c", repository_id=2, enqueued_at=T0 + 2, repo_cap=5)) == Slot(
        False, 1, 1, "global"
    )


async def test_repository_cap_does_not_block_other_repositories(
    clients: list[ArqRedis], redis_namespace: str
) -> None:
    cap = capacity_factory(redis_namespace, global_cap=3)(clients[0])
    assert (await cap.acquire("a1", repository_id=1, enqueued_at=T0, repo_cap=1)).granted
    waiting = await cap.acquire("a2", repository_id=1, enqueued_at=T0 + 1, repo_cap=1)
    assert waiting == Slot(False, 1, 1, "repo")
    assert waiting.describe("octo/app") == "waiting: position 1 of 1 in the octo/app queue"
    # Another repository's later run starts: the first repository's line is its own.
    assert (await cap.acquire("b1", repository_id=2, enqueued_at=T0 + 2, repo_cap=1)).granted
    woken = await cap.release("a1", repository_id=1, repo_cap=1)
    assert woken[0] == "a2"
    assert (await cap.acquire("a2", repository_id=1, enqueued_at=T0 + 1, repo_cap=1)).granted


async def test_contending_workers_never_exceed_the_cap(
    clients: list[ArqRedis], redis_namespace: str
) -> None:
    caps = [capacity_factory(redis_namespace, global_cap=3)(c) for c in clients]
    runs = [f"r{i:02d}" for i in range(24)]

    async def ask(index: int, run: str) -> bool:
        slot = await caps[index % 2].acquire(
            run, repository_id=index % 4, enqueued_at=T0 + index, repo_cap=2
        )
        return slot.granted

    for _ in range(3):  # each run asks several times, interleaved across both clients
        granted = await asyncio.gather(*(ask(i, run) for i, run in enumerate(runs)))
    assert sum(granted) == 3
    held = await clients[0].zrange(f"{redis_namespace}:capacity:global:held", 0, -1)
    assert len(held) == 3
    # Per repository the cap of 2 held as well.
    for repository in range(4):
        key = f"{redis_namespace}:capacity:repo-{repository}:held"
        assert await clients[1].zcard(key) <= 2


async def test_crashed_holder_slot_frees_when_its_lease_lapses(
    clients: list[ArqRedis], redis_namespace: str
) -> None:
    make = capacity_factory(redis_namespace, global_cap=1, lease_seconds=0.6)
    crashed, alive = make(clients[0]), make(clients[1])
    assert (await crashed.acquire("dead", repository_id=1, enqueued_at=T0, repo_cap=2)).granted
    # "dead"'s worker stops renewing (it crashed): the waiting run gets in after the lease.
    assert not (
        await alive.acquire("next", repository_id=1, enqueued_at=T0 + 1, repo_cap=2)
    ).granted
    await asyncio.sleep(0.8)
    assert (await alive.acquire("next", repository_id=1, enqueued_at=T0 + 1, repo_cap=2)).granted


async def test_renewed_lease_keeps_the_slot(clients: list[ArqRedis], redis_namespace: str) -> None:
    make = capacity_factory(redis_namespace, global_cap=1, lease_seconds=0.6)
    holder, other = make(clients[0]), make(clients[1])
    assert (await holder.acquire("live", repository_id=1, enqueued_at=T0, repo_cap=2)).granted
    for _ in range(4):
        await asyncio.sleep(0.3)
        assert await holder.renew("live", repository_id=1)
    assert not (
        await other.acquire("next", repository_id=1, enqueued_at=T0 + 1, repo_cap=2)
    ).granted


async def test_vanished_waiter_stops_blocking_the_line(
    clients: list[ArqRedis], redis_namespace: str
) -> None:
    cap = capacity_factory(redis_namespace, global_cap=1, waiter_ttl_seconds=0.5)(clients[0])
    assert (await cap.acquire("a", repository_id=1, enqueued_at=T0, repo_cap=5)).granted
    assert not (await cap.acquire("gone", repository_id=1, enqueued_at=T0 + 1, repo_cap=5)).granted
    await cap.release("a", repository_id=1, repo_cap=5)
    # "gone" (earlier in line) never asks again; "b" waits its turn only until gone's place lapses.
    assert not (await cap.acquire("b", repository_id=1, enqueued_at=T0 + 2, repo_cap=5)).granted
    await asyncio.sleep(0.7)
    assert (await cap.acquire("b", repository_id=1, enqueued_at=T0 + 2, repo_cap=5)).granted


async def test_release_makes_the_next_deferred_job_due(
    clients: list[ArqRedis], redis_namespace: str
) -> None:
    redis = clients[0]
    second = f"{redis_namespace}-second"  # arq's job keys are global: the fixture cleans these
    cap = capacity_factory(redis_namespace, global_cap=1)(redis)
    assert (await cap.acquire("first", repository_id=1, enqueued_at=T0, repo_cap=5)).granted
    assert not (await cap.acquire(second, repository_id=1, enqueued_at=T0 + 1, repo_cap=5)).granted
    job = await redis.enqueue_job("execute_run", second, _job_id=f"run:{second}", _defer_by=600)
    assert job is not None
    queue = f"{redis_namespace}:queue"
    deferred = await redis.zscore(queue, f"run:{second}")
    assert deferred is not None and deferred > (time.time() + 500) * 1000

    assert await cap.release("first", repository_id=1, repo_cap=5) == [second]
    due = await redis.zscore(queue, f"run:{second}")
    assert due is not None and due <= (time.time() + 1) * 1000
    # Waking a run whose job is not queued adds nothing to the queue.
    await cap.wake(["no-such-run"])
    assert await redis.zscore(queue, "run:no-such-run") is None
