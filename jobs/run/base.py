"""What every step of a run shares: the loaded rows, the settings, GitHub's port, the event
writer, the status view and reporter, and small plumbing (saving the run row, moving it
through the state machine, storing artifacts, the manifest). ``RunExecution``
(jobs/run/pipeline.py) is this plus the agent steps (jobs/run/agent.py) and the publishing steps
(jobs/run/publish.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import update

from bot.agents.gateway import ModelGateway
from bot.agents.runners import RunnerEvent
from bot.agents.runners.base import RunnerOutcome
from bot.control.live import publish_run
from bot.db.artifacts import store_artifact
from bot.db.models import Repository, Run, Task
from bot.db.runlog import append_event, transition
from bot.domain.repoconfig import RepoConfig
from bot.domain.states import TERMINAL, RunState
from bot.domain.status import RunView
from bot.errors import BosunError
from bot.forge.port import Forge
from bot.profiles import ProfileConfig, effective_profile
from bot.tracing.genai import AgentTrace
from jobs.admission.gate import Admission
from jobs.context import JobContext
from jobs.resilience import db_retry
from jobs.review.records import review_records
from jobs.run import agent_sessions
from jobs.run.event_log import EventWriter
from jobs.run.manifest import build_manifest, metrics_line, summary_markdown
from jobs.run.phases import phases_for
from jobs.run.reporter import StatusReporter
from sandboxes.base import ExecResult, Sandbox
from sandboxes.changes import Changes
from sandboxes.localrepo import GitRemote
from sandboxes.workspace import Workspace

log = structlog.get_logger("jobs.run.pipeline")

INPUT_MOUNT = "/bosun"


class StepFailed(BosunError):
    """A step ended the run; ``state`` says how (failed by default). ``reason`` is published
    (check run, status comment); ``detail``, which may quote what the agent wrote or a tool's
    raw error, is kept for maintainers only, as the run's ``error`` artifact."""

    def __init__(
        self, reason: str, state: RunState = RunState.FAILED, *, detail: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state
        self.detail = detail


@dataclass
class Loaded:
    run: Run
    task: Task
    repository: Repository


class RunBase:
    def __init__(self, bosun: JobContext, loaded: Loaded) -> None:
        self.bosun = bosun
        self.settings = bosun.settings
        self.sessions = bosun.services.sessions
        self.run = loaded.run
        self.task = loaded.task
        self.repository = loaded.repository
        self.config = RepoConfig.model_validate(self.run.repo_config or {})
        server = self.settings.agent_profiles().get(self.run.profile) or ProfileConfig()
        self.profile, self.narrowed = effective_profile(self.run.profile, server, self.config)
        self.events = EventWriter(self.sessions, self.run.id, on_flushed=self.publish)
        self.port: Forge = bosun.forge(self.repository)
        self.view = RunView(
            run_id=self.run.id,
            state=self.run.state,
            repo=self.repository.full_name,
            issue_number=self.task.issue_number,
            title=self.task.title,
            requester=self.run.requester,
            profile=self.run.profile,
            branch=self.run.branch,
            pr_number=self.task.pr_number,
            dashboard_url=f"{self.settings.public_url.rstrip('/')}/runs/{self.run.id}",
            # Set only when a run is executed again (its worker died): its check run lives on.
            base_sha=self.run.base_sha,
            head_sha=self.run.head_sha,
        )
        self.reporter = StatusReporter(
            self.port,
            self.view,
            check_run_id=self.run.check_run_id,
            check_sha=self.run.head_sha or self.run.base_sha if self.run.check_run_id else None,
            comment_id=self.task.status_comment_id,
            persist=self._persist_ids,
        )
        self.admission = Admission(
            bosun, run=self.run, task=self.task, repository=self.repository, config=self.config
        )
        self.workspace: Workspace | None = None
        self.sandbox: Sandbox | None = None
        self.changes: Changes | None = None
        self.transcript = bytearray()
        self.transcript_pending = False
        self.runner_events: list[RunnerEvent] = []
        self.timings: dict[str, float] = {}
        self.began = time.monotonic()
        """When this execution of the run began (``timings["to_agent"]`` counts from here)."""
        self.policy: list[dict[str, Any]] = []
        self.failed_gates: list[tuple[str, str]] = []
        """(gate name, output) of each failing gate, annotated once the tree is read."""
        self.cancelled_by: str | None = None
        self.gateway: ModelGateway | None = None
        self._stop_watch = asyncio.Event()
        self.budget_exhausted = False
        self.steers_read = 0
        """The last ``steer`` event handed to the gateway (``jobs.run.steering``)."""
        self.agent_task: asyncio.Task[ExecResult] | None = None
        self.agent_trace: AgentTrace | None = None
        """The current agent phase's spans (tracing on)."""
        self.agent_summary = ""
        self.outcome = RunnerOutcome(success=False)
        self.resume: agent_sessions.SavedSession | None = None
        self.phases = phases_for(self.run.workflow)
        self.view.agent_phases = tuple(phase.label for phase in self.phases)
        timeout = self.profile.timeout or self.settings.sandbox.timeout_seconds
        self.deadline = time.monotonic() + timeout

    async def _persist_ids(self, ids: dict[str, int]) -> None:
        async def write() -> None:
            async with self.sessions.begin() as session:
                if "check_run_id" in ids:
                    await session.execute(
                        update(Run)
                        .where(Run.id == self.run.id)
                        .values(check_run_id=ids["check_run_id"])
                    )
                if "status_comment_id" in ids:
                    await session.execute(
                        update(Task)
                        .where(Task.id == self.task.id)
                        .values(status_comment_id=ids["status_comment_id"])
                    )

        await db_retry(write, what="persist_ids")

    async def _save(self, *, retry: bool = True, **values: Any) -> None:
        """Update the run's row (``retry``: waiting out a database outage)."""

        async def write() -> None:
            async with self.sessions.begin() as session:
                await session.execute(update(Run).where(Run.id == self.run.id).values(**values))

        await (db_retry(write, what="save_run") if retry else write())
        for key, value in values.items():
            setattr(self.run, key, value)

    async def publish(self) -> None:
        """Wake whoever follows this run live (never slows the run)."""
        await publish_run(self.bosun.services.redis, self.settings.redis, self.run.id)

    async def move(self, target: RunState, *, reason: str = "", actor: str = "bosun") -> None:
        await self.events.flush()
        before = self.run.state

        async def write() -> bool:
            """The transition in one transaction, tried again while the database is away; a
            try whose commit landed though its answer was lost finds the run moved already."""
            async with self.sessions.begin() as session:
                run = await session.get(Run, self.run.id, populate_existing=True)
                assert run is not None
                if run.state is target and before is not target:
                    return False
                await transition(session, run, target, actor=actor, reason=reason)
                unstall = run.stalled_since is not None and target not in (
                    RunState.RUNNING,
                    RunState.GATES,
                )
                if unstall:
                    run.stalled_since = None  # it moved on: whatever it waited for is over
                    await append_event(session, run.id, "progress", {"stalled": False})
            return unstall

        if await db_retry(write, what=f"move_{target.value}"):
            self.view.stalled = ""
        self.run.state = target
        await self.publish()
        self.view.state = target
        self.view.reason = reason if target in TERMINAL or reason else self.view.reason
        log.info("run_" + target.value, reason=reason or None)
        self.reporter.changed()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def artifact(
        self, name: str, content: bytes | str, content_type: str = "text/plain"
    ) -> None:
        await self.events.flush()

        async def write() -> None:
            async with self.sessions.begin() as session:
                await store_artifact(
                    session,
                    self.bosun.artifacts,
                    self.run.id,
                    name,
                    content,
                    content_type=content_type,
                )

        await db_retry(write, what=f"artifact_{name}")

    def _remote_url(self) -> GitRemote:
        return self.port.clone_url()

    async def _save_cost(self) -> None:
        assert self.gateway is not None
        await self._save(
            cost_usd=self.gateway.spent_usd,
            tokens_in=self.view.tokens_in,
            tokens_out=self.view.tokens_out,
        )

    async def _finish_artifacts(self, state: RunState, reason: str) -> None:
        """Summary and manifest as of the state the run is about to enter."""
        self.view.state, self.view.reason = state, reason

        async def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with self.sessions() as session:
                return await review_records(session, self.run.id)

        approvals, commands = await db_retry(read, what="review_records")
        manifest = build_manifest(
            self.run,
            self.task,
            self.repository,
            self.view,
            self.timings,
            self.policy,
            self.profile,
            approvals,
            commands,
        )
        await self.artifact(
            "summary",
            summary_markdown(self.view, getattr(self, "agent_summary", "")),
            "text/markdown",
        )
        await self.artifact(
            "manifest.json", json.dumps(manifest, indent=2, default=str), "application/json"
        )

    async def _metrics(self) -> None:
        if self.run.state not in TERMINAL:
            return
        path = self.settings.data_dir / "metrics.jsonl"
        line = metrics_line(self.run, self.repository, self.view, self.timings)
        await asyncio.to_thread(append_line, path, line)

    async def _cancel_requested(self) -> bool:
        async def read() -> tuple[bool, str | None]:
            async with self.sessions() as session:
                run = await session.get(Run, self.run.id, populate_existing=True)
                if run is None or not run.cancel_requested:
                    return False, None
                return True, run.cancel_actor

        requested, actor = await db_retry(read, what="cancel_check")
        if requested:
            self.cancelled_by = self.cancelled_by or actor or "request"
        return requested


def write_input(folder: Path, prompt: str, name: str = "prompt.md") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    target = folder / name
    target.write_text(prompt)
    target.chmod(0o644)


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(line + "\n")


def utc_now() -> datetime:
    return datetime.now(UTC)
