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

GATEWAY_KEY = "bosun-gateway"
"""The dummy API key agents hold; the model gateway swaps in the real one (SPEC §5.3)."""

LAUNCHER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    'case $1 in "~/"*) f="$HOME/${1#"~/"}" ;; *) f=$1 ;; esac; '
    'mkdir -p "${f%/*}" && printf %s "$2" >"$f" || exit 125; shift 2; n=$((n - 1)); done; '
    'in=$1; shift; if [ -n "$in" ]; then exec "$@" <"$in"; fi; exec "$@" </dev/null'
)
"""Fixed ``sh -c`` script run by ``Invocation.command()``: writes the invocation's files, then
execs the agent with its prompt on stdin. Every value arrives as a positional argument, never
inside the script text."""


@dataclass(frozen=True)
class Capabilities:
    streaming: bool
    cost_reporting: bool
    session_resume: bool
    tool_allowlist: bool


@dataclass(frozen=True)
class Invocation:
    """How to start a runner in the sandbox.

    ``files``: path → content to write before the agent starts (config a CLI needs; ``~/``
    means the sandbox's home, a tmpfs, since the root filesystem is read-only). ``stdin``: a
    path inside the sandbox fed to the agent's standard input (the prompt, so it never sits in
    argv). Run ``command()``, not ``argv``, whenever either is set."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None

    def command(self) -> list[str]:
        """The argv to exec: ``argv`` itself, or ``/bin/sh -c LAUNCHER`` with the files, the
        stdin path and ``argv`` as positional arguments."""
        if not self.files and self.stdin is None:
            return list(self.argv)
        pairs = [part for path, content in self.files.items() for part in (path, content)]
        return [
            "/bin/sh",
            "-c",
            LAUNCHER,
            "bosun-launch",
            str(len(self.files)),
            *pairs,
            self.stdin or "",
            *self.argv,
        ]


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
    session_dirs: tuple[str, ...] = ()
    """Where the runner keeps its sessions, relative to the sandbox's home: what ``/resume``
    carries to the next run's sandbox when ``capabilities.session_resume`` is set."""

    @abc.abstractmethod
    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        """argv, non-secret environment and config files for the sandbox. ``session_id``
        resumes an earlier session where the runner can; ``gateway_url`` is the model gateway's
        forwarder inside the sandbox (``http://127.0.0.1:PORT``), ``None`` for no model access."""

    @abc.abstractmethod
    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        """Events for one line of output (``stream`` is ``stdout`` or ``stderr``)."""

    @abc.abstractmethod
    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        """Success, cost and session id once the process has ended."""
