"""The ``script`` runner: a command from config (codemod, formatter, dependency bump, or a
deterministic test agent). Each output line becomes a ``log`` event; exit 0 is success."""

from __future__ import annotations

from bot.agents.runners.base import (
    PROMPT_PATH,
    Capabilities,
    Invocation,
    Runner,
    RunnerEvent,
    RunnerOutcome,
)
from bot.errors import ConfigError
from bot.profiles import ProfileConfig


class ScriptRunner(Runner):
    name = "script"
    capabilities = Capabilities(
        streaming=True, cost_reporting=False, session_resume=False, tool_allowlist=False
    )

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        if not profile.command:
            raise ConfigError("a `script` profile needs `command` (an argv list)")
        return Invocation(argv=list(profile.command), env={"BOSUN_PROMPT_FILE": prompt_path})

    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        return [RunnerEvent("log", {"stream": stream, "line": line})]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        lines = [
            e.data["line"] for e in events if e.kind == "log" and e.data.get("stream") == "stdout"
        ]
        return RunnerOutcome(success=exit_code == 0, summary="\n".join(lines[-20:]))
