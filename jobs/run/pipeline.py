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
import time
from typing import Any

import structlog
from arq.worker import Retry
from sqlalchemy import update

from bot import tracing
from bot.db.models import Repository, Run, Task
from bot.domain.limits import clip
from bot.domain.states import TERMINAL, RunState
from bot.domain.status import phase_names
from bot.errors import BosunError
from bot.forge.port import ForgeUnavailable
from jobs.admission.cancel import request_cancel_key
from jobs.admission.gate import Waiting
from jobs.context import JobContext, job_context
from jobs.run.base import (
    Loaded,
    StepFailed,
    utc_now,
)
from jobs.run.image import ImageSteps
from jobs.run.phases import Phase
from jobs.run.prepare import PrepareSteps
from jobs.run.publish import PublishSteps
from jobs.run.steering import steer_wake_key
from sandboxes.base import ExecResult
from sandboxes.errors import SandboxError

log = structlog.get_logger("jobs.run.pipeline")

FAILED_STATES = frozenset({RunState.FAILED.value, RunState.TIMED_OUT.value})
"""Run states whose job span is marked failed (a cancel or review outcome is not an error)."""


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
    if not tracing.enabled():
        return await execution.execute()
    run = loaded.run
    with tracing.span(
        "execute_run",
        {
            "bosun.run.id": run.id,
            "bosun.delivery.id": run.delivery_id,
            "bosun.repository": loaded.repository.full_name,
            "bosun.run.profile": run.profile,
            "bosun.run.workflow": run.workflow,
            "bosun.run.trigger": run.trigger,
            "bosun.run.parent_id": run.parent_run_id,
            "bosun.job.try": int(ctx.get("job_try") or 1),
        },
        kind="consumer",
        parent=run.trace_parent,
        ok=(Retry,),
    ) as current:
        if run.trace_parent is None:  # started untraced: its later jobs continue this one
            await execution.adopt_trace(tracing.traceparent_of(current))
        outcome = await execution.execute()
        tracing.set_attributes(current, {"bosun.run.state": outcome.get("state")})
        if outcome.get("state") in FAILED_STATES:
            tracing.failed(current, str(outcome["state"]))
        return outcome


async def _load(bosun: JobContext, run_id: str) -> Loaded | None:
    async with bosun.services.sessions() as session:
        run = await session.get(Run, run_id)
        if run is None:
            return None
        task = await session.get(Task, run.task_id)
        repository = await session.get(Repository, run.repository_id)
        assert task is not None and repository is not None
        return Loaded(run, task, repository)


class RunExecution(ImageSteps, PrepareSteps, PublishSteps):
    """One run's execution: the steps in order, the cancel watch, the ending and clean-up."""

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
            await self._end(exc.state, exc.reason, detail=exc.detail)
        except ForgeUnavailable as exc:  # still failing after the client's own retries
            log.warning("run_forge_unavailable", error=str(exc)[:300])
            reason = f"{clip(str(exc), 300)}; comment `/retry` to run it again once it answers"
            await self._end(RunState.FAILED, reason, detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("run_crashed")
            reason = f"internal error ({type(exc).__name__}); the detail is in the run's log"
            await self._end(RunState.FAILED, reason, detail=f"{type(exc).__name__}: {exc}")
        finally:
            self._stop_watch.set()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.shield(self._cleanup())
        self.timings["total"] = round(time.monotonic() - started, 3)
        return {"run_id": self.run.id, "state": self.run.state.value}

    async def _admit(self) -> str | None:
        """Capacity slot and scope lock (jobs/admission/gate.py). While the run may not start it
        stays queued, GitHub shows its place in line, and arq runs the job again later (woken
        early when a slot frees). Returns why the run is refused, if it is."""
        if self.run.state is not RunState.QUEUED or self.run.cancel_requested:
            return None
        with tracing.span("admission", ok=(Retry,)) as current:
            outcome = await self.admission.enter()
            if isinstance(outcome, Waiting):
                tracing.set_attributes(
                    current,
                    {
                        "bosun.admission.outcome": "waiting",
                        "bosun.queue.position": outcome.position,
                    },
                )
                await self.admission.show(outcome, self.view, self.reporter, port=self.port)
                await self.admission.not_a_try()
                raise Retry(defer=outcome.defer)
            admitted = "refused" if outcome is not None else "admitted"
            tracing.set_attributes(current, {"bosun.admission.outcome": admitted})
        self.admission.adopt_check_run(self.reporter)
        return outcome.reason if outcome is not None else None

    async def adopt_trace(self, traceparent: str | None) -> None:
        """Record ``traceparent`` as the run's trace, unless another job recorded one first."""
        if traceparent is None:
            return
        async with self.sessions.begin() as session:
            await session.execute(
                update(Run)
                .where(Run.id == self.run.id, Run.trace_parent.is_(None))
                .values(trace_parent=traceparent)
            )

    async def _steps(self) -> None:
        await self.move(RunState.PREPARING)
        await self._choose_image()  # the repository's or its dev container's, else the profile's
        await self._plan_setup()
        with tracing.span("prepare"):
            await self._prepare()
        # A span only when there is setup to do (commands, or the agent's proxied network).
        with tracing.span("setup") if self.egress is not None else contextlib.nullcontext():
            await self._setup()
        await self.move(RunState.RUNNING)
        result, failed_phase = await self._run_workflow()
        await self.move(RunState.GATES)
        plan_only = self.phases[-1].name == "plan"
        if plan_only:
            self.view.phase("gates", "skipped", "a plan changes no code")
        else:
            with tracing.span("gates") as current:
                await self._gates()
                tracing.set_attributes(current, {"bosun.gates.passed": self.run.gates_passed})
        with tracing.span("publish") as current:
            await self._publish(result, failed_phase, plan_only)
            tracing.set_attributes(
                current,
                {
                    "bosun.changes.files": self.view.files_changed,
                    "bosun.changes.lines_added": self.view.lines_added,
                    "bosun.changes.lines_removed": self.view.lines_removed,
                    "bosun.pull_request.number": self.view.pr_number,
                },
            )

    async def _publish(
        self, result: ExecResult, failed_phase: Phase | None, plan_only: bool
    ) -> None:
        """After the gates: the agent's session kept, the sandbox frozen, the diff read and
        checked, then the branch pushed and the pull request opened (or the partial work of a
        run stopped by its time or budget kept, or the plan posted)."""
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
        """Poll for ``/cancel``, budget raises and steers, and write the heartbeat. Redis only wakes
        the watch early; what it acts on is read from the database (a cancel recorded there,
        the run's budget), so whoever can write to Redis cannot cancel a run or raise its
        budget. Stopped through ``_stop_watch`` rather than cancelled, so no database or Redis
        call is ever interrupted half-way."""
        key = request_cancel_key(self.settings, self.run.id)
        budget_key = self.settings.redis.key("budget", self.run.id)
        steer_key = steer_wake_key(self.settings, self.run.id)
        ticks = 0
        next_beat = 0.0  # the first tick beats: a run never goes long without a heartbeat
        while True:
            try:
                async with asyncio.timeout(0.2):
                    await self._stop_watch.wait()
                return
            except TimeoutError:
                ticks += 1
            signalled = raised = False
            with contextlib.suppress(Exception):
                signalled = bool(await self.bosun.services.redis.get(key))
                raised = bool(await self.bosun.services.redis.getdel(budget_key))
            if (raised or ticks % 10 == 0) and self.gateway is not None:
                with contextlib.suppress(Exception):
                    await self._apply_budget()
            if self.gateway is not None:
                steered = False
                with contextlib.suppress(Exception):
                    steered = bool(await self.bosun.services.redis.getdel(steer_key))
                if steered or ticks % 25 == 0:  # the key may have been set before the gateway
                    with contextlib.suppress(Exception):
                        await self._take_steers()
            if time.monotonic() >= next_beat:  # tell the reconciler this run's worker lives
                next_beat = time.monotonic() + self.settings.worker.heartbeat_seconds
                with contextlib.suppress(Exception):
                    await self._save(heartbeat_at=utc_now(), retry=False)  # a miss is fine
            if ticks % 10 == 0:
                with contextlib.suppress(Exception):
                    await self._watch_stall()
            actor: str | None = None
            if (signalled or ticks % 10 == 0) and await self._cancel_requested():
                actor = self.cancelled_by or "request"
            if actor is not None and main is not None:
                self.cancelled_by = actor
                log.info("run_cancel_requested", actor=actor)
                if self.sandbox is not None:
                    with contextlib.suppress(SandboxError):
                        await self.bosun.backend.stop(self.sandbox, timeout=1.0)
                main.cancel()
                return

    async def _watch_stall(self) -> None:
        """Flag the run stalled after ``worker.stall_seconds`` without an event of its own
        while it works; lift the flag when its events resume."""
        quiet = time.monotonic() - self.events.last_activity
        working = self.run.state in (RunState.RUNNING, RunState.GATES)
        limit = self.settings.worker.stall_seconds
        if working and quiet >= limit and not self.view.stalled:
            minutes = max(1, round(quiet / 60))
            self.view.stalled = f"no event for {minutes} minute{'s' if minutes > 1 else ''}"
            await self._save(stalled_since=utc_now())
            await self.events.emit(
                "progress", {"stalled": True, "quiet_seconds": round(quiet)}, quiet=True
            )
            log.warning("run_stalled", quiet_seconds=round(quiet))
            self.reporter.changed()
        elif self.view.stalled and (quiet < limit or not working):
            self.view.stalled = ""
            await self._save(stalled_since=None)
            await self.events.emit("progress", {"stalled": False}, quiet=True)
            log.info("run_resumed")
            self.reporter.changed()

    async def _apply_budget(self) -> None:
        """Give the gateway the run's budget as the database has it, when it was raised."""
        assert self.gateway is not None
        async with self.sessions() as session:
            run = await session.get(Run, self.run.id, populate_existing=True)
        wanted, cap = (run.budget_usd if run else None), self.gateway.budget_usd
        if wanted is not None and cap is not None and wanted > cap + 1e-9:
            raised = self.gateway.raise_budget(wanted - cap)
            await self.events.emit("cost", {"source": "budget", "budget_usd": raised})

    async def _end(self, state: RunState, reason: str, *, detail: str | None = None) -> None:
        if detail:  # for maintainers: may quote agent-written data, so never published
            with contextlib.suppress(Exception):
                await self.artifact("error", detail)
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

    async def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self.events.close()
        with contextlib.suppress(SandboxError):
            if self.sandbox is not None:
                await self.bosun.backend.remove(self.sandbox)
            else:  # a run ended for a dead worker: its sandbox goes before its files
                await self.bosun.backend.remove_run(self.run.id)
        await self._cleanup_setup()
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
