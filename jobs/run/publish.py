"""After the agent: gates in the sandbox, the frozen sandbox, the diff and its policy, the
commit and push from outside the sandbox, the pull request; and the endings that keep partial
work (time limit, budget) or post a plan."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from sqlalchemy import update

from bot.db.models import Run, Task
from bot.domain.annotations import gate_annotations
from bot.domain.limits import clip
from bot.domain.states import RunState
from bot.domain.status import GateView, gates_passed, pr_body
from jobs.run.base import (
    RunBase,
    StepFailed,
)
from jobs.run.diffcheck import DiffVerdict, evaluate_diff
from jobs.run.phases import plan_comment
from sandboxes.errors import GitError, PushRejected, SandboxError, UnreadableWorkspace
from sandboxes.git import push_refusal_summary
from sandboxes.treewalk import WalkLimits

log = structlog.get_logger("jobs.run.publish")

PUSH_TRIES = 4
"""Pushes of one run's commit before a forge that does not answer (or answers 5xx) fails the
run; ``github.retry_base_seconds`` times 4, 8, 16 s apart (4, 8, 16 s with the defaults)."""


class PublishSteps(RunBase):
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
            if not passed:
                self.failed_gates.append((gate.name, text))
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
        limits = self.config.limits
        reading = WalkLimits(
            max_file_bytes=limits.max_file_bytes,
            max_read_bytes=self.settings.sandbox.workspace_limit_bytes,
            max_new_files=max(10 * limits.max_files_changed, 10_000),
        )
        try:
            self.changes = await self.workspace.changes(
                max_diff_bytes=limits.max_diff_bytes,  # a larger diff is refused unread
                limits=reading,
            )
        except UnreadableWorkspace as exc:
            raise StepFailed(str(exc), detail=exc.detail) from exc
        await self._annotate(self.changes.tree_files)
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

    async def _annotate(self, tree_files: frozenset[str]) -> None:
        """Failing gates' ``path:line: message`` lines that name a file in the tree the host
        read (never a lookup in the agent's folder) become check-run annotations."""
        for name, text in self.failed_gates:
            found = await asyncio.to_thread(gate_annotations, name, text, tree_files.__contains__)
            self.view.annotations.extend(found)
        if self.failed_gates:
            self.reporter.changed()

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
        if requester and not requester.startswith("token:"):  # a person, not an API token
            trailers.append(
                ("Co-authored-by", f"{requester} <{requester}@users.noreply.github.com>")
            )
        assert self.changes is not None
        head = await self.workspace.commit(
            self.changes.tree, subject, author=identity, committer=identity, trailers=trailers
        )
        head = head or self.workspace.start_sha
        self.view.phase("push", "running", f"`{head[:12]}`")
        self.reporter.changed()
        t0 = time.monotonic()
        for attempt in range(1, PUSH_TRIES + 1):
            try:
                auth = await self.port.git_auth_header()
                await self.workspace.push(head, self._remote_url(), auth_header=auth)
                break
            except PushRejected as exc:
                self.view.phase("push", "failed", "rejected")
                raise StepFailed(
                    f"the push was rejected: {push_refusal_summary(str(exc))}", detail=str(exc)
                ) from exc
            except GitError as exc:  # no answer, or a 5xx: the forge may be back in a moment
                if attempt == PUSH_TRIES:
                    self.view.phase("push", "failed", "unreachable")
                    raise StepFailed(
                        f"the push failed {PUSH_TRIES} times (is the forge reachable?): "
                        f"{_last_line(exc.stderr)}; comment `/retry` to run it again",
                        detail=str(exc),
                    ) from exc
                wait = min(30.0, self.settings.github.retry_base_seconds * 2 ** (attempt + 1))
                log.warning("push_retry", attempt=attempt, wait_s=wait, error=str(exc)[:300])
                await asyncio.sleep(wait)
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

    async def _save_before_timeout(self) -> None:
        """The time limit hit: keep the work so far on the branch and offer ``/resume``."""
        await self._keep_partial_work(
            RunState.TIMED_OUT,
            "the run reached its time limit",
            empty="the run reached its time limit with no changes",
            next_step=" — comment `/resume` to continue",
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


def _last_line(stderr: str) -> str:
    """What git said last (credentials are redacted in ``GitError.stderr``), on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return clip(lines[-1], 200) if lines else "git gave no reason"
