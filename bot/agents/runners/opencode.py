"""The ``opencode`` runner: ``opencode run --format json``.

Best effort: the event shapes (``text``, ``tool_use``, ``step_finish`` with ``tokens`` and
``cost``, ``error``, each with a ``sessionID``) follow OpenCode 1.18's JSON output; there are no
captured fixtures yet. The configuration (gateway base URL, dummy key, every tool allowed, no
updates or sharing) is passed inline in ``OPENCODE_CONFIG_CONTENT``, so no file is written.
``model`` must be ``provider/model`` (``anthropic/claude-sonnet-4-5``)."""

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


def config(gateway_url: str | None) -> dict[str, Any]:
    """OpenCode's configuration for a sandboxed run."""
    cfg: dict[str, Any] = {
        "autoupdate": False,
        "share": "disabled",
        "permission": {"edit": "allow", "bash": "allow", "webfetch": "deny"},
    }
    if gateway_url:
        base = gateway_url.rstrip("/")
        # The gateway's per-upstream prefixes: OpenCode may talk to either provider.
        cfg["provider"] = {
            "anthropic": {"options": {"baseURL": f"{base}/anthropic/v1", "apiKey": GATEWAY_KEY}},
            "openai": {"options": {"baseURL": f"{base}/openai/v1", "apiKey": GATEWAY_KEY}},
        }
    return cfg


class OpenCodeRunner(Runner):
    name = "opencode"
    capabilities = Capabilities(
        streaming=True, cost_reporting=True, session_resume=True, tool_allowlist=False
    )

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        argv = ["opencode", "run", "--format", "json"]
        if profile.model:
            argv += ["--model", profile.model]
        if session_id:
            argv += ["--session", session_id]
        env = {
            "OPENCODE_CONFIG_CONTENT": json.dumps(config(gateway_url), separators=(",", ":")),
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        }
        return Invocation(argv=argv, env=env, stdin=prompt_path)

    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        obj = jsonl.decode(line) if stream == "stdout" else None
        if obj is None:
            return [jsonl.log(stream, line)] if line.strip() else []
        kind = obj.get("type")
        part = obj.get("part") if isinstance(obj.get("part"), dict) else {}
        assert isinstance(part, dict)
        session = obj.get("sessionID") or part.get("sessionID")
        if kind == "text":
            return [
                RunnerEvent(
                    "message", {"text": jsonl.clip(part.get("text", "")), "session_id": session}
                )
            ]
        if kind == "tool_use":
            state = part.get("state") if isinstance(part.get("state"), dict) else {}
            assert isinstance(state, dict)
            data = {
                "phase": "result",
                "id": part.get("callID"),
                "name": part.get("tool"),
                "input": jsonl.clip(state.get("input"), 500),
                "output": jsonl.clip(state.get("output") or state.get("error") or "", 1000),
                "is_error": state.get("status") == "error",
                "session_id": session,
            }
            return [RunnerEvent("tool", data)]
        if kind == "step_finish":
            tokens = part.get("tokens") if isinstance(part.get("tokens"), dict) else {}
            assert isinstance(tokens, dict)
            cost = part.get("cost")
            data = {
                "usd": float(cost) if isinstance(cost, int | float) else None,
                "tokens_in": jsonl.as_int(tokens.get("input")),
                "tokens_out": jsonl.as_int(tokens.get("output")),
                "session_id": session,
            }
            return [RunnerEvent("cost", data)]
        if kind == "error":
            error = obj.get("error")
            message = error.get("data", error) if isinstance(error, dict) else error
            return [
                RunnerEvent("error", {"message": jsonl.clip(message or obj), "session_id": session})
            ]
        return [jsonl.log(stream, line, type=kind, session_id=session)]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        steps = [e for e in events if e.kind == "cost"]
        costs = [e.data["usd"] for e in steps if isinstance(e.data.get("usd"), float)]
        errors = any(e.kind == "error" for e in events)
        return RunnerOutcome(
            success=exit_code == 0 and not errors,
            summary=jsonl.last_message(events),
            session_id=jsonl.session_id(events),
            cost_usd=sum(costs) if costs else None,
            tokens_in=sum(jsonl.as_int(e.data.get("tokens_in")) for e in steps),
            tokens_out=sum(jsonl.as_int(e.data.get("tokens_out")) for e in steps),
        )
