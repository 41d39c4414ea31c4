"""An agent phase as GenAI spans (OpenTelemetry's GenAI semantic conventions).

``invoke_agent <runner>`` is the phase; under it, ``chat <model>`` for each model call the
run's gateway metered (``gen_ai.usage.input_tokens`` / ``output_tokens``) and ``execute_tool
<name>`` for each tool call the runner reported in its output (from its ``call`` line to its
``result`` line). Only names, ids, counts and outcomes are recorded: never a message, a tool's
arguments or its output.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bot.tracing import spans

if TYPE_CHECKING:
    from opentelemetry.trace import Span

GENERATION_ENDPOINTS = {
    "POST /v1/messages": "chat",
    "POST /v1/chat/completions": "chat",
    "POST /v1/responses": "chat",
}
"""Gateway endpoints that are model calls, and their ``gen_ai.operation.name``."""

MAX_OPEN_TOOLS = 256
"""Tool calls awaiting their result at most (an agent that never reports results cannot
grow the set without bound): the oldest is ended first."""


def agent_attributes(
    runner: str,
    *,
    phase: str,
    step: int,
    steps: int,
    model: str | None,
    provider: str | None,
) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": runner,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "bosun.phase": phase,
        "bosun.phase.step": step,
        "bosun.phase.steps": steps,
    }


class AgentTrace:
    """The spans under one ``invoke_agent`` span. Feed it the runner's tool events and the
    gateway's metered calls; ``finish`` ends the tool calls still open."""

    def __init__(self, agent: Span) -> None:
        self.agent = agent
        self._tools: dict[str, Span] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.model_calls = 0
        self.tool_calls = 0

    def model_call(
        self,
        *,
        endpoint: str,
        provider: str | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        status: int,
        duration_s: float,
    ) -> None:
        operation = GENERATION_ENDPOINTS.get(endpoint)
        if operation is None:  # counting tokens, listing models: not a model call
            return
        self.model_calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        ended = time.time_ns()
        call = spans.start(
            f"{operation} {model}" if model else operation,
            {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.usage.cache_read.input_tokens": cache_read_tokens or None,
                "gen_ai.usage.cache_creation.input_tokens": cache_write_tokens or None,
                "http.response.status_code": status,
            },
            kind="client",
            parent=self.agent,
            start_ns=ended - max(0, int(duration_s * 1e9)),
        )
        if call is None:
            return
        if status >= 400:
            spans.failed(call, str(status))
        call.end(end_time=ended)

    def tool(self, data: Mapping[str, Any]) -> None:
        """A runner's ``tool`` event: ``phase`` ``call`` opens a span, ``result`` ends the
        call with the same id (or is a span of its own when the call was not seen)."""
        phase = data.get("phase")
        call_id = data.get("id")
        key = str(call_id) if call_id is not None else None
        if phase == "call":
            self.tool_calls += 1
            opened = self._open(data.get("name"), key)
            if opened is not None and key is not None:
                if key in self._tools:
                    self._tools.pop(key).end()
                elif len(self._tools) >= MAX_OPEN_TOOLS:
                    self._tools.pop(next(iter(self._tools))).end()
                self._tools[key] = opened
            elif opened is not None:
                opened.end()
            return
        if phase != "result":
            return
        opened = self._tools.pop(key, None) if key is not None else None
        if opened is None:
            self.tool_calls += 1
            opened = self._open(data.get("name"), key)
            if opened is None:
                return
        if data.get("is_error"):
            spans.failed(opened, "tool_error")
        opened.end()

    def _open(self, name: Any, call_id: str | None) -> Span | None:
        tool = str(name) if name else "tool"
        return spans.start(
            f"execute_tool {tool}",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "gen_ai.tool.call.id": call_id,
            },
            parent=self.agent,
        )

    def finish(self, *, exit_code: int | None, session_id: str | None) -> None:
        for opened in self._tools.values():
            opened.end()
        self._tools.clear()
        spans.set_attributes(
            self.agent,
            {
                "gen_ai.conversation.id": session_id,
                "gen_ai.usage.input_tokens": self.input_tokens,
                "gen_ai.usage.output_tokens": self.output_tokens,
                "bosun.agent.model_calls": self.model_calls,
                "bosun.agent.tool_calls": self.tool_calls,
                "process.exit.code": exit_code,
            },
        )
