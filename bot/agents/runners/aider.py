"""The ``aider`` runner: ``aider --message-file`` (one request, then exit).

Aider prints plain text, not JSON: lines are ``log`` events except the ones it formats
predictably — ``Applied edit to <file>`` (a ``tool`` event), ``Tokens: … Cost: $x message, $y
session.`` (a ``cost`` event) and error lines. Success is the exit code. aider is not in the
default agent image (``BOSUN_AGENT_CLIS`` must include ``aider``)."""

from __future__ import annotations

import re

from bot.agents.runners import jsonl
from bot.agents.runners.base import (
    GATEWAY_KEY,
    PROMPT_PATH,
    Capabilities,
    Invocation,
    Runner,
    RunnerEvent,
    RunnerOutcome,
)
from bot.profiles import ProfileConfig

_TOKENS = re.compile(
    r"Tokens: ([\d.]+)(k?) sent(?:, [\d.]+k? cache \w+)*, ([\d.]+)(k?) received\."
    r"(?: Cost: \$([\d.]+) message, \$([\d.]+) session\.)?"
)
_APPLIED = re.compile(r"^Applied edit to (.+)$")
_ERROR = re.compile(r"(error|exception|traceback)", re.IGNORECASE)


def _count(number: str, kilo: str) -> int:
    return int(float(number) * (1000 if kilo else 1))


class AiderRunner(Runner):
    name = "aider"
    capabilities = Capabilities(
        streaming=True, cost_reporting=True, session_resume=False, tool_allowlist=False
    )

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        argv = [
            "aider",
            "--message-file",
            prompt_path,
            "--yes-always",
            "--no-auto-commits",
            "--no-dirty-commits",
            "--no-check-update",
            "--no-analytics",
            "--no-pretty",
            "--no-stream",
            "--no-fancy-input",
            "--no-show-model-warnings",
            "--no-gitignore",
        ]
        if profile.model:
            argv += ["--model", profile.model]
        env = {"ANTHROPIC_API_KEY": GATEWAY_KEY, "OPENAI_API_KEY": GATEWAY_KEY}
        if gateway_url:
            base = gateway_url.rstrip("/")
            env |= {
                "ANTHROPIC_BASE_URL": base,
                "ANTHROPIC_API_BASE": base,
                "OPENAI_API_BASE": f"{base}/v1",
            }
        return Invocation(argv=argv, env=env)

    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        text = line.rstrip()
        if not text.strip():
            return []
        tokens = _TOKENS.search(text)
        if tokens:
            session = tokens.group(6)
            data = {
                "usd": float(session) if session else None,
                "cumulative": True,
                "tokens_in": _count(tokens.group(1), tokens.group(2)),
                "tokens_out": _count(tokens.group(3), tokens.group(4)),
            }
            return [RunnerEvent("cost", data)]
        applied = _APPLIED.match(text)
        if applied:
            return [
                RunnerEvent("tool", {"phase": "result", "name": "edit", "input": applied.group(1)})
            ]
        if stream == "stderr" and _ERROR.search(text):
            return [RunnerEvent("error", {"message": jsonl.clip(text)})]
        return [jsonl.log(stream, text)]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        costs = [e for e in events if e.kind == "cost"]
        usd = costs[-1].data.get("usd") if costs else None
        lines = [str(e.data.get("line", "")) for e in events if e.kind == "log"]
        return RunnerOutcome(
            success=exit_code == 0,
            summary="\n".join(lines[-20:]),
            cost_usd=usd if isinstance(usd, float) else None,
            tokens_in=sum(jsonl.as_int(e.data.get("tokens_in")) for e in costs),
            tokens_out=sum(jsonl.as_int(e.data.get("tokens_out")) for e in costs),
        )
