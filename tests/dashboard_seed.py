"""Runs made directly in the database for dashboard tests and benchmarks: a repository, tasks,
runs in every state with events, and a review-ready run with a diff (no sandbox, no GitHub)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from bot.db.artifacts import artifact_store, store_artifact
from bot.db.engine import SessionFactory
from bot.db.models import Installation, Repository, Run, RunEvent, Task
from bot.domain.states import RunState
from bot.settings import Settings

REPO = "octo/hello"


def make_diff(files: dict[str, int]) -> tuple[str, list[dict[str, object]]]:
    """A unified diff adding ``n`` lines to each named file, and its ``diff-stats``."""
    parts, stats = [], []
    for path, lines in files.items():
        body = "".join(f"+line {i} of {path} \x1b[31mred\x1b[0m\n" for i in range(lines))
        parts.append(
            f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{lines} @@\n{body}"
        )
        stats.append({"path": path, "status": "A", "added": lines, "removed": 0})
    return "".join(parts), stats


@dataclass
class Seeded:
    review_run: str
    running_run: str
    failed_run: str
    tasks: list[int]


async def seed(
    sessions: SessionFactory,
    settings: Settings,
    *,
    runs: int = 6,
    events_per_run: int = 20,
    diff_files: dict[str, int] | None = None,
    repo: str = REPO,
    private: bool = False,
    states: list[RunState] | None = None,
) -> Seeded:
    """``runs`` runs (their states cycling through ``states``), ``events_per_run`` events each;
    the first run review-ready with a diff of ``diff_files`` (path → added lines)."""
    now = datetime.now(UTC)
    states = states or [
        RunState.REVIEW_READY,
        RunState.RUNNING,
        RunState.FAILED,
        RunState.QUEUED,
        RunState.MERGED,
        RunState.CANCELLED,
    ]
    ids: list[str] = []
    tasks: list[int] = []
    async with sessions.begin() as session:
        if await session.get(Installation, 1) is None:
            session.add(Installation(id=1, account_login=repo.split("/")[0]))
        repository = Repository(full_name=repo, github_id=1000, installation_id=1, private=private)
        session.add(repository)
        await session.flush()
        for n in range(runs):
            task = Task(
                repository_id=repository.id, issue_number=n + 1, title=f"Task number {n + 1}"
            )
            session.add(task)
            await session.flush()
            tasks.append(task.id)
            state = states[n % len(states)]
            created = now - timedelta(minutes=runs - n)
            run_id = f"r{int(created.timestamp() * 1000):x}{n:08x}"
            terminal = state in (RunState.MERGED, RunState.FAILED, RunState.CANCELLED)
            session.add(
                Run(
                    id=run_id,
                    task_id=task.id,
                    repository_id=repository.id,
                    state=state,
                    profile="default" if n % 2 else "fast",
                    requester="alice",
                    branch=f"bosun/{n + 1}-task",
                    head_sha="a" * 40,
                    base_sha="b" * 40,
                    phase="implement" if state is RunState.RUNNING else None,
                    cost_usd=0.25 * (n % 4),
                    budget_usd=2.0,
                    tokens_in=1000 * n,
                    tokens_out=100 * n,
                    created_at=created,
                    started_at=created + timedelta(seconds=5),
                    finished_at=created + timedelta(seconds=50) if terminal else None,
                    reason="boom" if state is RunState.FAILED else None,
                    last_seq=events_per_run,
                )
            )
            await session.flush()
            await session.execute(
                insert(RunEvent),
                [
                    {
                        "run_id": run_id,
                        "seq": seq,
                        "kind": "log" if seq > 2 else "status",
                        "data": {"line": f"\x1b[32mline {seq}\x1b[0m of run {n}", "stream": "agent"}
                        if seq > 2
                        else {"from": "queued", "to": "preparing", "actor": "bosun"},
                        "created_at": created + timedelta(seconds=seq),
                    }
                    for seq in range(1, events_per_run + 1)
                ],
            )
            ids.append(run_id)
        review = ids[0]
        text, stats = make_diff(diff_files or {"README.md": 3, "src/feature.py": 2, "notes.txt": 1})
        store = artifact_store(settings)
        await store_artifact(session, store, review, "diff", text)
        await store_artifact(session, store, review, "diff-stats", json.dumps(stats))
        await store_artifact(session, store, review, "summary", "# Done\n\n*Changed* things.")
        await store_artifact(session, store, review, "transcript", "agent said hello\n")
    return Seeded(review, ids[1 % len(ids)], ids[2 % len(ids)], tasks)
