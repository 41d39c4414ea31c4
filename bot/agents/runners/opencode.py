"""The ``opencode`` runner: ``opencode run --format json``, the prompt on stdin.

Parsing follows OpenCode 1.18's JSON lines as captured against the model stubs
(tests/fixtures/runners/opencode): ``step_start``, ``text`` (a whole text part), ``tool_use``
(the finished call, ``state.status`` ``completed`` or ``error``), ``step_finish`` (``tokens``:
uncached ``input``, ``output`` without ``reasoning``, ``cache.read``/``cache.write``; ``cost``
in dollars) and ``error`` (``error.name``, ``error.data.message``), each with a ``sessionID``.
OpenCode prints the run's last ``step_finish`` twice (the same part id): it is counted once.
The configuration (gateway base URL, dummy key, every tool allowed, no
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

    def __init__(self) -> None:
        self._steps: set[str] = set()
        """``step_finish`` part ids already counted."""

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
            step = part.get("id")
            if isinstance(step, str) and step in self._steps:  # printed again at the end
                return [jsonl.log(stream, line, type=kind, repeated=True, session_id=session)]
            if isinstance(step, str):
                self._steps.add(step)
            return [RunnerEvent("cost", _step_cost(part) | {"session_id": session})]
        if kind == "error":
            return [
                RunnerEvent(
                    "error", {"message": _error(obj.get("error"), obj), "session_id": session}
                )
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


def _step_cost(part: dict[str, Any]) -> dict[str, Any]:
    """One step's dollars and tokens: input counts the cached tokens too, output the reasoning
    (OpenCode reports both apart)."""
    tokens = part.get("tokens") if isinstance(part.get("tokens"), dict) else {}
    assert isinstance(tokens, dict)
    cache = tokens.get("cache") if isinstance(tokens.get("cache"), dict) else {}
    assert isinstance(cache, dict)
    cost = part.get("cost")
    cached = jsonl.as_int(cache.get("read")) + jsonl.as_int(cache.get("write"))
    return {
        "usd": float(cost) if isinstance(cost, int | float) else None,
        "tokens_in": jsonl.as_int(tokens.get("input")) + cached,
        "tokens_cached": cached,
        "tokens_out": jsonl.as_int(tokens.get("output")) + jsonl.as_int(tokens.get("reasoning")),
    }


def _error(error: Any, line: dict[str, Any]) -> str:
    """``APIError: message (HTTP 400)`` from an ``error`` line (its headers and body left out)."""
    if not isinstance(error, dict):
        return jsonl.clip(error or line)
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    assert isinstance(data, dict)
    message = data.get("message") or error.get("message") or data or error
    name, status = error.get("name"), data.get("statusCode")
    text = f"{name}: {jsonl.clip(message)}" if isinstance(name, str) else jsonl.clip(message)
    return text + (f" (HTTP {status})" if isinstance(status, int) else "")
