"""The review loop in-process, for races: Bosun's own delivery processing (``process_delivery``,
with the retries arq would make) on SQLite and the test Redis, against a GitHub emulator (in a
process of its own, on loopback) whose webhooks the test hands over itself — when, and in
which order, it chooses.

Humans act through the emulator's scenario API (comments, pushes); every delivery GitHub
emits *arrives* at once (recorded, as Bosun's intake records it) and is *processed* when the
test says so, as a task that can run alongside others. Together with the emulator's ``hold``
fault (a GitHub answer kept back until released) this gives deliberate interleavings: a
permission answer held until a push has landed, a merge answer held while a ``/reject``
arrives, two deliveries processed in the opposite order to the one GitHub sent them in.

A run is made review-ready directly (a PR with the agent's commit, the run row, its
``diff-stats`` and ``manifest.json``), without a sandbox: what is under test starts at review.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from sqlalchemy import select

from bot.db.artifacts import artifact_store, store_artifact
from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import (
    Approval,
    Artifact,
    CommandAudit,
    Delivery,
    Installation,
    Repository,
    Run,
    Task,
)
from bot.db.runlog import new_run_id
from bot.domain.states import DeliveryStatus, RunState
from bot.github.repo import GitHubRepo
from bot.services import Services
from jobs.context import JobContext
from jobs.deliveries.process import DELIVERY_TRIES, process_delivery
from tests.conftest import make_settings
from tests.emulator.client import AppCredentials, EmulatorClient, RepoInfo
from tests.emulator.world import make_source_repo

REPO = "octo/hello"
STATUS_MARKER = "<!-- bosun:status -->"
AGENT_FILES = {
    "src/feature.py": "def feature():\n    return 42\n",
    "README.md": "# Hello\n\nEdited by the agent.\n",
}


@dataclass(frozen=True)
class Hook:
    """One webhook delivery GitHub emitted."""

    guid: str
    event: str
    action: str | None
    payload: dict[str, Any]


@dataclass
class ReadyRun:
    run_id: str
    issue: int
    pr: int
    branch: str
    head: str


@dataclass
class Review:
    data_dir: Path
    em: EmulatorClient
    app: AppCredentials
    repo: RepoInfo
    bosun: JobContext
    port: GitHubRepo
    retries: list[str] = field(default_factory=list)
    _hooks_seen: list[Hook] = field(default_factory=list)

    # --- the humans, on GitHub --------------------------------------------------------------

    async def comment(self, number: int, body: str, user: str) -> Hook:
        """Post a comment; its ``issue_comment`` delivery has arrived when this returns."""
        since = self._mark()
        comment_id = await asyncio.to_thread(self.em.comment, REPO, number, body, user)
        return await self._arrived(
            since,
            lambda h: h.event == "issue_comment" and h.payload["comment"]["id"] == comment_id,
        )

    async def push(
        self, branch: str, files: dict[str, str | None], user: str = "alice", message: str = ""
    ) -> tuple[str, Hook | None]:
        """Push a commit; its ``pull_request.synchronize`` (if a PR has that head) has arrived."""
        since = self._mark()
        sha = await asyncio.to_thread(
            self.em.push, REPO, branch, files, user, message or "A human change"
        )

        def synchronize(hook: Hook) -> bool:
            return (
                hook.event == "pull_request"
                and hook.action == "synchronize"
                and hook.payload["pull_request"]["head"]["sha"] == sha
            )

        found = [h for h in self._hooks(since) if synchronize(h)]
        if not found:
            return sha, None
        await self.arrive(found[0])
        return sha, found[0]

    # --- deliveries -------------------------------------------------------------------------

    def _mark(self) -> int:
        self._fetch()
        return len(self._hooks_seen)

    def _fetch(self) -> None:
        for item in self.em.deliveries(wait=False, since=len(self._hooks_seen)):
            self._hooks_seen.append(
                Hook(item["guid"], item["event"], item["action"], item["payload"])
            )

    def _hooks(self, since: int) -> list[Hook]:
        self._fetch()
        return self._hooks_seen[since:]

    async def _arrived(self, since: int, match: Callable[[Hook], bool]) -> Hook:
        hook = next(h for h in self._hooks(since) if match(h))
        await self.arrive(hook)
        return hook

    async def arrive(self, hook: Hook) -> None:
        """Record the delivery as Bosun's intake does when GitHub posts it."""
        repo = hook.payload.get("repository") or {}
        async with self.bosun.services.sessions.begin() as session:
            if await session.get(Delivery, hook.guid) is None:
                session.add(
                    Delivery(
                        id=hook.guid,
                        event=hook.event,
                        action=hook.action,
                        installation_id=(hook.payload.get("installation") or {}).get("id"),
                        repository=repo.get("full_name"),
                        payload=json.dumps(hook.payload),
                        status=DeliveryStatus.RECEIVED,
                    )
                )

    async def process(self, hook: Hook) -> str:
        """Process one delivery as the worker would, retrying as arq would (without the
        deferral); returns its outcome."""
        await self.arrive(hook)
        for job_try in range(1, DELIVERY_TRIES + 1):
            try:
                result = await process_delivery(
                    {"bosun": self.bosun, "job_try": job_try}, hook.guid
                )
            except Retry:
                self.retries.append(hook.guid)
                await asyncio.sleep(0.01)
                continue
            return str(result["outcome"])
        raise AssertionError(f"delivery {hook.guid} was retried {DELIVERY_TRIES} times")

    def start(self, hook: Hook) -> asyncio.Task[str]:
        return asyncio.get_running_loop().create_task(self.process(hook))

    async def wait_held(self, fault_id: int, timeout: float = 15.0) -> None:
        """Wait (letting Bosun's tasks run) until a call is held by hold ``fault_id``."""
        deadline = time.monotonic() + timeout
        while (await asyncio.to_thread(self.em.fault_info, fault_id))["waiting"] < 1:
            if time.monotonic() > deadline:
                raise AssertionError(f"no call was held by fault {fault_id} in {timeout}s")
            await asyncio.sleep(0.005)

    # --- a run ready for review -------------------------------------------------------------

    async def ready_run(
        self,
        title: str = "Change it",
        files: dict[str, str] | None = None,
        *,
        auto_merge: bool = True,
        status_comment: bool = True,
    ) -> ReadyRun:
        """A PR holding the agent's commit and a ``review_ready`` run for it (requester
        ``alice``), as the pipeline leaves them."""
        files = files or AGENT_FILES
        issue = await asyncio.to_thread(self.em.create_issue, REPO, title, "Please.", "alice")
        branch = f"bosun/{issue}-change"
        bot = self.app.bot_login
        head = await asyncio.to_thread(self.em.push, REPO, branch, dict(files), bot, "Agent")
        pr = await asyncio.to_thread(self.em.open_pull, REPO, title, branch, "main", "", bot)
        status_id = None
        if status_comment:
            status_id = await self.port.create_comment(issue, f"{STATUS_MARKER}\nRun ready.")
        settings = self.bosun.settings
        config = {"merge": {"auto_merge": auto_merge}}
        async with self.bosun.services.sessions.begin() as session:
            repository = (
                await session.execute(select(Repository).where(Repository.full_name == REPO))
            ).scalar_one()
            task = Task(
                repository_id=repository.id,
                issue_number=issue,
                pr_number=pr,
                branch=branch,
                title=title,
                status_comment_id=status_id,
            )
            session.add(task)
            await session.flush()
            run = Run(
                id=new_run_id(),
                task_id=task.id,
                repository_id=repository.id,
                state=RunState.REVIEW_READY,
                requester="alice",
                branch=branch,
                head_sha=head,
                pr_number=pr,
                repo_config=config,
                head_since=datetime.now(UTC),
            )
            session.add(run)
            await session.flush()
            stats = [{"path": path} for path in files]
            await store_artifact(
                session,
                artifact_store(settings),
                run.id,
                "diff-stats",
                json.dumps(stats),
                content_type="application/json",
            )
            manifest = {"run_id": run.id, "state": "review_ready", "head_sha": head}
            await store_artifact(
                session,
                artifact_store(settings),
                run.id,
                "manifest.json",
                json.dumps(manifest),
                content_type="application/json",
            )
            run_id = run.id
        return ReadyRun(run_id, issue, pr, branch, head)

    # --- reading back -----------------------------------------------------------------------

    async def run(self, run_id: str) -> Run:
        async with self.bosun.services.sessions() as session:
            row = await session.get(Run, run_id)
        assert row is not None
        return row

    async def approvals(self, run_id: str) -> list[Approval]:
        async with self.bosun.services.sessions() as session:
            rows = await session.execute(
                select(Approval).where(Approval.run_id == run_id).order_by(Approval.id)
            )
            return list(rows.scalars())

    async def audit(self, run_id: str) -> list[tuple[str, str, str, str | None]]:
        async with self.bosun.services.sessions() as session:
            rows = await session.execute(
                select(
                    CommandAudit.actor,
                    CommandAudit.command,
                    CommandAudit.outcome,
                    CommandAudit.reason,
                )
                .where(CommandAudit.run_id == run_id)
                .order_by(CommandAudit.id)
            )
            return [(a, c, o, r) for a, c, o, r in rows.all()]

    async def deliveries(self) -> dict[str, str]:
        async with self.bosun.services.sessions() as session:
            rows = await session.execute(select(Delivery.id, Delivery.status))
            return {guid: status.value for guid, status in rows.all()}

    async def pull(self, number: int) -> dict[str, Any]:
        """The PR as GitHub has it (read without holding up Bosun's tasks)."""
        pulls = (await asyncio.to_thread(self.em.state, "octo", "hello"))["pulls"]
        return dict(next(p for p in pulls if p["number"] == number)["pull"])

    async def comments(self, number: int) -> list[str]:
        state = await asyncio.to_thread(self.em.state, "octo", "hello")
        for item in state["issues"] + state["pulls"]:
            if item["number"] == number:
                return [str(c["body"]) for c in item["comments"]]
        return []

    async def main_files(self) -> list[str]:
        """The files on the default branch."""
        git_dir = self.data_dir / "repos" / "octo" / "hello.git"
        listing = await asyncio.to_thread(
            subprocess.run,
            ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", "main"],
            check=True,
            capture_output=True,
            text=True,
        )
        return sorted(listing.stdout.split())

    async def manifest(self, run_id: str) -> dict[str, Any]:
        async with self.bosun.services.sessions() as session:
            row = (
                await session.execute(
                    select(Artifact).where(
                        Artifact.run_id == run_id, Artifact.name == "manifest.json"
                    )
                )
            ).scalar_one()
        return dict(json.loads(Path(row.path).read_text()))

    async def merges(self, pr: int) -> list[int]:
        """The statuses of the merge calls Bosun made on ``pr``."""
        return [
            r["status"]
            for r in await asyncio.to_thread(self.em.requests)
            if r["method"] == "PUT" and r["path"].endswith(f"/pulls/{pr}/merge")
        ]


_MIGRATING = asyncio.Lock()


async def _serve_emulator(data_dir: Path) -> asyncio.subprocess.Process:
    """The emulator in a process of its own (``python -m tests.emulator serve``): its git
    work and Python run beside Bosun's, not under one interpreter lock."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.emulator",
        "serve",
        "--port",
        "0",
        "--data",
        str(data_dir),
        "--exit-with-parent",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )


@contextlib.asynccontextmanager
async def open_review(root: Path, redis_url: str, namespace: str) -> AsyncIterator[Review]:
    """An emulator (no webhook URL: the test hands deliveries over) with ``octo/hello``, users
    ``alice`` (the requester), ``bob`` and ``carol`` (write) and ``mallory`` (read), and a
    Bosun job context on a SQLite database of its own under ``root`` and the test Redis."""
    data_dir = root / "emulator"
    server = await _serve_emulator(data_dir)
    assert server.stdout is not None
    base_url = (await server.stdout.readline()).decode().strip()
    em = EmulatorClient(base_url)
    source = make_source_repo(
        root / "source", {"README.md": "# Hello\n", "src/app.py": "print('hi')\n"}
    )
    app = em.create_app("", "webhook-secret")
    repo = em.create_repo("octo", "hello", str(source))
    for login, permission in (("alice", "write"), ("bob", "write"), ("carol", "write")):
        em.add_user(login, REPO, permission)
    em.add_user("mallory", REPO, "read")
    db_url = f"sqlite+aiosqlite:///{root / 'bosun.db'}"
    async with _MIGRATING:  # alembic's context is process-wide: one upgrade at a time
        engine = create_engine(db_url)
        await upgrade(engine)
        await engine.dispose()
    settings = make_settings(
        root,
        db_url,
        redis_url,
        namespace,
        github={
            "app_id": app.app_id,
            "private_key": app.private_key_pem,
            "webhook_secret": "webhook-secret",
            "api_url": base_url,
            "web_url": base_url,
            "slug": app.slug,
            "retry_base_seconds": 0.01,
            "secondary_backoff_seconds": 0.05,
        },
    )
    bosun = JobContext(settings, Services.build(settings))
    async with bosun.services.sessions.begin() as session:
        session.add(Installation(id=repo.installation_id, account_login="octo"))
        await session.flush()
        session.add(
            Repository(
                full_name=REPO,
                github_id=repo.id,
                installation_id=repo.installation_id,
                default_branch="main",
            )
        )
    try:
        yield Review(data_dir, em, app, repo, bosun, bosun.repo(repo.installation_id, REPO))
    finally:
        redis = bosun.services.redis
        keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await redis.delete(*keys)
        await bosun.close()
        em.close()
        server.terminate()
        await server.wait()


@pytest.fixture
async def review(tmp_path: Path, redis_url: str, redis_namespace: str) -> AsyncIterator[Review]:
    """One in-process review loop (``open_review``) for a test."""
    async with open_review(tmp_path, redis_url, redis_namespace) as opened:
        yield opened
