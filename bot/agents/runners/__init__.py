"""Runner adapters (SPEC §5.2): one interface for every agent CLI and for plain scripts."""

from __future__ import annotations

from bot.agents.runners.aider import AiderRunner
from bot.agents.runners.base import Capabilities, Invocation, Runner, RunnerEvent, RunnerOutcome
from bot.agents.runners.claude_code import ClaudeCodeRunner
from bot.agents.runners.codex import CodexRunner
from bot.agents.runners.gemini import GeminiRunner
from bot.agents.runners.opencode import OpenCodeRunner
from bot.agents.runners.script import ScriptRunner

RUNNERS: dict[str, type[Runner]] = {
    "claude-code": ClaudeCodeRunner,
    "codex": CodexRunner,
    "aider": AiderRunner,
    "opencode": OpenCodeRunner,
    "gemini": GeminiRunner,
    "script": ScriptRunner,
}


def get_runner(name: str) -> Runner:
    """The adapter for ``name``; raises ``KeyError`` naming the known ones."""
    try:
        return RUNNERS[name]()
    except KeyError:
        known = ", ".join(sorted(RUNNERS))
        raise KeyError(f"unknown runner {name!r}; known runners: {known}") from None


__all__ = [
    "RUNNERS",
    "AiderRunner",
    "Capabilities",
    "ClaudeCodeRunner",
    "CodexRunner",
    "GeminiRunner",
    "Invocation",
    "OpenCodeRunner",
    "Runner",
    "RunnerEvent",
    "RunnerOutcome",
    "ScriptRunner",
    "get_runner",
]
