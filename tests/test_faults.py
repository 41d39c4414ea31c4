"""Faults survived (issue 19): Bosun as real processes — two web processes, three workers — on a
PostgreSQL and a Redis of the test's own (``tests.private_services``: killed and restarted
without disturbing the machine's shared services or other tests), the Docker engine and the
GitHub emulator, with script agents.

Each scenario ends with the same accounting, printed and asserted: no delivery lost (every
stored delivery processed or ignored, none ``received``, ``processing`` or ``failed``), no run
stuck (every run in exactly one terminal state, or ``review_ready``), no run twice (one run per
labelled issue, each prepared once, one pull request per review-ready run and none for another),
and every finished run with its summary and manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bot.settings import Settings
from tests.emulator.client import EmulatorClient
from tests.emulator.server import EmulatorServer
from tests.emulator.world import WebhookReceiver, World, make_source_repo
from tests.lifecycle_stack import BASE_IMAGE, BOSUN, FAST_WORKER, BosunProcess, ProcessStack
from tests.netlink import Link
from tests.private_services import PrivatePostgres, PrivateRedis
from tests.services import docker_client, missing
from tests.stack import WORK_ROOT, free_port, make_stack_settings

pytestmark = pytest.mark.docker

T = TypeVar("T")

TERMINAL = {"failed", "cancelled", "timed_out", "rejected", "merged"}
SETTLED = TERMINAL | {"review_ready"}
TICKS = 16  # the steady agent prints a line every half second for this many ticks
PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "runner": "script",
        "image": BASE_IMAGE,
        "command": ["sh", "-c", "echo 'Edited by the agent.' >> README.md; echo done"],
    },
    "steady": {
        "runner": "script",
        "image": BASE_IMAGE,
        "command": [
            "sh",
            "-c",
            f"echo started; i=0; while [ $i -lt {TICKS} ]; do i=$((i+1)); echo tick $i;"
            " sleep 0.5; done; echo 'Edited steadily.' >> README.md; echo done",
        ],
    },
}
WORKER = {
    **FAST_WORKER,
    # Outages here last seconds; a run's heartbeat goes stale only well after (production: 90).
    "heartbeat_stale_seconds": 20.0,
    "health_check_seconds": 2.0,
    # A delivery a web process could not store (its database restarting) is asked for again
    # by the redelivery sweeper: every minute here (production: every 5).
    "sweep_minutes": 1,
}


def _pg_query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import asyncpg

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"), timeout=5)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


@dataclass
class FaultStack:
    """Two web processes and three workers on a private PostgreSQL and Redis."""

    settings: Settings
    world: World
    logs: Path
    pg: PrivatePostgres
    redis: PrivateRedis
    ports: list[int]
    processes: ProcessStack
    github: Link
    """The network path from Bosun's processes to GitHub (the emulator), which a test can cut."""
    webs: list[BosunProcess] = field(default_factory=list)
    since: int = 0
    """Deliveries sent before the scenario began (earlier scenarios', or not Bosun's)."""
    known_runs: set[str] = field(default_factory=set)
    known_pulls: set[int] = field(default_factory=set)
    spawned: int = 0

    @property
    def emulator(self) -> Any:
        return self.world.emulator

    @property
    def repo(self) -> str:
        return self.world.repo.full_name

    @property
    def workers(self) -> list[BosunProcess]:
        return self.processes.workers

    def start(self, workers: int = 3) -> None:
        self.processes.start_web(self.ports[0])  # migrates, then serves
        assert self.processes.web is not None
        self.webs.append(self.processes.web)
        argv = [str(BOSUN), "serve", "--port", str(self.ports[1])]
        second = BosunProcess("web-1", argv, self.processes.env, self.logs / "web-1.log")
        self.webs.append(second.start())
        url = f"http://127.0.0.1:{self.ports[1]}/healthz"
        self.wait_for(lambda: _http_ok(url), 60, "the second web process")
        for _ in range(workers):
            self.start_worker()
        self.wait_for(
            lambda: all(w.logged_at("worker_started") for w in self.workers), 60, "the workers"
        )

    def begin(self) -> None:
        """A scenario starts on a healthy stack: three workers, webhooks to web 0; only what
        happens from here on is accounted."""
        self.emulator.clear_faults()
        self.github.mend()
        self.send_to(0)
        alive = [w for w in self.workers if w.alive()]
        self.processes.workers[:] = alive
        while len(self.workers) < 3:
            self.start_worker()
        self.wait_for(
            lambda: all(w.logged_at("worker_started") for w in self.workers), 60, "the workers"
        )
        self.since = len(self.emulator.deliveries())
        self.known_runs = set()
        self.known_runs = {r["id"] for r in self.runs()}
        pulls = self.emulator.state(*self.repo.split("/"))["pulls"]
        self.known_pulls = {p["number"] for p in pulls}

    def start_worker(self) -> BosunProcess:
        """A worker process with a log of its own (never one a dead worker wrote)."""
        self.spawned += 1
        name = f"worker-{self.spawned}"
        worker = BosunProcess(
            name, [str(BOSUN), "worker"], self.processes.env, self.logs / f"{name}.log"
        )
        self.processes.workers.append(worker.start())
        return worker

    def send_to(self, web: int) -> None:
        """Point the App's webhooks at web process ``web``."""
        url = f"http://127.0.0.1:{self.ports[web]}/webhooks/github"
        self.emulator.create_app(url, "webhook-secret")

    def stop(self) -> None:
        for process in [*self.workers, *self.webs]:
            process.stop()
        with contextlib.suppress(Exception):
            self.processes.remove_sandboxes()

    def outputs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in [*self.webs, *self.workers])

    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return _pg_query(self.pg.url, sql, *args)

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the database may be restarting
                value = predicate()
                if value:
                    return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.outputs()}")

    # -- driving it as GitHub would ---------------------------------------------------------
    def label_issues(self, count: int, profile: str, title: str) -> list[int]:
        label = "bosun" if profile == "default" else f"bosun:{profile}"
        numbers = []
        for n in range(count):
            number = self.emulator.create_issue(self.repo, f"{title} {n}", "Please edit.", "alice")
            self.emulator.add_labels(self.repo, number, [label], "alice")
            numbers.append(number)
        return numbers

    def runs(self) -> list[dict[str, Any]]:
        """The runs of this scenario."""
        rows = self.db(
            "SELECT r.id, r.state, r.reason, r.pr_number, t.issue_number FROM runs r"
            " JOIN tasks t ON t.id = r.task_id"
        )
        keys = ("id", "state", "reason", "pr_number", "issue")
        runs = [dict(zip(keys, row, strict=True)) for row in rows]
        return [r for r in runs if r["id"] not in self.known_runs]

    def ticking(self, count: int) -> list[dict[str, Any]]:
        """Wait for ``count`` runs whose steady agent is printing its ticks."""

        def started() -> list[dict[str, Any]]:
            running = [r for r in self.runs() if r["state"] == "running"]
            ticking = [r for r in running if self._log_has(r["id"], "tick 2")]
            return ticking if len(ticking) >= count else []

        return self.wait_for(started, 180, f"{count} agents ticking")

    def _log_has(self, run_id: str, text: str) -> bool:
        rows = self.db(
            "SELECT count(*) FROM run_events WHERE run_id=$1 AND kind='log' AND data::text LIKE $2",
            run_id,
            f"%{text}%",
        )
        return bool(rows[0][0])

    def settle(self, expected_runs: int, timeout: float) -> list[dict[str, Any]]:
        def settled() -> list[dict[str, Any]]:
            runs = self.runs()
            unsettled = self.db(
                "SELECT count(*) FROM deliveries WHERE status IN ('received', 'processing')"
            )[0][0]
            sent = [d["guid"] for d in self.emulator.deliveries(since=self.since)]
            stored = self.db("SELECT count(*) FROM deliveries WHERE id = ANY($1)", sent)[0][0]
            if unsettled or stored < len(sent) or len(runs) < expected_runs:
                return []
            return runs if all(r["state"] in SETTLED for r in runs) else []

        return self.wait_for(settled, timeout, f"{expected_runs} runs settled")

    # -- the accounting ---------------------------------------------------------------------
    def account(self, scenario: str, expected_runs: int, timeout: float = 180) -> dict[str, Any]:
        runs = self.settle(expected_runs, timeout)
        sent = {d["guid"] for d in self.emulator.deliveries(since=self.since)}
        deliveries = dict(
            self.db(
                "SELECT status, count(*) FROM deliveries WHERE id = ANY($1) GROUP BY status",
                list(sent),
            )
        )
        stored = sum(deliveries.values())
        statuses = "SELECT status, count(*) FROM deliveries GROUP BY status"
        everything = dict(self.db(statuses))
        guids = {row[0] for row in self.db("SELECT id FROM deliveries")}
        pulls = [
            p
            for p in self.emulator.state(*self.repo.split("/"))["pulls"]
            if p["number"] not in self.known_pulls
        ]
        states = Counter(r["state"] for r in runs)
        redelivered = sum(
            1
            for d in self.emulator.deliveries(since=self.since)
            if d["attempts"] and not 200 <= d["attempts"][0]["status_code"] < 300
        )
        counts = {
            "scenario": scenario,
            "deliveries_sent": len(sent),
            "deliveries_refused_then_redelivered": redelivered,
            "deliveries_stored": stored,
            "deliveries_by_status": deliveries,
            "runs": len(runs),
            "runs_by_state": dict(states),
            "pull_requests": len(pulls),
        }
        print(f"\n[faults] {json.dumps(counts, sort_keys=True)}")
        for run in runs:
            if run["state"] != "review_ready":
                print(f"[faults]   {run['state']}: {run['reason']}")
        # No delivery lost: every one GitHub sent is stored, and decided.
        assert sent <= guids, sorted(sent - guids)[:5]
        # A delivery may still arrive after the settling (a late redelivery, a check run's
        # event): each is decided within seconds, or it was lost on the way to its job.
        decided = {"processed", "ignored"}
        if not set(everything) <= decided:
            everything = self.wait_for(
                lambda: found if set(found := dict(self.db(statuses))) <= decided else None,
                30,
                f"every delivery decided (were {everything})",
            )
        # No run twice: one run per labelled issue, each prepared once.
        assert len(runs) == expected_runs, runs
        assert len({r["issue"] for r in runs}) == len(runs), runs
        for run in runs:
            moves = [e["to"] for e in self.events(run["id"], "status")]
            assert moves.count("preparing") == 1, (run, moves)
            # Exactly one clear end: one terminal (or review-ready) state, and it is the last.
            assert sum(m in SETTLED for m in moves) == 1, (run, moves)
            assert moves[-1] == run["state"], (run, moves)
            artifacts = {row[0] for row in self.db(
                "SELECT name FROM artifacts WHERE run_id=$1", run["id"]
            )}  # fmt: skip
            assert {"summary", "manifest.json"} <= artifacts, (run, artifacts)
        ready = [r for r in runs if r["state"] == "review_ready"]
        assert len(pulls) == len(ready), (pulls, runs)
        assert sorted(p["number"] for p in pulls) == sorted(r["pr_number"] for r in ready)
        return counts

    def events(self, run_id: str, kind: str) -> list[dict[str, Any]]:
        rows = self.db(
            "SELECT data FROM run_events WHERE run_id=$1 AND kind=$2 ORDER BY seq", run_id, kind
        )
        return [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in rows]


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One stack for every scenario of the module (starting five processes is the slow part);
    each scenario begins by making it healthy again (``FaultStack.begin``)."""
    client = docker_client()
    try:
        client.images.get(BASE_IMAGE)
    except Exception as exc:  # noqa: BLE001
        missing(BASE_IMAGE, f"{exc} (scripts/bootstrap.sh imports it)")
    finally:
        client.close()
    tmp_path = tmp_path_factory.mktemp("faults")
    WORK_ROOT.mkdir(mode=0o755, exist_ok=True)
    work_root = WORK_ROOT / f"faults-{uuid.uuid4().hex[:10]}"
    work_root.mkdir(mode=0o755)
    server = EmulatorServer(tmp_path / "emulator").start()
    emulator = EmulatorClient(server.base_url)
    pg, redis = PrivatePostgres(), PrivateRedis()
    try:
        pg.init()
        redis.start()
        ports = [free_port(), free_port()]
        app = emulator.create_app(f"http://127.0.0.1:{ports[0]}/webhooks/github", "webhook-secret")
        source = make_source_repo(tmp_path / "source", {"README.md": "# Hello\n"})
        repo = emulator.create_repo("octo", "hello", str(source))
        emulator.add_user("alice", "octo/hello", "write")
        world = World(emulator, app, repo, WebhookReceiver(url=""), source)
        github = Link(server.port)
        settings = make_stack_settings(
            tmp_path,
            world,
            redis.url,
            "faults",
            work_root,
            ports[0],
            database={"url": pg.url},
            worker=WORKER,
            profiles=PROFILES,
        )
        # Bosun reaches GitHub through a link the outage scenario cuts; the emulator's webhooks
        # reach Bosun directly.
        settings.github.api_url = settings.github.web_url = github.url
        logs = tmp_path / "logs"
        logs.mkdir()
        processes = ProcessStack(settings, world, logs)
        stack = FaultStack(settings, world, logs, pg, redis, ports, processes, github)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
    finally:
        github.close()
        redis.destroy()
        pg.destroy()
        emulator.close()
        server.stop()
        shutil.rmtree(work_root, ignore_errors=True)


@pytest.fixture
def faults(fault_stack: FaultStack) -> FaultStack:
    fault_stack.begin()
    return fault_stack


def test_redis_restarted_during_intake_and_mid_run(faults: FaultStack) -> None:
    """Redis SIGKILLed (every key lost) for 3 s while two agents work and four issues are
    labelled on both web processes: the webs keep storing, the workers reconnect, the running
    runs finish and the deliveries stored meanwhile become runs."""
    faults.label_issues(2, "steady", "Before")
    faults.ticking(2)
    faults.redis.kill()
    down = time.monotonic()
    faults.label_issues(2, "default", "During, web 0")
    faults.send_to(1)
    faults.label_issues(2, "default", "During, web 1")
    time.sleep(max(0.0, 3 - (time.monotonic() - down)))
    faults.redis.start()
    assert all(w.alive() for w in faults.workers), faults.outputs()
    counts = faults.account("redis restarted during intake and mid-run", expected_runs=6)
    assert counts["runs_by_state"] == {"review_ready": 6}
    assert all(w.alive() for w in faults.workers), faults.outputs()
    assert any(w.logged_at("queue_reconnected") for w in faults.workers)


def test_postgresql_restarted_mid_run(faults: FaultStack) -> None:
    """PostgreSQL stopped (fast shutdown: every connection cut) for 4 s while two agents print
    their ticks: event rounds and transitions wait and retry, and every run ends review-ready."""
    faults.label_issues(2, "steady", "Steady")
    faults.ticking(2)
    faults.pg.restart(down_seconds=4)
    counts = faults.account("postgresql restarted mid-run", expected_runs=2)
    assert counts["runs_by_state"] == {"review_ready": 2}
    for run in faults.runs():  # every tick the agent printed was kept, the outage's too
        ticks = [e["line"] for e in faults.events(run["id"], "log") if "tick" in e.get("line", "")]
        assert ticks == [f"tick {i}" for i in range(1, TICKS + 1)], ticks
    assert any(w.logged_at("database_reconnected") for w in faults.workers)


def test_a_worker_killed_during_publish(faults: FaultStack) -> None:
    """A worker SIGKILLed after the run's commit was pushed and while its pull request is being
    opened: the run ends ``failed`` (interrupted) once, with its artifacts, no pull request is
    opened for it, and another run started meanwhile is unaffected."""
    held = faults.emulator.hold("POST", "/repos/*/*/pulls", timeout_ms=600_000)
    (victim_issue,) = faults.label_issues(1, "default", "Publish")
    faults.emulator.wait_held(held, timeout=120)
    (run,) = faults.runs()
    (worker,) = faults.db("SELECT worker FROM runs WHERE id=$1", run["id"])[0]
    pid = int(str(worker).rsplit(":", 1)[1])
    victim = next(w for w in faults.workers if w.pid == pid)
    branch = faults.db("SELECT branch FROM runs WHERE id=$1", run["id"])[0][0]
    state = faults.emulator.state(*faults.repo.split("/"))
    assert branch in state["branches"]  # committed and pushed: only the pull request is missing
    victim.kill9()
    faults.label_issues(1, "default", "Meanwhile")
    counts = faults.account("worker killed during publish", expected_runs=2)
    assert counts["runs_by_state"] == {"failed": 1, "review_ready": 1}, counts
    ended = next(r for r in faults.runs() if r["issue"] == victim_issue)
    assert ended["state"] == "failed" and "interrupted" in ended["reason"], ended
    assert faults.emulator.fault_info(held)["waiting"] == 1  # the dead worker's request
    faults.emulator.clear_faults()


def test_github_unreachable_for_a_while(faults: FaultStack) -> None:
    """The network to GitHub fails for two minutes: every API and git connection is reset,
    open ones broken (then, as a second outage, every call answers 502 for 20 s) — longer than
    a delivery's own tries (with this stack's short client retries), so the deliveries are
    handed back to the reconciler and enqueued again until GitHub answers — while one agent
    works and three issues are labelled: nothing is lost, and every run settles in one clear
    state once GitHub is back (the working run may fail to push while GitHub is down: then it
    says so)."""
    faults.label_issues(1, "steady", "Working")
    faults.ticking(1)
    faults.github.cut()
    started = time.monotonic()
    faults.label_issues(3, "default", "While GitHub is down")
    time.sleep(max(0.0, 120 - (time.monotonic() - started)))
    faults.github.mend()
    print(f"\n[faults] the network to GitHub was down for {time.monotonic() - started:.0f}s")
    outage = faults.emulator.fault("error", status=502, count=None)
    time.sleep(20)
    faults.emulator.clear_faults()
    counts = faults.account("github unreachable", expected_runs=4, timeout=240)
    assert faults.github.refused > 10  # the network was really down
    assert faults.emulator.fault_info(outage["id"])["hits"] > 0
    assert counts["runs_by_state"].get("review_ready", 0) >= 3, counts
    assert any(w.logged_at("delivery_waits_for_forge") for w in faults.workers)
    for run in faults.runs():  # a run GitHub's outage ended says so, and how to go on
        if run["state"] == "failed":
            assert "internal error" not in run["reason"] and "/retry" in run["reason"], run


def test_two_hundred_deliveries_while_every_worker_is_down(faults: FaultStack) -> None:
    """Every worker stopped; 200 deliveries arrive on the two web processes (196 new issues and
    four labels that start runs); once workers are back, every delivery is decided once and the
    four runs end review-ready."""
    for worker in faults.workers:
        worker.stop()
    numbers = []
    for n in range(196):
        faults.send_to(n % 2)
        numbers.append(faults.emulator.create_issue(faults.repo, f"Idle {n}", "no label", "alice"))
    for n, number in enumerate(numbers[:4]):
        faults.send_to(n % 2)
        faults.emulator.add_labels(faults.repo, number, ["bosun"], "alice")
    faults.emulator.deliveries()  # waits until the emulator has sent them all
    sent = [d["guid"] for d in faults.emulator.deliveries(since=faults.since)]
    assert len(sent) >= 200

    def missing() -> list[dict[str, Any]]:
        guids = {row[0] for row in faults.db("SELECT id FROM deliveries WHERE id = ANY($1)", sent)}
        return [d for d in faults.emulator.deliveries(since=faults.since) if d["guid"] not in guids]

    try:  # every one stored with no worker up (a 202 means stored)
        faults.wait_for(lambda: not missing(), 30, "every delivery stored")
    except AssertionError:
        raise AssertionError(
            [(d["event"], d.get("action"), d["attempts"]) for d in missing()]
        ) from None
    started = time.monotonic()
    faults.processes.workers.clear()
    for _ in range(3):
        faults.start_worker()
    counts = faults.account("200 deliveries while every worker is down", expected_runs=4)
    print(
        f"\n[faults] backlog decided and runs settled {time.monotonic() - started:.0f}s after start"
    )
    assert counts["deliveries_stored"] >= 200
    sent = [d["guid"] for d in faults.emulator.deliveries(since=faults.since)]
    attempts = faults.db("SELECT attempts FROM deliveries WHERE id = ANY($1)", sent)
    assert {row[0] for row in attempts} == {1}  # each decided once
    assert counts["runs_by_state"] == {"review_ready": 4}
