"""The ``gemini`` runner: Gemini CLI in headless mode, ``--output-format stream-json``.

Best effort: argv and parsing follow Gemini CLI 0.61's stream-json events (``init``,
``message``, ``tool_use``, ``tool_result``, ``error``, ``result``) read from its source; no
Gemini API stub exists yet, so there are no captured fixtures. The gateway URL goes in
``GOOGLE_GEMINI_BASE_URL``. Tokens are reported, dollars are not."""

from __future__ import annotations

import json
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

SETTINGS_PATH = "~/.gemini/settings.json"
SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
}


class GeminiRunner(Runner):
    name = "gemini"
    capabilities = Capabilities(
        streaming=True, cost_reporting=False, session_resume=False, tool_allowlist=True
    )

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        # Headless: the prompt arrives on stdin (-p "" appends stdin to an empty prompt).
        argv = ["gemini", "--output-format", "stream-json", "--approval-mode", "yolo", "-p", ""]
        if profile.model:
            argv += ["--model", profile.model]
        if profile.allowed_tools is not None:
            argv += ["--allowed-tools", ",".join(profile.allowed_tools)]
        env = {
            "GEMINI_API_KEY": GATEWAY_KEY,
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "NO_COLOR": "1",
        }
        if gateway_url:
            env["GOOGLE_GEMINI_BASE_URL"] = gateway_url
        files = {SETTINGS_PATH: json.dumps(SETTINGS, separators=(",", ":"))}
        return Invocation(argv=argv, env=env, files=files, stdin=prompt_path)

    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        obj = jsonl.decode(line) if stream == "stdout" else None
        if obj is None:
            return [jsonl.log(stream, line)] if line.strip() else []
        kind = obj.get("type")
        if kind == "init":
            return [
                jsonl.log(stream, line, session_id=obj.get("session_id"), model=obj.get("model"))
            ]
        if kind == "message" and obj.get("role") == "assistant":
            return [RunnerEvent("message", {"text": jsonl.clip(obj.get("content", ""))})]
        if kind == "tool_use":
            data = {
                "phase": "call",
                "id": obj.get("tool_id"),
                "name": obj.get("tool_name"),
                "input": jsonl.clip(obj.get("parameters"), 500),
            }
            return [RunnerEvent("tool", data)]
        if kind == "tool_result":
            data = {
                "phase": "result",
                "id": obj.get("tool_id"),
                "is_error": obj.get("status") != "success",
                "output": jsonl.clip(obj.get("output") or obj.get("error") or "", 1000),
            }
            return [RunnerEvent("tool", data)]
        if kind == "error":
            return [RunnerEvent("error", {"message": jsonl.clip(obj.get("message", ""))})]
        if kind == "result":
            stats = obj.get("stats") if isinstance(obj.get("stats"), dict) else {}
            assert isinstance(stats, dict)
            success = obj.get("status") == "success"
            events = [
                RunnerEvent(
                    "cost",
                    {
                        "final": True,
                        "success": success,
                        "usd": None,
                        "tokens_in": jsonl.as_int(stats.get("input_tokens")),
                        "tokens_out": jsonl.as_int(stats.get("output_tokens")),
                    },
                )
            ]
            if not success:
                error = obj.get("error")
                message = error.get("message") if isinstance(error, dict) else error
                events.append(RunnerEvent("error", {"message": jsonl.clip(message or "failed")}))
            return events
        return [jsonl.log(stream, line, type=kind)]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        result = jsonl.final(events)
        data = result.data if result is not None else {}
        return RunnerOutcome(
            success=bool(data.get("success")) and exit_code == 0,
            summary=jsonl.last_message(events),
            session_id=jsonl.session_id(events),
            tokens_in=jsonl.as_int(data.get("tokens_in")),
            tokens_out=jsonl.as_int(data.get("tokens_out")),
        )
