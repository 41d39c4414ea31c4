"""The ``claude-code`` runner: ``claude -p --output-format stream-json --verbose``.

The prompt goes in on stdin (no argv length limit). The final ``result`` line says whether the
run succeeded and carries the session id, ``total_cost_usd`` and token ``usage``."""

from __future__ import annotations

from typing import Any

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

QUIET_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
}
"""No updater, telemetry or error reports: the sandbox has no network but the gateway's."""


class ClaudeCodeRunner(Runner):
    name = "claude-code"
    capabilities = Capabilities(
        streaming=True, cost_reporting=True, session_resume=True, tool_allowlist=True
    )
    session_dirs = (".claude/projects",)

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        argv = ["claude", "-p", "--output-format", "stream-json", "--verbose"]
        if profile.allowed_tools is not None:
            # dontAsk: tools outside the allow-list are refused, never prompted for.
            argv += [
                "--permission-mode",
                "dontAsk",
                "--allowedTools",
                ",".join(profile.allowed_tools),
            ]
        else:
            # The sandbox is the boundary; inside it the agent may use every tool.
            argv += ["--permission-mode", "bypassPermissions"]
        if profile.model:
            argv += ["--model", profile.model]
        if profile.max_turns is not None:
            argv += ["--max-turns", str(profile.max_turns)]
        if profile.budget_usd is not None:
            argv += ["--max-budget-usd", f"{profile.budget_usd:g}"]
        if session_id:
            argv += ["--resume", session_id]
        env = {"ANTHROPIC_API_KEY": GATEWAY_KEY, **QUIET_ENV}
        if gateway_url:
            env["ANTHROPIC_BASE_URL"] = gateway_url
        return Invocation(argv=argv, env=env, stdin=prompt_path)

    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        obj = jsonl.decode(line) if stream == "stdout" else None
        if obj is None:
            return [jsonl.log(stream, line)] if line.strip() else []
        kind = obj.get("type")
        if kind == "assistant":
            return _assistant(obj)
        if kind == "user":
            return _user(obj)
        if kind == "result":
            return _result(obj)
        if kind == "system" and obj.get("subtype") == "init":
            model = obj.get("model")
            return [
                jsonl.log(
                    stream,
                    f"session {obj.get('session_id')} started (model {model})",
                    session_id=obj.get("session_id"),
                    model=model,
                )
            ]
        return [jsonl.log(stream, line, type=kind)]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        result = jsonl.final(events)
        session = jsonl.session_id(events)
        if result is None:
            return RunnerOutcome(
                success=False,
                summary=jsonl.last_message(events) or "claude ended without a result",
                session_id=session,
            )
        data = result.data
        return RunnerOutcome(
            success=bool(data.get("success")) and exit_code == 0,
            summary=str(data.get("summary") or jsonl.last_message(events)),
            session_id=session,
            cost_usd=data.get("usd"),
            tokens_in=jsonl.as_int(data.get("tokens_in")),
            tokens_out=jsonl.as_int(data.get("tokens_out")),
        )


def _assistant(obj: dict[str, Any]) -> list[RunnerEvent]:
    message = obj.get("message")
    blocks = message.get("content") if isinstance(message, dict) else None
    events: list[RunnerEvent] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and block.get("text"):
            events.append(RunnerEvent("message", {"text": jsonl.clip(block["text"])}))
        elif block.get("type") == "tool_use":
            events.append(
                RunnerEvent(
                    "tool",
                    {
                        "phase": "call",
                        "id": block.get("id"),
                        "name": block.get("name"),
                        "input": jsonl.clip(block.get("input"), 500),
                    },
                )
            )
    if obj.get("error"):
        events.append(RunnerEvent("error", {"message": jsonl.clip(obj["error"])}))
    return events or [jsonl.log("stdout", jsonl.clip(obj), type="assistant")]


def _user(obj: dict[str, Any]) -> list[RunnerEvent]:
    message = obj.get("message")
    blocks = message.get("content") if isinstance(message, dict) else None
    events: list[RunnerEvent] = []
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                content = "\n".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
            events.append(
                RunnerEvent(
                    "tool",
                    {
                        "phase": "result",
                        "id": block.get("tool_use_id"),
                        "is_error": bool(block.get("is_error")),
                        "output": jsonl.clip(content, 1000),
                    },
                )
            )
    return events or [jsonl.log("stdout", jsonl.clip(obj), type="user")]


def _result(obj: dict[str, Any]) -> list[RunnerEvent]:
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    tokens_in = sum(
        jsonl.as_int(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    cost = obj.get("total_cost_usd")
    success = obj.get("subtype") == "success" and not obj.get("is_error")
    events = [
        RunnerEvent(
            "cost",
            {
                "final": True,
                "success": success,
                "subtype": obj.get("subtype"),
                "usd": float(cost) if isinstance(cost, int | float) else None,
                "tokens_in": tokens_in,
                "tokens_out": jsonl.as_int(usage.get("output_tokens")),
                "num_turns": obj.get("num_turns"),
                "session_id": obj.get("session_id"),
                "summary": jsonl.clip(obj.get("result") or ""),
            },
        )
    ]
    if not success:
        errors = obj.get("errors")
        detail = "; ".join(map(str, errors)) if isinstance(errors, list) else obj.get("result")
        message = f"{obj.get('subtype') or 'error'}: {detail or 'claude failed'}"
        events.append(RunnerEvent("error", {"message": jsonl.clip(message)}))
    return events
