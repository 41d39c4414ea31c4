"""Property: whatever order approvals, rejections, pushes, retries, cancels and holds on one run
arrive and are processed in, and however slowly GitHub answers, Bosun never merges a head
nobody approved and always ends in a state GitHub agrees with.

Each seed plays a random script on a fresh review-ready run: people comment and push on
GitHub in script order (the ground truth of what was approved when), each delivery is
processed by its own task after a random delay (so deliveries overlap and overtake each
other), and random GitHub calls answer slowly. Then:

* nothing unapproved is merged: a merged PR's head has the files of a head some approver
  approved while it was the PR head;
* Bosun and GitHub agree: the run is ``merged`` exactly when the PR is, at GitHub's merge
  commit; a rejected run's PR is not merged; a run still in review is at GitHub's head with
  only approvals of that head counting; an ``approved`` run is one that may not merge yet
  (on hold, or ``merge.auto_merge`` off);
* no delivery failed, and every reply fit GitHub's limits (the emulator refuses longer ones,
  which would fail a delivery).

``BOSUN_INTERLEAVING_SEEDS`` sets how many seeds run (default 200); a failure names its seed
and script, and ``BOSUN_INTERLEAVING_SEED`` replays one seed.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bot.domain.review import REVIEWABLE
from bot.domain.states import RunState
from tests.review_harness import Hook, ReadyRun, Review, open_review

SEEDS = int(os.environ.get("BOSUN_INTERLEAVING_SEEDS", "200"))
ONE_SEED = os.environ.get("BOSUN_INTERLEAVING_SEED")
APPROVERS = ("bob", "carol")
PROCESSES = 2
"""Processes the seeds are split over (the cores of a small CI machine)."""
LANES = 2
"""Seeds played side by side in each process, each lane with its own emulator and database."""

SLOW_PATHS = (
    ("GET", "/repos/*/*/collaborators/*/permission"),
    ("PUT", "/repos/*/*/pulls/*/merge"),
    ("GET", "/repos/*/*/pulls/*"),
    ("GET", "/repos/*/*/git/commits/*"),
    ("POST", "/repos/*/*/issues/*/comments"),
)

# (operation, weight)
OPERATIONS = (
    ("approve", 6),
    ("approve_other", 1),  # the requester or a reader: refused
    ("approve_cancel", 1),
    ("reject", 2),
    ("push_change", 3),
    ("push_same_tree", 1),
    ("retry", 1),
    ("cancel", 1),
    ("hold", 1),
    ("unhold", 1),
)


@dataclass
class Script:
    """What one seed does, and the ground truth it leaves: which contents were approved."""

    seed: int
    rng: random.Random
    run: ReadyRun
    head: str
    content: dict[str, int] = field(default_factory=dict)
    approved: set[int] = field(default_factory=set)
    played: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    version: int = 0

    def __str__(self) -> str:
        return f"seed {self.seed}: {' → '.join(self.played)}; processed: {self.outcomes}"


async def _act(review: Review, script: Script, op: str) -> list[Hook]:
    """Do ``op`` on GitHub as a person would; the deliveries it caused."""
    rng, run = script.rng, script.run
    who = rng.choice(APPROVERS)
    comment = {
        "approve": ("/approve", who),
        "approve_other": ("/approve", rng.choice(("alice", "mallory"))),
        "approve_cancel": ("/approve cancel", who),
        "reject": ("/reject not this way", who),
        "retry": ("/retry try again", "alice"),
        "cancel": ("/cancel", "alice"),
        "hold": ("/hold", who),
        "unhold": ("/unhold", who),
    }.get(op)
    if comment is not None:
        body, user = comment
        script.played.append(f"{op}({user})")
        if op == "approve":
            script.approved.add(script.content[script.head])  # what the approver looked at
        return [await review.comment(run.pr, body, user)]
    if op == "push_change":
        script.version += 1
        # Paths of this seed's own: earlier seeds' merges are on the default branch already.
        name = f"seed{script.seed}/change{script.version}.py"
        files: dict[str, str | None] = {name: f"v = {script.version}\n"}
    else:
        files = {}  # an empty commit: same tree
    sha, hook = await review.push(run.branch, files)
    script.content[sha] = script.content[script.head] + (1 if files else 0)
    script.head = sha
    script.played.append(f"{op}({sha[:7]})")
    return [hook] if hook else []


async def _play(review: Review, seed: int) -> Script:
    rng = random.Random(seed)
    run = await review.ready_run(
        f"Seed {seed}",
        {f"seed{seed}/feature.py": "def feature():\n    return 42\n"},
        status_comment=False,
        auto_merge=rng.random() < 0.8,
    )
    script = Script(seed, rng, run, run.head, content={run.head: 0})
    for method, path in rng.sample(SLOW_PATHS, rng.randint(0, 3)):
        delay, count = rng.randint(5, 40), rng.randint(1, 3)
        spec = {"method": method, "path": path, "delay_ms": delay, "count": count}
        await asyncio.to_thread(review.em.fault, "slow", **spec)
    names = [name for name, _ in OPERATIONS]
    weights = [weight for _, weight in OPERATIONS]

    async def later(hook: Hook, delay: float) -> str:
        await asyncio.sleep(delay)
        outcome = await review.process(hook)
        script.outcomes.append(f"{hook.event}.{hook.action}: {outcome}")
        return outcome

    tasks: list[asyncio.Task[str]] = []
    for op in rng.choices(names, weights, k=rng.randint(2, 6)):
        for hook in await _act(review, script, op):
            script.hooks.append(hook.guid)
            tasks.append(asyncio.create_task(later(hook, rng.uniform(0, 0.03))))
        await asyncio.sleep(rng.uniform(0, 0.015))
    await asyncio.gather(*tasks)
    return script


async def _check(review: Review, script: Script) -> None:
    run = script.run
    pull = await review.pull(run.pr)
    row = await review.run(run.run_id)
    statuses = await review.deliveries()
    failed = {g: statuses[g] for g in script.hooks if statuses[g] not in ("processed", "ignored")}
    assert not failed, f"{script}: deliveries not processed: {failed}"
    if pull["merged"]:
        merged = script.content[pull["head_sha"]]
        assert merged in script.approved, f"{script}: merged content {merged} never approved"
        assert row.state is RunState.MERGED, f"{script}: GitHub merged, the run is {row.state}"
        assert row.merged_sha == pull["merge_commit_sha"], str(script)
    else:
        assert row.state is not RunState.MERGED, f"{script}: merged in Bosun only"
    if row.state in REVIEWABLE:
        assert row.head_sha == pull["head_sha"], f"{script}: Bosun's head is behind GitHub's"
        for approval in await review.approvals(run.run_id):
            if approval.invalidated_at is None:
                assert approval.sha == row.head_sha, f"{script}: a stale approval counts"
    if row.state is RunState.APPROVED:
        auto = bool(row.repo_config["merge"]["auto_merge"])
        assert row.on_hold or not auto, f"{script}: approved, free to merge, yet not merged"


async def _lanes(root: Path, redis_url: str, namespace: str, seeds: list[int]) -> list[str]:
    """Play ``seeds`` on ``LANES`` lanes side by side, each with its own emulator and database;
    the end state of each seed's run."""
    ends: list[str] = []

    async def lane(number: int) -> None:
        lane_root = root / f"lane{number}"
        async with open_review(lane_root, redis_url, f"{namespace}-{number}") as review:
            for seed in seeds[number::LANES]:
                script = await _play(review, seed)
                await _check(review, script)
                ends.append((await review.run(script.run.run_id)).state.value)

    # Every lane finishes (and stops its emulator) before the first failure is raised.
    results = await asyncio.gather(
        *(lane(n) for n in range(min(LANES, len(seeds)))), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return ends


def _lanes_in_a_process(root: str, redis_url: str, namespace: str, seeds: list[int]) -> list[str]:
    """``_lanes`` in a process of its own (a failed check comes back as its exception)."""
    return asyncio.run(_lanes(Path(root), redis_url, namespace, seeds))


async def test_random_interleavings_never_merge_an_unapproved_head(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    seeds = [int(ONE_SEED)] if ONE_SEED else list(range(SEEDS))
    started = time.monotonic()
    processes = 1 if ONE_SEED else PROCESSES
    spawn = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=spawn) as pool:
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool,
                    _lanes_in_a_process,
                    str(tmp_path / f"p{n}"),
                    redis_url,
                    f"{redis_namespace}-p{n}",
                    seeds[n::processes],
                )
                for n in range(processes)
            )
        )
    ends = [end for part in parts for end in part]
    merged, rejected = ends.count("merged"), ends.count("rejected")
    elapsed = time.monotonic() - started
    print(f"{len(seeds)} seeds in {elapsed:.1f}s: {merged} merged, {rejected} rejected")
    assert len(ends) == len(seeds)
    if not ONE_SEED:
        assert merged >= len(seeds) // 10 and rejected >= len(seeds) // 20  # both outcomes seen
