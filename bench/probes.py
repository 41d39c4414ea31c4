"""Wall-clock probes around the worker's steps, installed from outside.

The run records the parts of its prepare step itself (``timings`` in its manifest and prepare
event: docker info, token, mirror fetch, checkout, sandbox); these probes place that step and
the rest (state moves, exec open) on the host clock by wrapping the methods that do the work,
for the duration of a benchmark only. Each call is recorded with the ``run_id`` that
``execute_run`` binds in structlog's context.
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

from jobs.run.event_log import EventWriter
from jobs.run.pipeline import RunExecution
from jobs.run.reporter import StatusReporter
from sandboxes.docker import DockerBackend

# (class, method, stage name)
TARGETS: list[tuple[type[Any], str, str]] = [
    (RunExecution, "_prepare", "prepare"),
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


def _owner(cls: type[Any], name: str) -> type[Any]:
    """The class in ``cls``'s hierarchy that defines ``name`` (a step may move to a base class
    when the pipeline is split), or a clear error naming the probe to update."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    raise LookupError(
        f"bench/probes.py: {cls.__name__}.{name} no longer exists; point the probe at the "
        "method that now does this step"
    )


@contextlib.contextmanager
def installed() -> Iterator[Recorder]:
    """Probes on every target for the duration of the block."""
    recorder = Recorder()
    owners = [(_owner(cls, name), name, stage) for cls, name, stage in TARGETS]
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _ in owners]
    for cls, name, stage in owners:
        setattr(cls, name, _wrap(recorder, stage, cls.__dict__[name]))
    try:
        yield recorder
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
