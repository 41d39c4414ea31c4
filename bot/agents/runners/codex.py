"""The ``codex`` runner: ``codex exec --json``.

The prompt goes in on stdin (``-``). The model gateway is a ``model_provider`` given with ``-c``
overrides (no config file needed: ``$CODEX_HOME`` is ``~/.codex`` on the home tmpfs). Codex's own
sandbox is off (``--dangerously-bypass-approvals-and-sandbox``): it needs user namespaces, which
the container's seccomp profile and dropped capabilities refuse, and the container is the
boundary anyway. Codex reports tokens per turn but no dollars."""

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

PROVIDER = "bosun"


def provider_overrides(gateway_url: str) -> list[str]:
    """``-c`` arguments that point Codex at the gateway (Responses API, dummy key)."""
    base = gateway_url.rstrip("/") + "/v1"
    settings = {
        "model_provider": f'"{PROVIDER}"',
        f"model_providers.{PROVIDER}.name": '"Bosun model gateway"',
        f"model_providers.{PROVIDER}.base_url": f'"{base}"',
        f"model_providers.{PROVIDER}.wire_api": '"responses"',
        f"model_providers.{PROVIDER}.env_key": '"OPENAI_API_KEY"',
    }
    return [part for key, value in settings.items() for part in ("-c", f"{key}={value}")]


class CodexRunner(Runner):
    name = "codex"
    capabilities = Capabilities(
        streaming=True, cost_reporting=False, session_resume=True, tool_allowlist=False
    )
    session_dirs = (".codex/sessions",)

    def invocation(
        self,
        profile: ProfileConfig,
        *,
        prompt_path: str = PROMPT_PATH,
        session_id: str | None = None,
        gateway_url: str | None = None,
    ) -> Invocation:
        argv = [
            "codex",
            "exec",
            "--json",
            "--color",
            "never",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "-c",
            "check_for_update_on_startup=false",
        ]
        if gateway_url:
            argv += provider_overrides(gateway_url)
        if profile.model:
            argv += ["--model", profile.model]
        if session_id:
            argv += ["resume", session_id]
        argv.append("-")  # the prompt, from stdin
        # CODEX_HOME stays unset: its default, ~/.codex, is on the home tmpfs.
        env = {"OPENAI_API_KEY": GATEWAY_KEY, "NO_COLOR": "1"}
        return Invocation(argv=argv, env=env, stdin=prompt_path)

    def parse_line(self, stream: str, line: str) -> list[RunnerEvent]:
        obj = jsonl.decode(line) if stream == "stdout" else None
        if obj is None:
            return [jsonl.log(stream, line)] if line.strip() else []
        kind = obj.get("type")
        if kind == "thread.started":
            thread = obj.get("thread_id")
            return [jsonl.log(stream, f"thread {thread} started", session_id=thread)]
        if kind in ("item.started", "item.completed") and isinstance(obj.get("item"), dict):
            return _item(kind, obj["item"]) or [jsonl.log(stream, line, type=kind)]
        if kind == "turn.completed":
            usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
            assert isinstance(usage, dict)
            return [
                RunnerEvent(
                    "cost",
                    {
                        "turn": "completed",
                        "usd": None,
                        "tokens_in": jsonl.as_int(usage.get("input_tokens")),
                        "tokens_cached": jsonl.as_int(usage.get("cached_input_tokens")),
                        "tokens_out": jsonl.as_int(usage.get("output_tokens")),
                    },
                )
            ]
        if kind == "turn.failed":
            error = obj.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            return [RunnerEvent("error", {"turn": "failed", "message": jsonl.clip(message)})]
        if kind == "error":
            return [RunnerEvent("error", {"message": jsonl.clip(obj.get("message") or obj)})]
        return [jsonl.log(stream, line, type=kind)]

    def outcome(self, exit_code: int | None, events: list[RunnerEvent]) -> RunnerOutcome:
        turns = [e for e in events if e.data.get("turn") in ("completed", "failed")]
        completed = [e for e in turns if e.data["turn"] == "completed"]
        success = exit_code == 0 and bool(turns) and turns[-1].data["turn"] == "completed"
        summary = jsonl.last_message(events)
        if not success:
            errors = [e.data.get("message", "") for e in events if e.kind == "error"]
            summary = summary or (errors[-1] if errors else f"codex exited with {exit_code}")
        return RunnerOutcome(
            success=success,
            summary=str(summary),
            session_id=jsonl.session_id(events),
            cost_usd=None,
            tokens_in=sum(jsonl.as_int(e.data.get("tokens_in")) for e in completed),
            tokens_out=sum(jsonl.as_int(e.data.get("tokens_out")) for e in completed),
        )


def _item(kind: str, item: dict[str, Any]) -> list[RunnerEvent]:
    itype = item.get("type")
    started = kind == "item.started"
    if itype == "agent_message" and not started:
        return [RunnerEvent("message", {"text": jsonl.clip(item.get("text", ""))})]
    if itype == "command_execution":
        if started:
            return [_tool("call", item, "shell", input=jsonl.clip(item.get("command"), 500))]
        code = item.get("exit_code")
        return [
            _tool(
                "result",
                item,
                "shell",
                output=jsonl.clip(item.get("aggregated_output", ""), 1000),
                exit_code=code,
                is_error=item.get("status") == "failed" or (isinstance(code, int) and code != 0),
            )
        ]
    if itype == "file_change" and not started:
        changes = item.get("changes")
        listed = changes if isinstance(changes, list) else []
        paths = [f"{c.get('kind')} {c.get('path')}" for c in listed if isinstance(c, dict)]
        return [
            _tool(
                "result",
                item,
                "file_change",
                input=jsonl.clip("; ".join(paths), 500),
                is_error=item.get("status") == "failed",
            )
        ]
    if itype == "mcp_tool_call":
        name = f"{item.get('server')}.{item.get('tool')}"
        if started:
            return [_tool("call", item, name, input=jsonl.clip(item.get("arguments"), 500))]
        return [
            _tool(
                "result",
                item,
                name,
                output=jsonl.clip(item.get("result") or item.get("error"), 1000),
                is_error=item.get("status") == "failed",
            )
        ]
    if itype == "web_search" and started:
        return [_tool("call", item, "web_search", input=jsonl.clip(item.get("query", ""), 500))]
    if itype == "error" and not started:
        return [RunnerEvent("error", {"message": jsonl.clip(item.get("message", ""))})]
    return []


def _tool(phase: str, item: dict[str, Any], name: str, **data: Any) -> RunnerEvent:
    return RunnerEvent("tool", {"phase": phase, "id": item.get("id"), "name": name, **data})
