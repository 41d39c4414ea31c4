"""Runner adapters (SPEC §5.2): one interface for every agent CLI and for plain scripts."""

from __future__ import annotations

from bot.runners.base import Capabilities, Invocation, Runner, RunnerEvent, RunnerOutcome
from bot.runners.script import ScriptRunner

RUNNERS: dict[str, type[Runner]] = {"script": ScriptRunner}


def get_runner(name: str) -> Runner:
    """The adapter for ``name``; raises ``KeyError`` naming the known ones."""
    try:
        return RUNNERS[name]()
    except KeyError:
        known = ", ".join(sorted(RUNNERS))
        raise KeyError(f"unknown runner {name!r}; known runners: {known}") from None


__all__ = [
    "RUNNERS",
    "Capabilities",
    "Invocation",
    "Runner",
    "RunnerEvent",
    "RunnerOutcome",
    "ScriptRunner",
    "get_runner",
]
