"""The agent's turn of a run: the model gateway, the workflow's phases (one agent invocation
each, in the run's sandbox), the agent's output as events and transcript, its session kept for
``/resume``, and every process it left killed when its turn ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import structlog

from bot import tracing
from bot.agents.gateway import (
    FORWARDER_PORT,
    GatewayRefusal,
    MissingKey,
    ModelGateway,
    UsageRecord,
    agent_env,
    default_route,
    forwarder_argv,
    routes_for_profile,
    socket_dir,
)
from bot.agents.runners import RunnerEvent, get_runner
from bot.domain.prompt import phase_prompt, sanitize
from bot.domain.status import flag_unpriced
from bot.domain.steering import SteerMessage
from bot.errors import BosunError
from bot.tracing.genai import AgentTrace, agent_attributes
from jobs.run import agent_sessions
from jobs.run.base import (
    INPUT_MOUNT,
    RunBase,
    StepFailed,
    write_bytes,
    write_input,
)
from jobs.run.phases import (
    TEMPLATE_DIR,
    Phase,
    discard_changes,
    load_template,
)
from jobs.run.steering import queued_steers
from sandboxes.base import ExecResult
from sandboxes.errors import SandboxError, UnreadableWorkspace
from sandboxes.output import LineSplitter
from sandboxes.quota import OnExceeded, WorkspaceQuota

log = structlog.get_logger("jobs.run.pipeline")

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


class AgentSteps(RunBase):
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
            limits=self.settings.gateway.limits(),
            pricing=self.settings.gateway.pricing(),
            on_refused=self._on_gateway_refused,
            on_steered=self._on_steered,
        )
        try:
            await self.gateway.start()
        except MissingKey as exc:
            self.gateway = None
            raise StepFailed(f"the model gateway cannot start: {exc}") from exc
        await self.events.emit(
            "progress", {"phase": "prepare", "gateway": sorted(routes), "budget_usd": budget}
        )
        await self._take_steers()  # sent while the run was preparing

    async def _take_steers(self) -> None:
        """Hand the gateway the steers recorded since the last look (``jobs.run.steering``)."""
        if self.gateway is None:
            return
        messages, self.steers_read = await queued_steers(
            self.sessions, self.run.id, self.steers_read
        )
        if messages:
            waiting = self.gateway.steer(messages)
            log.info("run_steer_queued", count=len(messages), waiting=waiting)

    def _on_steered(self, messages: list[SteerMessage], number: int) -> None:
        """The gateway put ``messages`` into model request ``number``."""
        self.events.buffer(
            "steer_delivered",
            {
                "request": number,
                "steers": [m.id for m in messages],
                "actors": sorted({m.actor for m in messages}),
                "count": len(messages),
            },
        )

    def _on_usage(self, record: UsageRecord) -> None:
        self.events.buffer("cost", record.event_data())
        if self.agent_trace is not None:
            route = self.gateway.routes.get(record.upstream) if self.gateway else None
            self.agent_trace.model_call(
                endpoint=record.endpoint,
                provider=route.api if route else None,
                model=record.model,
                input_tokens=record.usage.total_input_tokens,
                output_tokens=record.usage.output_tokens,
                cache_read_tokens=record.usage.cache_read_tokens,
                cache_write_tokens=record.usage.cache_write_tokens,
                status=record.status,
                duration_s=record.duration_s,
            )
        self.view.cost_usd = record.spent_usd
        self.view.tokens_in += record.usage.total_input_tokens
        self.view.tokens_out += record.usage.output_tokens
        if not record.known_model and record.cost_usd > 0:
            self._flag_unpriced(record.model)
        self.reporter.changed()

    def _flag_unpriced(self, model: str | None) -> None:
        """A model no price list knew was charged at the unknown-model price: one ``policy``
        event per model, and a note in the run's cost."""
        price = self.settings.gateway.pricing().unknown.summary()
        event = flag_unpriced(self.view, model, price)
        if event is not None:
            self.events.buffer("policy", event)

    def _on_gateway_refused(self, refusal: GatewayRefusal) -> None:
        """A request or connection the gateway refused (counted: a flood is a few events)."""
        self.events.buffer(refusal.event, refusal.event_data())

    async def _on_budget_exhausted(self) -> None:
        self.budget_exhausted = True
        log.info("run_budget_exhausted", spent_usd=self.view.cost_usd)
        if self.agent_task is not None and not self.agent_task.done():
            self.agent_task.cancel()

    async def _run_workflow(self) -> tuple[ExecResult, Phase | None]:
        """The workflow's agent phases, one invocation each in the same sandbox, in order,
        until one does not succeed. Returns the last result and the phase that failed."""
        result: ExecResult | None = None
        for phase in self.phases:
            result = await self._traced_agent(phase)
            await self._stop_leftovers()  # nothing of a phase outlives it
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

    async def _traced_agent(self, phase: Phase) -> ExecResult:
        """``_agent`` as an ``invoke_agent`` span with the phase's model and tool calls under
        it (tracing on)."""
        if not tracing.enabled():
            return await self._agent(phase)
        runner = self.profile.runner
        route = default_route(runner, self.gateway.routes) if self.gateway else None
        provider = self.gateway.routes[route].api if self.gateway and route else None
        attributes = agent_attributes(
            runner,
            phase=phase.name,
            step=phase.index,
            steps=phase.total,
            model=self.profile.model or None,
            provider=provider,
        )
        with tracing.span(f"invoke_agent {runner}", attributes) as current:
            self.agent_trace = AgentTrace(current) if current is not None else None
            result: ExecResult | None = None
            try:
                result = await self._agent(phase)
            finally:
                if self.agent_trace is not None:
                    exit_code = result.exit_code if result is not None else None
                    self.agent_trace.finish(exit_code=exit_code, session_id=self.outcome.session_id)
                self.agent_trace = None
            assert result is not None
            if result.timed_out:
                tracing.failed(current, "timeout")
            elif self.budget_exhausted:
                tracing.failed(current, "budget_exhausted")
            elif not (result.ok and self.outcome.success):
                tracing.failed(current, "agent_failed")
            return result

    async def _phase_prompt(self, phase: Phase) -> str:
        """The prompt file (inside the sandbox) for ``phase``: the run's prompt re-aimed at the
        phase, with the repository's template and the plan of an earlier phase."""
        assert self.workspace is not None
        template = await load_template(self.workspace, phase.name)
        if template is not None:
            await self.events.emit(
                "progress",
                {"phase": phase.label, "template": f"{TEMPLATE_DIR}/{phase.name}.md"},
            )
        if phase.total > 1 or phase.name != "implement" or template is not None:
            text = phase_prompt(self.run.prompt, phase.name, template, plan=self.view.plan)
            folder = self.workspace.run_dir / "input"
            await asyncio.to_thread(write_input, folder, text, phase.prompt_file)
        return f"{INPUT_MOUNT}/{phase.prompt_file}"

    async def _keep_plan(self, phase: Phase) -> None:
        """A plan phase changes no code: keep its final message as the plan, undo any edits."""
        assert self.workspace is not None
        self.view.plan = sanitize(self.outcome.summary).strip()
        await self.artifact("plan", self.view.plan or "(no plan)", "text/markdown")
        assert self.sandbox is not None
        try:
            discarded = await discard_changes(self.workspace, self.bosun.backend, self.sandbox)
        except UnreadableWorkspace as exc:
            raise StepFailed(str(exc), detail=exc.detail) from exc
        if discarded:
            decision = {
                "rule": "workflow.plan",
                "decision": "discard",
                "message": "the plan phase changed files; the changes were discarded",
            }
            self.policy.append(decision)
            await self.events.emit("policy", decision)

    async def _restore_session(self, input_dir: Path) -> None:
        """Continue the agent session of a timed-out parent run (``/resume``), where the
        runner can (jobs/run/agent_sessions.py)."""
        runner = get_runner(self.profile.runner)
        if not runner.capabilities.session_resume or self.run.parent_run_id is None:
            return
        assert self.sandbox is not None
        async with self.sessions() as session:
            saved = await agent_sessions.parent_session(session, self.run, runner.name)
        if saved is None:
            return
        await asyncio.to_thread(write_bytes, input_dir / "session.tgz", saved.archive)
        restored = await agent_sessions.unpack(
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
            archive = await agent_sessions.pack(
                self.bosun.backend, self.sandbox, runner.session_dirs
            )
        except SandboxError:
            archive = None
        if archive is None:
            await self.events.emit(
                "log", {"stream": "bosun", "line": "the agent session could not be kept"}
            )
            return
        await self.artifact(agent_sessions.ARCHIVE, archive, "application/gzip")
        await self.artifact(
            agent_sessions.META,
            agent_sessions.metadata(runner.name, session_id),
            "application/json",
        )

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
        self.timings.setdefault("to_agent", round(t0 - self.began, 3))  # job start → agent exec

        async def on_line(stream: str, line: str) -> None:
            for event in runner.parse_line(stream, line):
                self.runner_events.append(event)
                phase_events.append(event)
                self.events.buffer(event.kind, event.data)
                if event.kind == "tool" and self.agent_trace is not None:
                    self.agent_trace.tool(event.data)

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
        quotas = [WorkspaceQuota(self.workspace.path, limit, disk_full), *self._quotas(disk_full)]
        try:
            async with contextlib.AsyncExitStack() as watching:
                for quota in quotas:
                    await watching.enter_async_context(quota)
                result = await self.agent_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            over = any(quota.exceeded is not None for quota in quotas)
            stopped = self.budget_exhausted or over
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
        if self.gateway is not None:  # refusals still waiting for their counted report
            await self.gateway.report_refusals()
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
        for quota in quotas:
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

    def _quotas(self, on_exceeded: OnExceeded) -> list[WorkspaceQuota]:
        """Host folders besides the workspace the agent may write, each watched while it runs
        (none here; the setup step adds the dependency cache's writable part)."""
        return []

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
