"""The runner interface: build argv and environment for a sandbox, turn the runner's
streaming output into events, tell success, extract cost and a session id."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.profiles import ProfileConfig

EventKind = Literal["message", "tool", "error", "cost", "log"]

PROMPT_PATH = "/bosun/prompt.md"
"""Where the prompt file is mounted (read-only) inside the sandbox."""


@dataclass(frozen=True)
class Capabilities:
    streaming: bool
    cost_reporting: bool
    session_resume: bool
    tool_allowlist: bool


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunnerEvent:
    kind: EventKind
    data: dict[str, Any]


@dataclass
class RunnerOutcome:
    success: bool
    summary: str = ""
    session_id: str | None = None
    cost_usd: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0


class Runner(abc.ABC):
    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
    ) -> Invocation:
        """argv and non-secret environment for the sandbox."""

    @abc.abstractmethod
    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        """Events for one line of output (``stream`` is ``stdout`` or ``stderr``)."""

    @abc.abstractmethod
    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        """Success, cost and session id once the process has ended."""
