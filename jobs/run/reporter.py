"""Keeps GitHub in step with a run without ever slowing it down.

The pipeline mutates a ``RunView`` and calls ``changed()``; a background task renders the
latest view and applies it: one check run (on the base commit until a PR head exists, then on
the head) and one status comment found again by its hidden marker. Updates coalesce — only the
newest state is sent — and a GitHub failure is logged, never raised into the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from bot.domain.annotations import BATCH
from bot.domain.review import review_section_of, with_review_section
from bot.domain.states import RunState
from bot.domain.status import (
    STATUS_MARKER,
    CheckAction,
    CheckRunUpdate,
    RunView,
    check_run_update,
    status_comment,
)
from bot.forge.port import Forge

log = structlog.get_logger("jobs.run.reporter")

Persist = Callable[[dict[str, int]], Awaitable[None]]

ACTIONS_REVIEW = (
    CheckAction("Approve", "Approve this change", "approve"),
    CheckAction("Retry", "Run the agent again", "retry"),
)
ACTIONS_ACTIVE = (CheckAction("Cancel", "Cancel this run", "cancel"),)


class StatusReporter:
    def __init__(
        self,
        port: Forge,
        view: RunView,
        *,
        check_run_id: int | None,
        check_sha: str | None,
        comment_id: int | None,
        persist: Persist,
    ) -> None:
        self.port = port
        self.view = view
        self.check_run_id = check_run_id
        self.check_sha = check_sha
        self.comment_id = comment_id
        self._persist = persist
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.errors = 0
        self.annotated = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"reporter:{self.view.run_id}")

    def changed(self) -> None:
        self._idle.clear()
        self._dirty.set()

    async def flush(self, timeout: float = 120.0) -> None:
        """Wait until the newest view has been applied (or given up on)."""
        self.changed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._apply()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- status must never break a run
                self.errors += 1
                log.warning("github_status_update_failed", error=str(exc)[:300])
            if not self._dirty.is_set():
                self._idle.set()

    def _actions(self) -> tuple[CheckAction, ...]:
        if self.view.state is RunState.REVIEW_READY:
            return ACTIONS_REVIEW
        if self.view.state in (
            RunState.QUEUED,
            RunState.PREPARING,
            RunState.RUNNING,
            RunState.GATES,
        ):
            return ACTIONS_ACTIVE
        return ()

    async def _apply(self) -> None:
        view = self.view
        if view.issue_number is not None:
            body = status_comment(view)
            if self.comment_id is None:
                self.comment_id = await self.port.find_comment(view.issue_number, STATUS_MARKER)
            if self.comment_id is None:
                self.comment_id = await self.port.create_comment(view.issue_number, body)
                await self._persist({"status_comment_id": self.comment_id})
            else:
                # A review command may have written the review section meanwhile (the run's
                # last status can land after an approval): keep it.
                kept = review_section_of(await self.port.comment_body(self.comment_id) or "")
                if kept is not None:
                    body = with_review_section(body, kept)
                await self.port.update_comment(self.comment_id, body)
        sha = view.head_sha if view.pr_number else (view.head_sha or view.base_sha)
        if sha is None:
            return
        update = check_run_update(view, actions=self._actions())
        if self.check_run_id is not None and self.check_sha != sha:
            # The run moved to a new head: close the old check run and open one on the head.
            moved = CheckRunUpdate(
                title="Bosun: moved",
                summary=f"This run continues on `{sha[:12]}`.",
                status="completed",
                conclusion="neutral",
                name=None,
            )
            await self.port.update_check_run(self.check_run_id, moved)
            self.check_run_id = None
        batch = []
        if view.pr_number:  # annotations belong on the PR head's check run, never the base's
            batch = view.annotations[self.annotated : self.annotated + BATCH]
            if batch:
                update = replace(update, annotations=tuple(batch))
        if self.check_run_id is None:
            self.check_run_id = await self.port.create_check_run(sha, update)
            self.check_sha = sha
            await self._persist({"check_run_id": self.check_run_id})
        else:
            await self.port.update_check_run(self.check_run_id, update)
        self.annotated += len(batch)
        if self.annotated < len(view.annotations) and view.pr_number:
            self._dirty.set()  # GitHub takes 50 per request: the next batch in another update
