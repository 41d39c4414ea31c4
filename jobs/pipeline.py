"""``execute_run``: one run from ``queued`` to ``review_ready`` (or exactly one terminal state).

queued → preparing (mirror fetch, per-run clone on the run's branch) → running (the agent in a
hardened sandbox, output streamed as events) → gates (configured commands in the same sandbox)
→ diff artifact, diff policy and secret scan → commit and push from outside the sandbox →
open or update the PR → review_ready. Every failure ends in one terminal state with its events,
artifacts and an explanation on GitHub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from arq.worker import Retry
from sqlalchemy import update

from bot.artifacts import store_artifact
from bot.db.models import Repository, Run, RunState, Task
from bot.errors import BosunError
from bot.gateway import (
    FORWARDER_PORT,
    MissingKey,
    ModelGateway,
    UsageRecord,
    agent_env,
    default_route,
    forwarder_argv,
    routes_for_profile,
    sandbox_mount,
    socket_dir,
)
from bot.github.repo import RepoPort
from bot.profiles import ProfileConfig, effective_profile
from bot.prompt import phase_prompt, sanitize
from bot.repoconfig import RepoConfig
from bot.runners import RunnerEvent, get_runner
from bot.runners.base import RunnerOutcome
from bot.runs import TERMINAL, transition
from bot.status import GateView, RunView, gates_passed, phase_names, pr_body
from jobs import sessions
from jobs.admission import Admission, Waiting
from jobs.cancel import request_cancel_key
from jobs.context import JobContext, job_context
from jobs.diffcheck import DiffVerdict, evaluate_diff
from jobs.events import EventWriter
from jobs.manifest import build_manifest, metrics_line, summary_markdown
from jobs.phases import (
    TEMPLATE_DIR,
    Phase,
    discard_changes,
    load_template,
    phases_for,
    plan_comment,
)
from jobs.reporter import StatusReporter
from jobs.review_records import review_records
from sandboxes.base import ExecResult, Sandbox
from sandboxes.errors import PushRejected, SandboxError
from sandboxes.output import LineSplitter
from sandboxes.quota import WorkspaceQuota
from sandboxes.spec import BindMount, SandboxSpec
from sandboxes.workspace import Changes, Workspace

log = structlog.get_logger("jobs.pipeline")

INPUT_MOUNT = "/bosun"
SANDBOX_LOST = (
    "the sandbox stopped under the agent: the Docker engine restarted or went away, or its "
    "container was stopped or removed; comment `/retry` to run it again"
)


KILL_LEFTOVERS = """
keep=
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = 1 ] && continue
  if [ -z "$keep" ] || [ "$p" -lt "$keep" ]; then keep=$p; fi
done
for round in 1 2 3 4 5 6 7 8 9 10; do
  left=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case $p in 1|$$|$keep) continue ;; esac
    kill -KILL "$p" 2>/dev/null && left=1
  done
  [ "$left" = 0 ] && break
done
exit 0
"""
"""Kill every process in the sandbox but its init (pid 1) and the sandbox's main process, the
first one init started and so the lowest other pid, until none is left (a leftover may be
forking). Runs inside the sandbox as the agent's user, with nothing but ``sh``."""


class StepFailed(BosunError):
    """A step ended the run; ``state`` says how (failed by default)."""

    def __init__(self, reason: str, state: RunState = RunState.FAILED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state


@dataclass
class Loaded:
    run: Run
    task: Task
    repository: Repository


async def execute_run(ctx: dict[str, Any], run_id: str) -> dict[str, Any]:
    bosun = job_context(ctx)
    structlog.contextvars.bind_contextvars(run_id=run_id)
    loaded = await _load(bosun, run_id)
    if loaded is None:
        return {"run_id": run_id, "skipped": "unknown run"}
    if loaded.run.state in TERMINAL or loaded.run.state in (
        RunState.REVIEW_READY,
        RunState.APPROVED,
    ):
        return {"run_id": run_id, "skipped": f"already {loaded.run.state.value}"}
    execution = RunExecution(bosun, loaded)
    return await execution.execute()


async def _load(bosun: JobContext, run_id: str) -> Loaded | None:
    async with bosun.services.sessions() as session:
        run = await session.get(Run, run_id)
        if run is None:
            return None
        task = await session.get(Task, run.task_id)
        repository = await session.get(Repository, run.repository_id)
        assert task is not None and repository is not None
        return Loaded(run, task, repository)


class RunExecution:
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
        self.events = EventWriter(self.sessions, self.run.id)
        self.port: RepoPort = bosun.repo(
            self.repository.installation_id or 0, self.repository.full_name
        )
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
        self.policy: list[dict[str, Any]] = []
        self.cancelled_by: str | None = None
        self.gateway: ModelGateway | None = None
        self._stop_watch = asyncio.Event()
        self.budget_exhausted = False
        self.agent_task: asyncio.Task[ExecResult] | None = None
        self.agent_summary = ""
        self.outcome = RunnerOutcome(success=False)
        self.resume: sessions.SavedSession | None = None
        self.phases = phases_for(self.run.workflow)
        self.view.agent_phases = tuple(phase.label for phase in self.phases)
        timeout = self.profile.timeout or self.settings.sandbox.timeout_seconds
        self.deadline = time.monotonic() + timeout

    # -- plumbing -----------------------------------------------------------------------

    async def _persist_ids(self, ids: dict[str, int]) -> None:
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

    async def _save(self, **values: Any) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(Run).where(Run.id == self.run.id).values(**values))
        for key, value in values.items():
            setattr(self.run, key, value)

    async def move(self, target: RunState, *, reason: str = "", actor: str = "bosun") -> None:
        await self.events.flush()
        async with self.sessions.begin() as session:
            run = await session.get(Run, self.run.id)
            assert run is not None
            await transition(session, run, target, actor=actor, reason=reason)
            self.run.state = run.state
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
        async with self.sessions.begin() as session:
            await store_artifact(
                session,
                self.settings.artifacts_dir,
                self.run.id,
                name,
                content,
                content_type=content_type,
            )

    # -- the run ------------------------------------------------------------------------

    async def execute(self) -> dict[str, Any]:
        refusal = await self._admit()
        self.reporter.start()
        started = time.monotonic()
        watcher = asyncio.create_task(self._watch_cancel(asyncio.current_task()))
        try:
            if self.run.state is not RunState.QUEUED:
                raise StepFailed(
                    f"interrupted: the worker stopped while the run was {self.run.state.value}; "
                    "comment `/retry` to run it again"
                )
            if self.run.cancel_requested:
                raise asyncio.CancelledError
            if refusal is not None:
                raise StepFailed(refusal)
            await self._steps()
        except asyncio.CancelledError:
            if self.cancelled_by is None and not await self._cancel_requested():
                raise  # worker shutdown: the reconciler picks the run up again
            await self._end(RunState.CANCELLED, f"cancelled by {self.cancelled_by or 'request'}")
        except StepFailed as exc:
            await self._end(exc.state, exc.reason)
        except Exception as exc:
            log.exception("run_crashed")
            await self._end(RunState.FAILED, f"internal error: {type(exc).__name__}: {exc}"[:500])
        finally:
            self._stop_watch.set()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.shield(self._cleanup())
        self.timings["total"] = round(time.monotonic() - started, 3)
        return {"run_id": self.run.id, "state": self.run.state.value}

    async def _admit(self) -> str | None:
        """Capacity slot and scope lock (jobs/admission.py). While the run may not start it
        stays queued, GitHub shows its place in line, and arq runs the job again later (woken
        early when a slot frees). Returns why the run is refused, if it is."""
        if self.run.state is not RunState.QUEUED or self.run.cancel_requested:
            return None
        outcome = await self.admission.enter()
        if isinstance(outcome, Waiting):
            await self.admission.show(
                outcome, self.view, self.reporter, port=self.port, remote_url=self._remote_url()
            )
            await self.admission.not_a_try()
            raise Retry(defer=outcome.defer)
        self.admission.adopt_check_run(self.reporter)
        return outcome.reason if outcome is not None else None

    async def _steps(self) -> None:
        await self.move(RunState.PREPARING)
        await self._prepare()
        await self.move(RunState.RUNNING)
        result, failed_phase = await self._run_workflow()
        await self._stop_leftovers()
        await self.move(RunState.GATES)
        plan_only = self.phases[-1].name == "plan"
        if plan_only:
            self.view.phase("gates", "skipped", "a plan changes no code")
        else:
            await self._gates()
        await self._keep_session()
        await self._freeze()
        await self._collect_changes()
        if result.timed_out:
            await self._save_before_timeout()
            return
        if self.budget_exhausted:
            await self._save_partial_work_at_budget()
            return
        if failed_phase is not None:
            where = f" in the {failed_phase.name} phase" if failed_phase.total > 1 else ""
            raise StepFailed(
                f"the agent failed{where} (exit code {result.exit_code}); see the transcript"
            )
        if plan_only:
            await self._post_plan()
            return
        assert self.changes is not None
        if self.changes.empty:
            raise StepFailed("the agent changed nothing; nothing to review")
        verdict = await self._check_policy()
        if not verdict.allowed:
            raise StepFailed(
                "the diff breaks repository policy, nothing was pushed: " + verdict.summary
            )
        await self._commit_and_push(wip=False)
        await self._open_pull_request()
        self.view.phase("pull request", "done", f"#{self.view.pr_number}")
        await self._finish_artifacts(RunState.REVIEW_READY, "")
        await self.move(RunState.REVIEW_READY, reason="")

    async def _watch_cancel(self, main: asyncio.Task[Any] | None) -> None:
        """Poll for ``/cancel`` (Redis, then the database every 2 s), budget raises, and
        write the heartbeat. Stopped through ``_stop_watch`` rather than cancelled, so no
        database or Redis call is ever interrupted half-way."""
        key = request_cancel_key(self.settings, self.run.id)
        budget_key = self.settings.redis.key("budget", self.run.id)
        ticks = 0
        next_beat = 0.0  # the first tick beats: a run never goes long without a heartbeat
        while True:
            try:
                async with asyncio.timeout(0.2):
                    await self._stop_watch.wait()
                return
            except TimeoutError:
                ticks += 1
            actor: str | None = None
            with contextlib.suppress(Exception):
                value = await self.bosun.services.redis.get(key)
                actor = value.decode() if value else None
                raised = await self.bosun.services.redis.getdel(budget_key)
                if raised and self.gateway is not None:
                    cap = self.gateway.raise_budget(float(raised))
                    await self.events.emit("cost", {"source": "budget", "budget_usd": cap})
            if time.monotonic() >= next_beat:  # tell the reconciler this run's worker lives
                next_beat = time.monotonic() + self.settings.worker.heartbeat_seconds
                with contextlib.suppress(Exception):
                    await self._save(heartbeat_at=utc_now())
            if actor is None and ticks % 10 == 0 and await self._cancel_requested():
                actor = self.cancelled_by or "request"
            if actor is not None and main is not None:
                self.cancelled_by = actor
                log.info("run_cancel_requested", actor=actor)
                if self.sandbox is not None:
                    with contextlib.suppress(SandboxError):
                        await self.bosun.backend.stop(self.sandbox, timeout=1.0)
                main.cancel()
                return

    async def _cancel_requested(self) -> bool:
        async with self.sessions() as session:
            run = await session.get(Run, self.run.id, populate_existing=True)
            if run is not None and run.cancel_requested:
                self.cancelled_by = self.cancelled_by or run.cancel_actor or "request"
                return True
        return False

    # -- steps --------------------------------------------------------------------------

    async def _prepare(self) -> None:
        t0 = time.monotonic()
        self.view.phase("prepare", "running", "fetching the repository")
        self.reporter.changed()
        for note in self.narrowed:
            await self.events.emit(
                "policy", {"rule": "profiles", "decision": "narrow", "message": note}
            )
        backend = self.bosun.backend
        spec = self._spec(Path("/nonexistent"))
        owner = await backend.host_ids(spec)
        auth = await self.port.git_auth_header()
        continue_branch = self.run.parent_run_id is not None
        try:
            self.workspace = await self.bosun.workspaces.prepare(
                run_id=self.run.id,
                repo=self.repository.full_name,
                remote_url=self._remote_url(),
                branch=self.run.branch or f"bosun/run-{self.run.id}",
                base_ref=self.repository.default_branch,
                auth_header=auth,
                owner=owner,
                continue_branch=continue_branch,
            )
        except SandboxError as exc:
            raise StepFailed(f"could not fetch the repository: {exc}") from exc
        self.timings["workspace"] = round(time.monotonic() - t0, 3)
        self.view.base_sha = self.workspace.base_sha
        await self._save(
            base_sha=self.workspace.base_sha, worker=self.bosun.worker_id, heartbeat_at=utc_now()
        )
        input_dir = self.workspace.run_dir / "input"
        await asyncio.to_thread(_write_input, input_dir, self.run.prompt)
        await self._start_gateway(owner[1])
        t1 = time.monotonic()
        try:
            spec = self._spec(self.workspace.path, input_dir)
            self.sandbox = await backend.create(spec)
            await backend.start(self.sandbox)
        except SandboxError as exc:
            raise StepFailed(f"the sandbox did not start: {exc}") from exc
        self.timings["sandbox_start"] = round(time.monotonic() - t1, 3)
        await self._restore_session(input_dir)
        self.view.phase("prepare", "done", f"base `{self.workspace.base_sha[:12]}`")
        await self.events.emit(
            "progress",
            {
                "phase": "prepare",
                "base_sha": self.workspace.base_sha,
                "workspace": str(self.workspace.path),
                "timings": dict(self.timings),
            },
        )

    async def _start_gateway(self, sandbox_gid: int) -> None:
        """Start the run's model gateway when the profile may reach a model API."""
        assert self.workspace is not None
        try:
            routes = routes_for_profile(self.profile, self.settings.gateway.upstreams)
        except BosunError as exc:
            raise StepFailed(f"profile {self.run.profile!r} is misconfigured: {exc}") from exc
        if not routes:
            return
        budget = self.run.budget_usd if self.run.budget_usd is not None else self.profile.budget_usd
        self.gateway = ModelGateway(
            self.run.id,
            socket_dir(self.workspace.run_dir),
            routes,
            budget_usd=budget,
            on_usage=self._on_usage,
            on_budget_exhausted=self._on_budget_exhausted,
            sandbox_gid=sandbox_gid,
            default_route=default_route(self.profile.runner, routes),
            max_concurrent=self.settings.gateway.max_concurrent,
        )
        try:
            await self.gateway.start()
        except MissingKey as exc:
            self.gateway = None
            raise StepFailed(f"the model gateway cannot start: {exc}") from exc
        await self.events.emit(
            "progress", {"phase": "prepare", "gateway": sorted(routes), "budget_usd": budget}
        )

    def _on_usage(self, record: UsageRecord) -> None:
        self.events.buffer("cost", record.event_data())
        self.view.cost_usd = record.spent_usd
        self.view.tokens_in += record.usage.total_input_tokens
        self.view.tokens_out += record.usage.output_tokens
        self.reporter.changed()

    async def _on_budget_exhausted(self) -> None:
        self.budget_exhausted = True
        log.info("run_budget_exhausted", spent_usd=self.view.cost_usd)
        if self.agent_task is not None and not self.agent_task.done():
            self.agent_task.cancel()

    async def _save_partial_work_at_budget(self) -> None:
        """The budget ran out: keep the work so far on the branch and say how to go on."""
        assert self.gateway is not None
        spent, cap = self.gateway.spent_usd, self.gateway.budget_usd or 0.0
        message = f"the run's budget of ${cap:.2f} is spent (${spent:.2f}); the agent was stopped"
        await self._keep_partial_work(
            RunState.FAILED,
            message,
            empty=message + " before it changed anything",
            next_step=": raise the budget with `/budget +N` and comment `/retry` to continue",
        )

    async def _keep_partial_work(
        self, state: RunState, message: str, *, empty: str, next_step: str
    ) -> None:
        """The agent was stopped early: push its work so far as a WIP commit (when there is
        any and it passes policy) and end the run in ``state``, saying how to go on."""
        assert self.changes is not None
        if self.changes.empty:
            raise StepFailed(empty, state)
        verdict = await self._check_policy()
        if not verdict.allowed:
            raise StepFailed(
                f"{message}; its work breaks policy and was not pushed: {verdict.summary}", state
            )
        await self._commit_and_push(wip=True)
        branch = self.workspace.branch if self.workspace else ""
        raise StepFailed(f"{message}; the work so far is on `{branch}`{next_step}", state)

    async def _save_cost(self) -> None:
        assert self.gateway is not None
        await self._save(
            cost_usd=self.gateway.spent_usd,
            tokens_in=self.view.tokens_in,
            tokens_out=self.view.tokens_out,
        )

    def _remote_url(self) -> str:
        if self.repository.local_path:
            return self.repository.local_path
        return f"{self.settings.github.web_url.rstrip('/')}/{self.repository.full_name}.git"

    def _spec(self, workspace: Path, input_dir: Path | None = None) -> SandboxSpec:
        sandbox = self.settings.sandbox
        mounts: tuple[BindMount, ...] = ()
        if input_dir is not None:
            mounts = (BindMount(source=input_dir, target=INPUT_MOUNT, read_only=True),)
            if self.gateway is not None:
                mounts += (sandbox_mount(self.gateway.socket_dir),)
        return SandboxSpec(
            run_id=self.run.id,
            image=self.profile.image or sandbox.image,
            workspace=workspace,
            user=sandbox.user,
            memory=sandbox.memory,
            cpus=sandbox.cpus,
            pids=sandbox.pids,
            tmpfs_size=sandbox.tmpfs_size,
            timeout_seconds=self.profile.timeout or sandbox.timeout_seconds,
            output_limit_bytes=sandbox.output_limit_bytes,
            runtime=sandbox.runtime,
            seccomp_profile=sandbox.seccomp_profile,
            mounts=mounts,
            labels={"repo": self.repository.full_name.replace("/", "_")},
        )

    async def _run_workflow(self) -> tuple[ExecResult, Phase | None]:
        """The workflow's agent phases, one invocation each in the same sandbox, in order,
        until one does not succeed. Returns the last result and the phase that failed."""
        result: ExecResult | None = None
        for phase in self.phases:
            result = await self._agent(phase)
            if phase.name == "plan":
                await self._keep_plan(phase)
            if result.timed_out or self.budget_exhausted:
                return result, None
            if not (result.ok and self.outcome.success):
                return result, phase
            if phase.index < phase.total:
                self.reporter.changed()
        assert result is not None
        return result, None

    async def _phase_prompt(self, phase: Phase) -> str:
        """The prompt file (inside the sandbox) for ``phase``: the run's prompt re-aimed at the
        phase, with the repository's template and the plan of an earlier phase."""
        assert self.workspace is not None
        template = await load_template(self.workspace, self.workspace.base_sha, phase.name)
        if template is not None:
            await self.events.emit(
                "progress",
                {"phase": phase.label, "template": f"{TEMPLATE_DIR}/{phase.name}.md"},
            )
        if phase.total > 1 or phase.name != "implement" or template is not None:
            text = phase_prompt(self.run.prompt, phase.name, template, plan=self.view.plan)
            folder = self.workspace.run_dir / "input"
            await asyncio.to_thread(_write_input, folder, text, phase.prompt_file)
        return f"{INPUT_MOUNT}/{phase.prompt_file}"

    async def _keep_plan(self, phase: Phase) -> None:
        """A plan phase changes no code: keep its final message as the plan, undo any edits."""
        assert self.workspace is not None
        self.view.plan = sanitize(self.outcome.summary).strip()
        await self.artifact("plan", self.view.plan or "(no plan)", "text/markdown")
        if await discard_changes(self.workspace):
            decision = {
                "rule": "workflow.plan",
                "decision": "discard",
                "message": "the plan phase changed files; the changes were discarded",
            }
            self.policy.append(decision)
            await self.events.emit("policy", decision)

    async def _restore_session(self, input_dir: Path) -> None:
        """Continue the agent session of a timed-out parent run (``/resume``), where the
        runner can (jobs/sessions.py)."""
        runner = get_runner(self.profile.runner)
        if not runner.capabilities.session_resume or self.run.parent_run_id is None:
            return
        assert self.sandbox is not None
        async with self.sessions() as session:
            saved = await sessions.parent_session(session, self.run, runner.name)
        if saved is None:
            return
        await asyncio.to_thread(_write_bytes, input_dir / "session.tgz", saved.archive)
        restored = await sessions.unpack(
            self.bosun.backend, self.sandbox, f"{INPUT_MOUNT}/session.tgz"
        )
        if restored:
            self.resume = saved
        await self.events.emit(
            "progress",
            {
                "phase": "prepare",
                "session": saved.session_id,
                "resumed": restored,
                "from_run": self.run.parent_run_id,
            },
        )

    async def _keep_session(self) -> None:
        """Keep the agent's session for a later ``/resume`` (while the sandbox still runs)."""
        runner = get_runner(self.profile.runner)
        session_id = self.outcome.session_id
        if not (runner.capabilities.session_resume and runner.session_dirs and session_id):
            return
        assert self.sandbox is not None
        try:
            archive = await sessions.pack(self.bosun.backend, self.sandbox, runner.session_dirs)
        except SandboxError:
            archive = None
        if archive is None:
            await self.events.emit(
                "log", {"stream": "bosun", "line": "the agent session could not be kept"}
            )
            return
        await self.artifact(sessions.ARCHIVE, archive, "application/gzip")
        await self.artifact(
            sessions.META, sessions.metadata(runner.name, session_id), "application/json"
        )

    async def _post_plan(self) -> None:
        """The ``plan`` workflow's result: the plan as a comment on the issue."""
        number = self.task.issue_number
        if number:
            await self.port.create_comment(
                number, plan_comment(self.run.id, self.view.plan, implementing=False)
            )
        self.view.phase("push", "skipped", "a plan changes no code")
        self.view.phase("pull request", "skipped", "the plan is on the issue")
        reason = "the plan is posted on the issue; no code was changed"
        await self._finish_artifacts(RunState.REVIEW_READY, reason)
        await self.move(RunState.REVIEW_READY, reason=reason)

    async def _agent(self, phase: Phase) -> ExecResult:
        assert self.sandbox is not None
        runner = get_runner(self.profile.runner)
        prompt_path = await self._phase_prompt(phase)
        try:
            gateway_url = f"http://127.0.0.1:{FORWARDER_PORT}" if self.gateway else None
            resume = self.resume.session_id if self.resume and phase.index == 1 else None
            invocation = runner.invocation(
                self.profile, prompt_path=prompt_path, session_id=resume, gateway_url=gateway_url
            )
        except BosunError as exc:
            raise StepFailed(f"profile {self.run.profile!r} is misconfigured: {exc}") from exc
        argv, env = invocation.command(), dict(invocation.env)
        if self.gateway is not None:
            argv = forwarder_argv(argv)
            env = {**agent_env(self.gateway.routes, FORWARDER_PORT), **env}
        step = f"{phase.name} ({phase.index}/{phase.total}): " if phase.total > 1 else ""
        self.view.phase(phase.label, "running", f"{step}{runner.name} started")
        self.reporter.changed()
        await self.events.emit(
            "progress",
            {
                "phase": phase.label,
                "workflow": self.run.workflow,
                "step": phase.index,
                "of": phase.total,
                "argv": invocation.argv[:1],
            },
        )
        if phase.total > 1:
            self.transcript.extend(f"=== bosun: {phase.name} phase ===\n".encode())
        phase_events: list[RunnerEvent] = []
        self.transcript_pending = True
        t0 = time.monotonic()

        async def on_line(stream: str, line: str) -> None:
            for event in runner.parse_line(stream, line):
                self.runner_events.append(event)
                phase_events.append(event)
                self.events.buffer(event.kind, event.data)

        splitter = LineSplitter(on_line)

        async def on_output(chunk: Any) -> None:
            if len(self.transcript) < self.settings.sandbox.output_limit_bytes:
                self.transcript.extend(chunk.data)
            await splitter(chunk)

        self.agent_task = asyncio.create_task(
            self.bosun.backend.exec(
                self.sandbox,
                argv,
                env=env,
                workdir="/workspace",
                timeout=max(1.0, self.remaining()),
                on_output=on_output,
            )
        )

        async def disk_full(grown: int) -> None:  # /workspace is a bind mount: no engine quota
            if self.agent_task is not None and not self.agent_task.done():
                self.agent_task.cancel()

        assert self.workspace is not None
        limit = self.settings.sandbox.workspace_limit_bytes
        quota = WorkspaceQuota(self.workspace.path, limit, disk_full)
        try:
            async with quota:
                result = await self.agent_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            stopped = self.budget_exhausted or quota.exceeded is not None
            if not stopped or (current is not None and current.cancelling()):
                raise
            result = ExecResult(
                argv=tuple(argv),
                exit_code=None,
                duration=time.monotonic() - t0,
                chunks=(),
                truncated_bytes=0,
                timed_out=False,
                oom_killed=False,
                cancelled=True,
            )
        await splitter.flush()
        await self.events.flush()
        elapsed = round(time.monotonic() - t0, 3)
        self.timings["agent"] = round(self.timings.get("agent", 0.0) + elapsed, 3)
        if phase.total > 1:
            self.timings[f"agent:{phase.name}"] = elapsed
        if self.gateway is not None:
            await self._save_cost()
        self.outcome = runner.outcome(result.exit_code, phase_events)
        self.agent_summary = self.outcome.summary
        note = f"[output truncated after {self.settings.sandbox.output_limit_bytes} bytes]"
        if result.truncated and not any(
            e.kind == "log" and e.data.get("line") == note for e in self.runner_events[-5:]
        ):
            await self.events.emit("log", {"stream": "bosun", "line": note})
        await self._save_transcript()
        self.view.transcript_tail = bytes(self.transcript[-4000:]).decode(errors="replace")
        note = "timed out" if result.timed_out else f"exit {result.exit_code}"
        if result.oom_killed:
            note = "killed: out of memory"
        done = result.ok and self.outcome.success
        self.view.phase(phase.label, "done" if done else "failed", f"{step}{note}")
        await self.events.emit(
            "progress",
            {
                "phase": phase.label,
                "exit_code": result.exit_code,
                "timed_out": result.timed_out,
                "oom_killed": result.oom_killed,
                "duration_s": elapsed,
            },
        )
        if result.oom_killed:
            raise StepFailed("the agent ran out of memory and was killed (sandbox memory limit)")
        if quota.exceeded is not None:
            raise StepFailed(quota.reason())
        # Cancelled though nobody asked: the engine or an operator stopped the sandbox.
        if (
            result.cancelled
            and not self.budget_exhausted
            and self.cancelled_by is None
            and not await self._cancel_requested()
        ):
            raise StepFailed(SANDBOX_LOST)
        return result

    async def _save_transcript(self) -> None:
        await self.artifact("transcript", bytes(self.transcript))
        self.transcript_pending = False

    async def _stop_leftovers(self) -> None:
        """Kill every process the agent left running, so nothing of the agent's outlives its
        turn: no leftover races the gates, reads their memory or keeps filling the workspace.
        A failure here is not fatal: the sandbox is stopped before the diff is read anyway."""
        assert self.sandbox is not None
        with contextlib.suppress(SandboxError):
            await self.bosun.backend.exec(
                self.sandbox, ["/bin/sh", "-c", KILL_LEFTOVERS, "bosun-reap"], timeout=10
            )

    async def _gates(self) -> None:
        assert self.sandbox is not None
        wanted = set(self.profile.gates)
        gates = [g for g in self.config.gates if not wanted or g.name in wanted]
        if not gates:
            self.view.phase("gates", "skipped", "none configured")
            return
        self.view.phase("gates", "running", f"{len(gates)} gate(s)")
        self.reporter.changed()
        for gate in gates:
            output = bytearray()

            async def collect(chunk: Any, output: bytearray = output) -> None:
                if len(output) < 1_000_000:
                    output.extend(chunk.data)

            result = await self.bosun.backend.exec(
                self.sandbox,
                gate.run,
                workdir="/workspace",
                timeout=max(1.0, min(float(gate.timeout), self.remaining())),
                on_output=collect,
            )
            passed = result.ok
            text = bytes(output).decode(errors="replace")
            self.view.gates.append(
                GateView(gate.name, passed, result.exit_code, result.duration, text[-2000:])
            )
            await self.artifact(f"gate:{gate.name}", bytes(output))
            await self.events.emit(
                "gate_result",
                {
                    "name": gate.name,
                    "passed": passed,
                    "exit_code": result.exit_code,
                    "timed_out": result.timed_out,
                    "duration_s": round(result.duration, 3),
                },
            )
            self.reporter.changed()
        passed_all = gates_passed(self.view)
        await self._save(gates_passed=passed_all)
        self.view.phase(
            "gates",
            "done" if passed_all else "failed",
            f"{sum(g.passed for g in self.view.gates)}/{len(gates)} passed",
        )

    async def _freeze(self) -> None:
        """Stop the sandbox before the diff is read, so no process the agent left behind can
        change the tree between the policy check and the push (docs/security.md)."""
        assert self.sandbox is not None
        try:
            await self.bosun.backend.stop(self.sandbox, timeout=0)
        except SandboxError as exc:
            raise StepFailed(f"could not stop the sandbox before reading the diff: {exc}") from exc

    async def _collect_changes(self) -> None:
        assert self.workspace is not None
        limit = self.config.limits.max_diff_bytes  # a larger diff is refused unread
        self.changes = await self.workspace.changes(max_diff_bytes=limit)
        files = self.changes.files
        self.view.files_changed = len(files)
        self.view.lines_added = self.changes.lines_added
        self.view.lines_removed = self.changes.lines_removed
        self.view.file_stats = [(f.path, f.status, f.added, f.removed) for f in files]
        if not self.changes.empty:
            await self.artifact("diff", self.changes.diff, "text/x-diff")
            stats = [
                {
                    "path": f.path,
                    "status": f.status,
                    "added": f.added,
                    "removed": f.removed,
                    "binary": f.binary,
                    "old_path": f.old_path,
                    "size": f.size,
                }
                for f in files
            ]
            await self.artifact("diff-stats", json.dumps(stats, indent=2), "application/json")

    async def _check_policy(self) -> DiffVerdict:
        assert self.changes is not None
        verdict = await evaluate_diff(self.changes, self.config)
        self.policy = verdict.decisions
        self.view.phase("policy", "done" if verdict.allowed else "failed", verdict.summary)
        return verdict

    async def _record_policy(self) -> None:
        for decision in self.policy:
            await self.events.emit("policy", decision)

    async def _commit_and_push(self, *, wip: bool) -> None:
        assert self.workspace is not None
        await self._record_policy()
        identity = self.bosun.commit_identity()
        requester = self.run.requester
        title = self.task.title or f"run {self.run.id}"
        subject = f"WIP: {title}" if wip else title
        if self.task.issue_number:
            subject += f" (#{self.task.issue_number})"
        trailers = [("Bosun-Run", self.run.id), ("Requested-by", f"@{requester}")]
        if requester:
            trailers.append(
                ("Co-authored-by", f"{requester} <{requester}@users.noreply.github.com>")
            )
        await self.workspace.commit(subject, author=identity, committer=identity, trailers=trailers)
        head = await self.workspace.head_sha()
        self.view.phase("push", "running", f"`{head[:12]}`")
        self.reporter.changed()
        t0 = time.monotonic()
        try:
            auth = await self.port.git_auth_header()
            await self.workspace.push(self._remote_url(), auth_header=auth)
        except PushRejected as exc:
            self.view.phase("push", "failed", "rejected")
            raise StepFailed(f"the push was rejected: {exc}") from exc
        self.timings["push"] = round(time.monotonic() - t0, 3)
        self.view.head_sha = head
        await self._save(head_sha=head)
        self.view.phase("push", "done", f"`{self.workspace.branch}` at `{head[:12]}`")

    async def _open_pull_request(self) -> None:
        assert self.workspace is not None
        branch = self.workspace.branch
        body = pr_body(self.view)
        title = self.task.title or f"Bosun run {self.run.id}"
        existing = await self.port.find_pull(branch)
        if existing is not None:
            pull = await self.port.update_pull(existing.number, title=title, body=body)
        else:
            draft = self.config.branch.draft_until_gates_pass and not gates_passed(self.view)
            pull = await self.port.create_pull(
                title=title,
                body=body,
                head=branch,
                base=self.repository.default_branch,
                draft=draft,
            )
        self.view.pr_number = pull.number
        self.view.head_sha = pull.head_sha
        async with self.sessions.begin() as session:
            await session.execute(
                update(Run).where(Run.id == self.run.id).values(pr_number=pull.number)
            )
            await session.execute(
                update(Task)
                .where(Task.id == self.task.id)
                .values(pr_number=pull.number, branch=branch)
            )
        self.task.pr_number = pull.number

    async def _save_before_timeout(self) -> None:
        """The time limit hit: keep the work so far on the branch and offer ``/resume``."""
        await self._keep_partial_work(
            RunState.TIMED_OUT,
            "the run reached its time limit",
            empty="the run reached its time limit with no changes",
            next_step=" — comment `/resume` to continue",
        )

    # -- endings ------------------------------------------------------------------------

    async def _end(self, state: RunState, reason: str) -> None:
        for phase in phase_names(self.view):
            current = self.view.phases.get(phase)
            if current is not None and current[0] == "running":
                self.view.phase(phase, "failed", current[1])
        with contextlib.suppress(Exception):
            await self.events.emit(
                "error" if state is RunState.FAILED else "log",
                {"stream": "bosun", "line": reason, "state": state.value},
            )
        if self.transcript_pending:  # the agent was stopped before its transcript was kept
            with contextlib.suppress(Exception):
                await self._save_transcript()
        if self.policy:
            with contextlib.suppress(Exception):
                await self._record_policy()
        with contextlib.suppress(Exception):
            await self._finish_artifacts(state, reason)
        try:
            await self.move(state, reason=reason)
        except BosunError as exc:
            log.warning("run_end_transition_refused", error=str(exc))
        await self._metrics()

    async def _finish_artifacts(self, state: RunState, reason: str) -> None:
        """Summary and manifest as of the state the run is about to enter."""
        self.view.state, self.view.reason = state, reason
        async with self.sessions() as session:
            approvals, commands = await review_records(session, self.run.id)
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
        await asyncio.to_thread(_append_line, path, line)

    async def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self.events.close()
        if self.sandbox is not None:
            with contextlib.suppress(SandboxError):
                await self.bosun.backend.remove(self.sandbox)
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.stop()
            with contextlib.suppress(Exception):
                await self._save_cost()
        with contextlib.suppress(Exception):
            await self.bosun.workspaces.cleanup(self.run.id)
        await self.admission.leave()  # frees the slot and lock, wakes the next waiting run
        await self.reporter.close()
        with contextlib.suppress(Exception):
            await self.bosun.services.redis.delete(request_cancel_key(self.settings, self.run.id))


def _write_input(folder: Path, prompt: str, name: str = "prompt.md") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    target = folder / name
    target.write_text(prompt)
    target.chmod(0o644)


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(line + "\n")


def utc_now() -> datetime:
    return datetime.now(UTC)
