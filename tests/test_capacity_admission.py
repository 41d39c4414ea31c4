"""Admission as a worker runs it, on real Redis and a real database (SQLite and PostgreSQL):
a run waits or is refused for an overlapping scope, the waiting text reaches GitHub once per
change (not at every poll), a wait is not an arq try, and a run's end wakes the runs it held up."""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.constants import retry_key_prefix

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import Repository, Run, Task
from bot.db.runlog import new_run_id
from bot.domain.repoconfig import RepoConfig
from bot.domain.states import RunState
from bot.domain.status import CheckRunUpdate, RunView, status_comment
from bot.services import Services
from jobs.admission.gate import Admission, Refused, Waiting
from jobs.context import JobContext
from jobs.run.reporter import StatusReporter
from tests.conftest import make_settings

ISSUES = itertools.count(1)


class RecordingPort:
    """The GitHub calls the status reporter makes, recorded; nothing else is expected."""

    def __init__(self, origin: Path | None = None) -> None:
        self.origin = origin
        self.calls: list[tuple[str, Any]] = []
        self.comments: dict[int, str] = {}
        self.checks: dict[int, tuple[str, dict[str, Any]]] = {}

    async def find_comment(self, number: int, marker: str) -> int | None:
        return None

    async def create_comment(self, number: int, body: str) -> int:
        self.calls.append(("create_comment", number))
        self.comments[len(self.comments) + 1] = body
        return len(self.comments)

    async def update_comment(self, comment_id: int, body: str) -> None:
        self.calls.append(("update_comment", comment_id))
        self.comments[comment_id] = body

    async def comment_body(self, comment_id: int) -> str | None:
        return self.comments.get(comment_id)

    async def create_check_run(self, head_sha: str, update: CheckRunUpdate) -> int:
        self.calls.append(("create_check_run", head_sha))
        self.checks[len(self.checks) + 1] = (head_sha, update.fields())
        return len(self.checks)

    async def update_check_run(self, check_run_id: int, update: CheckRunUpdate) -> None:
        self.calls.append(("update_check_run", check_run_id))
        self.checks[check_run_id] = (self.checks[check_run_id][0], update.fields())

    async def branch_head(self, branch: str) -> str | None:
        """The branch's head in the (local, bare) repository the test made."""
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
            cwd=self.origin, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return found.stdout.strip() or None

    async def git_auth_header(self) -> str:
        raise AssertionError("a local project needs no credentials")


@pytest.fixture
async def bosun(
    tmp_path: Path, db_url: str, redis_url: str, redis_namespace: str
) -> AsyncIterator[JobContext]:
    settings = make_settings(
        tmp_path,
        db_url,
        redis_url,
        redis_namespace,
        worker={"queue_poll_seconds": 2, "lease_seconds": 5},
    )
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    context = JobContext(settings=settings, services=Services.build(settings))
    yield context
    await context.services.close()


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, str]:
    """A local project with one commit on main: its path and head."""
    path = tmp_path / "origin"
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("hello\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return path, head.stdout.strip()


async def new_run(
    bosun: JobContext, repository: Repository, body: str, config: RepoConfig
) -> tuple[Run, Task]:
    async with bosun.services.sessions.begin() as session:
        task = Task(repository_id=repository.id, issue_number=next(ISSUES), title="t", body=body)
        session.add(task)
        await session.flush()
        run = Run(
            id=new_run_id(),
            task_id=task.id,
            repository_id=repository.id,
            repo_config=config.model_dump(mode="json"),
        )
        session.add(run)
    async with bosun.services.sessions() as session:
        fresh = await session.get(Run, run.id)
        assert fresh is not None
        return fresh, task


async def make_repository(bosun: JobContext, origin: Path) -> Repository:
    async with bosun.services.sessions.begin() as session:
        repository = Repository(full_name=f"local/{uuid.uuid4().hex[:6]}", local_path=str(origin))
        session.add(repository)
    return repository


def admission(bosun: JobContext, run: Run, task: Task, repo: Repository, cfg: RepoConfig) -> Any:
    return Admission(bosun, run=run, task=task, repository=repo, config=cfg)


async def test_overlapping_scope_waits_and_github_hears_once_per_change(
    bosun: JobContext, origin: tuple[Path, str]
) -> None:
    path, head = origin
    repository = await make_repository(bosun, path)
    config = RepoConfig()
    first_run, first_task = await new_run(bosun, repository, "Do it.\nFocus: src/**", config)
    later_run, later_task = await new_run(bosun, repository, "Also.\nFocus: src/app.py", config)
    first = admission(bosun, first_run, first_task, repository, config)
    assert await first.enter() is None

    port = RecordingPort(path)
    for _ in range(3):  # three polls while the first run works
        later = admission(bosun, later_run, later_task, repository, config)
        outcome = await later.enter()
        assert isinstance(outcome, Waiting)
        assert outcome.text == (
            f"waiting: run `{first_run.id}` holds overlapping focus paths (`src/**`)"
        )
        view = RunView(later_run.id, RunState.QUEUED, repository.full_name, 1, "t", "a", "p")
        reporter = StatusReporter(
            port,
            view,
            check_run_id=None if not port.checks else 1,
            check_sha=None,
            comment_id=None if not port.comments else 1,
            persist=_ignore,
        )
        await later.show(outcome, view, reporter, port=port)
    # One comment and one queued check run on the default branch's head, written once.
    assert port.calls == [("create_comment", 1), ("create_check_run", head)]
    assert outcome.text in port.comments[1]
    _, fields = port.checks[1]
    assert fields["status"] == "queued" and outcome.text in fields["output"]["summary"]

    # The first run ends: the waiting run's deferred job is made due, and it gets in.
    redis = bosun.services.redis
    await redis.enqueue_job(
        "execute_run", later_run.id, _job_id=f"run:{later_run.id}", _defer_by=600
    )
    await first.leave()
    score = await redis.zscore(bosun.settings.redis.queue_name, f"run:{later_run.id}")
    assert score is not None and score < (await redis.time())[0] * 1000 + 5000
    later = admission(bosun, later_run, later_task, repository, config)
    assert await later.enter() is None
    await later.leave()
    await redis.delete(f"arq:job:run:{later_run.id}")


async def test_refused_when_the_repository_says_so(
    bosun: JobContext, origin: tuple[Path, str]
) -> None:
    repository = await make_repository(bosun, origin[0])
    config = RepoConfig.model_validate(
        {"focus_paths": ["lib/**"], "limits": {"scope_conflict": "refuse"}}
    )
    first_run, first_task = await new_run(bosun, repository, "One", config)
    second_run, second_task = await new_run(bosun, repository, "Two", config)
    first = admission(bosun, first_run, first_task, repository, config)
    assert await first.enter() is None
    outcome = await admission(bosun, second_run, second_task, repository, config).enter()
    assert isinstance(outcome, Refused)
    assert first_run.id in outcome.reason and "scope_conflict: refuse" in outcome.reason
    # No scope at all: no lock, only the repository's cap (2 by default) applies.
    plain = RepoConfig()
    third_run, third_task = await new_run(bosun, repository, "Three", plain)
    third = admission(bosun, third_run, third_task, repository, plain)
    assert await third.enter() is None
    await first.leave()
    await third.leave()


async def test_a_wait_is_not_a_try(bosun: JobContext, origin: tuple[Path, str]) -> None:
    repository = await make_repository(bosun, origin[0])
    config = RepoConfig.model_validate({"limits": {"concurrent_runs": 1}})
    first_run, first_task = await new_run(bosun, repository, "One", config)
    second_run, second_task = await new_run(bosun, repository, "Two", config)
    first = admission(bosun, first_run, first_task, repository, config)
    assert await first.enter() is None
    waiting = admission(bosun, second_run, second_task, repository, config)
    outcome = await waiting.enter()
    assert isinstance(outcome, Waiting) and outcome.position == 1
    assert outcome.text == f"waiting: position 1 of 1 in the {repository.full_name} queue"
    key = retry_key_prefix + f"run:{second_run.id}"
    redis = bosun.services.redis
    await redis.set(key, 2)  # arq counted this pickup as the second try
    await waiting.not_a_try()
    assert int(await redis.get(key) or 0) == 1
    await redis.delete(key)
    await first.leave()


def test_status_comment_shows_the_wait_only_while_queued() -> None:
    view = RunView("r1", RunState.QUEUED, "o/r", 3, "t", "alice", "default")
    view.waiting = "waiting: position 2 of 3 in the o/r queue"
    assert "⏳ waiting: position 2 of 3 in the o/r queue" in status_comment(view)
    view.state = RunState.PREPARING
    assert "waiting:" not in status_comment(view)


async def _ignore(ids: dict[str, int]) -> None:
    return None
