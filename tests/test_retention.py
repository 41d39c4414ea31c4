"""Retention (``jobs.upkeep.prune``, ``bosun prune``) on SQLite and PostgreSQL: what finished runs
left behind is removed past its retention; recent and unfinished work, and a run's record
(manifest, summary, status events) until its own longer retention, are kept; ``--dry-run``
counts the same and changes nothing."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select

from bot.db.artifacts import DatabaseArtifacts, FileArtifacts, store_artifact
from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade
from bot.db.models import (
    Artifact,
    Delivery,
    Notification,
    Repository,
    Run,
    RunEvent,
    Task,
    WebhookEndpoint,
    utcnow,
)
from bot.db.runlog import append_event
from bot.domain.states import DeliveryStatus, RunState
from bot.entrypoints.cli import main
from bot.settings import Settings
from jobs.upkeep.prune import HostUpkeep, PruneReport, prune_database, prune_host
from sandboxes.git import GitIdentity
from sandboxes.workspace import WorkspaceManager
from tests.conftest import make_settings

RETENTION = {"events_days": 30, "artifacts_days": 20, "records_days": 365, "deliveries_days": 10}
# run id: (state, days since it ended (None: not ended), days since it was created)
RUNS: dict[str, tuple[RunState, int | None, int]] = {
    "r-old": (RunState.FAILED, 100, 101),  # events and artifacts go, its record stays
    "r-ancient": (RunState.MERGED, 400, 401),  # everything goes, its record too
    "r-recent": (RunState.FAILED, 5, 6),  # everything stays
    "r-running": (RunState.RUNNING, None, 500),  # never pruned, however old
    "r-review": (RunState.REVIEW_READY, None, 500),  # not terminal either
}


async def _seed(settings: Settings, sessions: Any, now: datetime) -> None:
    files = FileArtifacts(settings.artifacts_dir)
    database = DatabaseArtifacts(1 << 20)
    async with sessions.begin() as session:
        served = Repository(full_name="octo/hello", default_branch="main")
        gone = Repository(full_name="octo/gone", default_branch="main", active=False)
        session.add_all([served, gone])
        await session.flush()
        task = Task(repository_id=served.id, issue_number=1, title="t")
        session.add(task)
        await session.flush()
        for run_id, (state, ended, created) in RUNS.items():
            session.add(
                Run(
                    id=run_id,
                    task_id=task.id,
                    repository_id=served.id,
                    state=state,
                    created_at=now - timedelta(days=created),
                    state_since=now - timedelta(days=ended if ended is not None else created),
                    finished_at=now - timedelta(days=ended) if ended is not None else None,
                )
            )
        await session.flush()
        for run_id in RUNS:
            await append_event(session, run_id, "status", {"state": "queued"})
            for n in range(3):
                await append_event(session, run_id, "log", {"line": f"line {n} " + "x" * 100})
            await store_artifact(session, files, run_id, "diff", "d" * 1000)
            await store_artifact(session, database, run_id, "transcript", "t" * 5000)
            await store_artifact(session, files, run_id, "manifest.json", "{}")
            await store_artifact(session, files, run_id, "summary", "s" * 10)
        endpoint = WebhookEndpoint(name="chat", url="http://127.0.0.1:9/", secret="s" * 16)
        session.add(endpoint)
        await session.flush()
        for name, status, age in (
            ("d-old-done", DeliveryStatus.PROCESSED, 40),
            ("d-old-ignored", DeliveryStatus.IGNORED, 40),
            ("d-old-received", DeliveryStatus.RECEIVED, 40),  # never handled: kept
            ("d-old-processing", DeliveryStatus.PROCESSING, 40),
            ("d-recent", DeliveryStatus.PROCESSED, 2),
        ):
            at = now - timedelta(days=age)
            session.add(
                Delivery(
                    id=name,
                    event="issues",
                    payload="p" * 300,
                    status=status,
                    received_at=at,
                    processed_at=at if status == DeliveryStatus.PROCESSED else None,
                )
            )
        for n, (status, age) in enumerate((("delivered", 40), ("pending", 40), ("failed", 2))):
            session.add(
                Notification(
                    endpoint_id=endpoint.id,
                    delivery_id=f"n{n}",
                    type="run.finished",
                    run_id="r-old",
                    repository="octo/hello",
                    state="failed",
                    previous_state="running",
                    seq=1,
                    body="{}",
                    status=status,
                    created_at=now - timedelta(days=age),
                )
            )
    work = settings.sandbox.workdir
    for run_id in ("r-old", "r-recent", "r-running"):  # leftovers of a worker that died
        (work / "runs" / run_id / "workspace").mkdir(parents=True)
        (work / "runs" / run_id / "workspace" / "f.txt").write_text("w" * 700)
    for repo in ("octo__hello", "octo__gone", "someone__else"):
        (work / "mirrors" / f"{repo}.git" / "objects").mkdir(parents=True)
        (work / "mirrors" / f"{repo}.git" / "objects" / "pack").write_text("m" * 900)


async def _state(sessions: Any, settings: Settings) -> dict[str, Any]:
    async with sessions() as session:
        events = (await session.execute(select(RunEvent.run_id, RunEvent.kind))).all()
        artifacts = (await session.execute(select(Artifact.run_id, Artifact.name))).all()
        deliveries = (await session.execute(select(Delivery.id))).scalars().all()
        notifications = (await session.execute(select(Notification.status))).scalars().all()
        runs = (await session.execute(select(func.count()).select_from(Run))).scalar_one()
    root = settings.data_dir.parent
    files = sorted(
        str(Path(dirpath, name).relative_to(root))
        for dirpath, _, names in os.walk(root)
        for name in names
        if not name.endswith((".db", ".db-wal", ".db-shm", ".lock"))
    )
    return {
        "events": sorted((run, kind) for run, kind in events),
        "artifacts": sorted((run, name) for run, name in artifacts),
        "deliveries": sorted(deliveries),
        "notifications": sorted(notifications),
        "runs": runs,
        "files": files,
    }


async def _cli_prune(settings: Settings, *args: str) -> Any:
    env = {
        "BOSUN_ENV_FILE": "",
        "BOSUN_DATABASE__URL": settings.database.url,
        "BOSUN_DATA_DIR": str(settings.data_dir),
        "BOSUN_SANDBOX__WORKDIR": str(settings.sandbox.workdir),
        **{f"BOSUN_RETENTION__{k.upper()}": str(v) for k, v in RETENTION.items()},
    }
    return await asyncio.to_thread(CliRunner().invoke, main, ["prune", *args], env=env)


def _counts(report: PruneReport) -> dict[str, tuple[int, int]]:
    return {kind: (r.count, r.bytes) for kind, r in report.removed.items()}


async def test_prune_removes_what_expired_and_keeps_the_rest(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, "redis://127.0.0.1:1/0", retention=RETENTION)
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    now = utcnow()
    try:
        await upgrade(engine)
        await _seed(settings, sessions, now)
        workspaces = WorkspaceManager(settings.sandbox.workdir, identity=GitIdentity("b", "b@x"))
        before = await _state(sessions, settings)

        async def prune(dry_run: bool) -> PruneReport:
            report = await prune_database(sessions, settings.retention, now=now, dry_run=dry_run)
            return await prune_host(
                sessions, settings, workspaces, now=now, dry_run=dry_run, report=report
            )

        dry = await prune(dry_run=True)
        assert await _state(sessions, settings) == before, "the dry run changed something"
        if db_url.startswith("sqlite"):
            cli = await _cli_prune(settings, "--dry-run")
            assert cli.exit_code == 0, cli.output
            assert "deliveries" in cli.output and "dry run: nothing was removed" in cli.output
            line = next(x for x in cli.output.splitlines() if x.startswith("deliveries"))
            assert line.split()[1:4] == ["2", "600", "B"], line
            assert await _state(sessions, settings) == before, "bosun prune --dry-run changed"
        done = await prune(dry_run=False)
        assert not done.errors and not dry.errors
        assert _counts(dry) == _counts(done), "the dry run counted something else"
        assert _counts(done) == {
            # r-old and r-ancient: 3 log lines and 4 artifact events each (the status events
            # are the record).
            "events": (14, done.removed["events"].bytes),
            # diff and transcript of each; only the transcript's 5000 bytes are the database's.
            "artifacts": (4, 2 * 5000),
            # r-ancient's manifest.json and summary, and its status event.
            "records": (3, done.removed["records"].bytes),
            "deliveries": (2, 2 * 300),
            "notifications": (1, 2),
            # r-old's diff file; r-ancient's diff, manifest.json and summary files.
            "artifact_files": (4, 1000 + 1000 + 2 + 10),
            "workspaces": (2, done.removed["workspaces"].bytes),  # r-old's and r-recent's
            "mirrors": (1, done.removed["mirrors"].bytes),  # octo/gone's
        }
        assert done.removed["events"].bytes > 6 * 100
        assert done.removed["workspaces"].bytes >= 2 * 700
        assert done.removed["mirrors"].bytes >= 900

        after = await _state(sessions, settings)
        assert after["runs"] == len(RUNS)  # a run's row always stays
        kept_everything = {"r-recent", "r-running", "r-review"}
        for run_id in kept_everything:
            assert [e for e in before["events"] if e[0] == run_id] == [
                e for e in after["events"] if e[0] == run_id
            ]
            assert [a for a in before["artifacts"] if a[0] == run_id] == [
                a for a in after["artifacts"] if a[0] == run_id
            ]
        assert [e for e in after["events"] if e[0] == "r-old"] == [("r-old", "status")]
        assert [a for a in after["artifacts"] if a[0] == "r-old"] == [
            ("r-old", "manifest.json"),
            ("r-old", "summary"),
        ]
        assert not [e for e in after["events"] if e[0] == "r-ancient"]
        assert not [a for a in after["artifacts"] if a[0] == "r-ancient"]
        assert after["deliveries"] == ["d-old-processing", "d-old-received", "d-recent"]
        assert after["notifications"] == ["failed", "pending"]
        files = set(after["files"])
        artifacts = settings.artifacts_dir.relative_to(tmp_path)
        assert {str(artifacts / "r-old" / n) for n in ("manifest.json", "summary")} <= files
        assert str(artifacts / "r-old" / "diff") not in files
        assert not (settings.artifacts_dir / "r-ancient").exists()
        for run_id in ("r-recent", "r-running", "r-review"):
            assert str(artifacts / run_id / "diff") in files
        runs = settings.sandbox.workdir / "runs"
        assert not (runs / "r-old").exists()
        assert not (runs / "r-recent").exists()  # a finished run's leftovers, whatever its age
        assert (runs / "r-running" / "workspace" / "f.txt").exists()  # a running run's: never
        mirrors = settings.sandbox.workdir / "mirrors"
        assert not (mirrors / "octo__gone.git").exists()
        assert (mirrors / "octo__hello.git" / "objects" / "pack").exists()
        assert (mirrors / "someone__else.git").exists()  # no row names it: not ours to judge

        again = await prune(dry_run=False)
        assert all(r.count == 0 for r in again.removed.values()), _counts(again)
    finally:
        await engine.dispose()


async def test_each_worker_prunes_its_host_at_start(tmp_path: Path) -> None:
    """The worker's host pass (``HostUpkeep``) runs at start, without waiting an hour: a
    finished run's leftover workspace goes, a running run's stays."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    settings = make_settings(tmp_path, db, "redis://127.0.0.1:1/0", retention=RETENTION)
    engine = create_engine(db)
    sessions = session_factory(engine)
    try:
        await upgrade(engine)
        await _seed(settings, sessions, utcnow())
        workspaces = WorkspaceManager(settings.sandbox.workdir, identity=GitIdentity("b", "b@x"))
        runs = settings.sandbox.workdir / "runs"
        upkeep = HostUpkeep(sessions, settings, lambda: workspaces)
        upkeep.start()
        try:
            for _ in range(100):
                if not (runs / "r-old").exists():
                    break
                await asyncio.sleep(0.05)
        finally:
            await upkeep.stop()
        assert not (runs / "r-old").exists() and not (runs / "r-recent").exists()
        assert (runs / "r-running" / "workspace" / "f.txt").exists()
    finally:
        await engine.dispose()
