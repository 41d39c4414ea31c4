"""Wall-clock probes around the worker's preparation steps, installed from outside.

The product records ``timings.workspace`` and ``timings.sandbox_start`` for a run; these probes
split them further (docker info, token, mirror fetch, worktree, container create, container
start, state moves, exec open) by wrapping the methods that do the work, for the duration of a
benchmark only. Each call is recorded with the ``run_id`` that ``execute_run`` binds in
structlog's context.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from bot.github.repo import GitHubRepo
from jobs.run.event_log import EventWriter
from jobs.run.pipeline import RunExecution
from jobs.run.reporter import StatusReporter
from sandboxes.docker import DockerBackend
from sandboxes.mirror import MirrorCache
from sandboxes.workspace import WorkspaceManager

# (class, method, stage name)
TARGETS: list[tuple[type[Any], str, str]] = [
    (DockerBackend, "host_ids", "host_ids"),
    (GitHubRepo, "git_auth_header", "git_token"),
    (MirrorCache, "update_locked", "mirror_fetch"),
    (WorkspaceManager, "prepare", "workspace_prepare"),
    (DockerBackend, "create", "container_create"),
    (DockerBackend, "start", "container_start"),
    (DockerBackend, "_open_exec", "exec_open"),
    (RunExecution, "move", "move"),
    (EventWriter, "emit", "event_emit"),
    (StatusReporter, "_apply", "status_report"),
]


@dataclass
class Call:
    stage: str
    run_id: str | None
    start: float
    end: float


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_run(self, run_id: str) -> dict[str, list[Call]]:
        out: dict[str, list[Call]] = {}
        with self.lock:
            for call in self.calls:
                if call.run_id == run_id:
                    out.setdefault(call.stage, []).append(call)
        return out


def _wrap(recorder: Recorder, stage: str, method: Any) -> Any:
    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        start = time.time()
        try:
            return await method(*args, **kwargs)
        finally:
            with recorder.lock:
                recorder.calls.append(Call(stage, run_id, start, time.time()))

    return timed


@contextlib.contextmanager
def installed() -> Iterator[Recorder]:
    """Probes on every target for the duration of the block."""
    recorder = Recorder()
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _ in TARGETS]
    for cls, name, stage in TARGETS:
        setattr(cls, name, _wrap(recorder, stage, cls.__dict__[name]))
    try:
        yield recorder
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
