"""The ``gemini`` runner: Gemini CLI in headless mode, ``--output-format stream-json``.

Parsing follows Gemini CLI 0.61's stream-json events as captured against the Gemini API stub
(tests/fixtures/runners/gemini): ``init`` (session id), ``message`` (the prompt echoed as
``role: user``; the model's text as ``role: assistant`` pieces with ``delta: true``, joined
here into one message), ``tool_use`` / ``tool_result`` (``status``, ``output``, an ``error``
object), ``error`` (``severity`` warning or error) and ``result`` (``status``, ``stats``).

The gateway URL goes in ``GOOGLE_GEMINI_BASE_URL``. That variable alone selects the CLI's
``gateway`` auth type, which 0.61's own check then refuses ("Invalid auth method selected"), so
``~/.gemini/settings.json`` selects API-key auth (the key is the gateway's placeholder) and
turns off usage statistics and updates. Tokens are reported, dollars are not (the gateway
meters them)."""

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

    def __init__(self) -> None:
        self._text: list[str] = []
        """The model's streamed text so far (``delta`` messages), until something else comes."""

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        # Headless: the prompt arrives on stdin (-p "" appends stdin to an empty prompt).
        argv = ["gemini", "--output-format", "stream-json", "-p", ""]
        if profile.model:
            argv += ["--model", profile.model]
        if profile.allowed_tools is not None:
            # --allowed-tools only spares those tools a confirmation; headless, every other
            # tool that would ask is denied (yolo would run them all).
            argv += ["--approval-mode", "default"]
            argv += ["--allowed-tools", ",".join(profile.allowed_tools)]
        else:
            argv += ["--approval-mode", "yolo"]
        env = {
            "GEMINI_API_KEY": GATEWAY_KEY,
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "GEMINI_CLI_TRUST_WORKSPACE": "true",  # else yolo falls back to asking (denied)
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
        if kind == "message" and obj.get("role") == "assistant":
            content = obj.get("content")
            self._text.append(content if isinstance(content, str) else "")
            return [] if obj.get("delta") else self._flush()
        return self._flush() + self._event(stream, line, kind, obj)

    def _flush(self) -> list[RunnerEvent]:
        """The streamed text so far as one message (none when there is none)."""
        text, self._text = "".join(self._text), []
        return [RunnerEvent("message", {"text": jsonl.clip(text)})] if text.strip() else []

    def _event(self, stream: str, line: str, kind: Any, obj: dict[str, Any]) -> list[RunnerEvent]:
        if kind == "init":
            return [
                jsonl.log(stream, line, session_id=obj.get("session_id"), model=obj.get("model"))
            ]
        if kind == "tool_use":
            data = {
                "phase": "call",
                "id": obj.get("tool_id"),
                "name": obj.get("tool_name"),
                "input": jsonl.clip(obj.get("parameters"), 500),
            }
            return [RunnerEvent("tool", data)]
        if kind == "tool_result":
            failed = obj.get("status") != "success"
            error = obj.get("error")
            reason = error.get("message") if isinstance(error, dict) else error
            output = (reason if failed and reason else None) or obj.get("output") or ""
            data = {
                "phase": "result",
                "id": obj.get("tool_id"),
                "is_error": failed,
                "output": jsonl.clip(output, 1000),
            }
            return [RunnerEvent("tool", data)]
        if kind == "error":
            message = jsonl.clip(obj.get("message", ""))
            if obj.get("severity") == "warning":
                return [jsonl.log(stream, message, severity="warning")]
            return [RunnerEvent("error", {"message": message})]
        if kind == "result":
            return _result(obj)
        return [jsonl.log(stream, line, type=kind)]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        events = events + self._flush()  # text the CLI streamed after its last other line
        result = jsonl.final(events)
        data = result.data if result is not None else {}
        return RunnerOutcome(
            success=bool(data.get("success")) and exit_code == 0,
            summary=jsonl.last_message(events),
            session_id=jsonl.session_id(events),
            tokens_in=jsonl.as_int(data.get("tokens_in")),
            tokens_out=jsonl.as_int(data.get("tokens_out")),
        )


def _result(obj: dict[str, Any]) -> list[RunnerEvent]:
    """The final report: ``stats.input_tokens`` is the whole prompt (``cached`` included);
    ``output_tokens`` leaves out thinking, which ``total_tokens`` counts, so output is the
    total less the prompt."""
    stats = obj.get("stats") if isinstance(obj.get("stats"), dict) else {}
    assert isinstance(stats, dict)
    success = obj.get("status") == "success"
    prompt = jsonl.as_int(stats.get("input_tokens"))
    output = max(
        jsonl.as_int(stats.get("output_tokens")), jsonl.as_int(stats.get("total_tokens")) - prompt
    )
    events = [
        RunnerEvent(
            "cost",
            {
                "final": True,
                "success": success,
                "usd": None,
                "tokens_in": prompt,
                "tokens_cached": jsonl.as_int(stats.get("cached")),
                "tokens_out": output,
                "tool_calls": jsonl.as_int(stats.get("tool_calls")),
            },
        )
    ]
    if not success:
        error = obj.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        events.append(RunnerEvent("error", {"message": jsonl.clip(message or "failed")}))
    return events
