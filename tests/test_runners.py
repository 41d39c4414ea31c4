"""Runner adapters: every captured line of real CLI output parses into the events a user sees
(messages, tool calls, errors, cost), outcomes come from the runner's own final report, and
invocations hold no shell strings and no secrets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bot.agents.runners import RUNNERS, get_runner
from bot.agents.runners.base import GATEWAY_KEY, Invocation, RunnerEvent
from bot.profiles import ProfileConfig

FIXTURES = Path(__file__).parent / "fixtures" / "runners"
GATEWAY = "http://127.0.0.1:8788"


def parse(runner_name: str, name: str) -> list[RunnerEvent]:
    runner = get_runner(runner_name)
    events: list[RunnerEvent] = []
    for line in (FIXTURES / runner_name / name).read_text().splitlines():
        events.extend(runner.parse_line("stdout", line))
    return events


def exit_code(runner_name: str, scenario: str) -> int:
    captured = json.loads((FIXTURES / runner_name / "captured.json").read_text())
    return int(captured[scenario]["exit_code"])


def first(runner_name: str, name: str, key: str) -> object:
    """``key`` of the fixture's first line (the session id the CLI announced)."""
    line = (FIXTURES / runner_name / name).read_text().splitlines()[0]
    return json.loads(line)[key]


def of(events: list[RunnerEvent], kind: str) -> list[dict[str, object]]:
    return [e.data for e in events if e.kind == kind]


@pytest.mark.parametrize(
    "path", sorted(FIXTURES.glob("*/*.jsonl")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_captured_line_is_understood(path: Path) -> None:
    runner = get_runner(path.parent.name)
    for line in path.read_text().splitlines():
        events = runner.parse_line("stdout", line)
        # A piece of streamed text (Gemini's delta messages) is held until the message ends.
        assert events or json.loads(line).get("delta"), f"line produced no event: {line[:120]}"
        kinds = {e.kind for e in events}
        if json.loads(line).get("type") in ("assistant", "user", "result", "item.completed"):
            assert kinds != {"log"}, f"a meaningful line fell through to log: {line[:160]}"


def test_claude_edit_run_yields_messages_tools_cost_and_session() -> None:
    events = parse("claude-code", "edit_file.jsonl")
    messages = [m["text"] for m in of(events, "message")]
    assert messages == [
        "I'll create the file.",
        "Created hello.txt and changed the greeting to 'hello, world'.",
    ]
    calls = [t for t in of(events, "tool") if t["phase"] == "call"]
    assert [c["name"] for c in calls] == ["Write", "Bash", "Edit"]
    assert "hello.txt" in str(calls[0]["input"])
    results = [t for t in of(events, "tool") if t["phase"] == "result"]
    assert [r["id"] for r in results] == [c["id"] for c in calls]
    assert results[1]["output"] == "hello" and not any(r["is_error"] for r in results)
    outcome = get_runner("claude-code").outcome(exit_code("claude-code", "edit_file"), events)
    assert outcome.success
    assert outcome.cost_usd == pytest.approx(0.00441)
    assert (outcome.tokens_in, outcome.tokens_out) == (720, 150)
    assert outcome.session_id == first("claude-code", "edit_file.jsonl", "session_id")
    assert outcome.summary == messages[-1]
    assert not of(events, "error")


def test_claude_max_turns_is_a_failure_with_an_error_event() -> None:
    events = parse("claude-code", "max_turns.jsonl")
    outcome = get_runner("claude-code").outcome(exit_code("claude-code", "max_turns"), events)
    assert not outcome.success
    assert outcome.cost_usd is not None and outcome.cost_usd > 0
    assert [e["message"] for e in of(events, "error")] == [
        "error_max_turns: Reached maximum number of turns (1)"
    ]


def test_claude_success_needs_the_result_line_not_only_exit_zero() -> None:
    runner = get_runner("claude-code")
    lines = (FIXTURES / "claude-code" / "edit_file.jsonl").read_text().splitlines()[:-1]
    events = [e for line in lines for e in runner.parse_line("stdout", line)]
    outcome = runner.outcome(0, events)
    assert not outcome.success
    assert outcome.session_id == first("claude-code", "edit_file.jsonl", "session_id")


def test_codex_run_yields_messages_shell_calls_and_tokens() -> None:
    events = parse("codex", "shell_edit.jsonl")
    assert [m["text"] for m in of(events, "message")] == [
        "Creating the file.",
        "Created hello.txt and changed the greeting to 'hello, world'.",
    ]
    tools = of(events, "tool")
    assert [(t["phase"], t["name"]) for t in tools] == [("call", "shell"), ("result", "shell")] * 2
    assert "hello.txt" in str(tools[0]["input"])
    assert tools[1]["output"] == "hello\n" and tools[1]["is_error"] is False
    assert tools[3]["exit_code"] == 1 and tools[3]["is_error"] is True
    outcome = get_runner("codex").outcome(exit_code("codex", "shell_edit"), events)
    assert outcome.success
    assert (outcome.tokens_in, outcome.tokens_out) == (520, 110)
    assert outcome.cost_usd is None
    assert outcome.session_id == first("codex", "shell_edit.jsonl", "thread_id")


def test_codex_api_error_fails_with_the_message() -> None:
    events = parse("codex", "api_error.jsonl")
    outcome = get_runner("codex").outcome(exit_code("codex", "api_error"), events)
    assert not outcome.success
    assert "model not allowed" in outcome.summary
    assert any("model not allowed" in str(e["message"]) for e in of(events, "error"))
    # Even with exit 0, a failed last turn is a failure.
    assert not get_runner("codex").outcome(0, events).success


def test_gemini_edit_run_yields_whole_messages_tools_tokens_and_session() -> None:
    events = parse("gemini", "edit_file.jsonl")
    messages = [m["text"] for m in of(events, "message")]
    # The model's text arrives in 16-character pieces; each message is one event.
    assert messages == [
        "I'll create the file.",
        "Created hello.txt and changed the greeting to 'hello, world'.",
    ]
    calls = [t for t in of(events, "tool") if t["phase"] == "call"]
    assert [c["name"] for c in calls] == ["write_file", "run_shell_command", "read_file", "replace"]
    assert "hello.txt" in str(calls[0]["input"]) and "hello, world" in str(calls[3]["input"])
    results = [t for t in of(events, "tool") if t["phase"] == "result"]
    assert [r["id"] for r in results] == [c["id"] for c in calls]
    assert [r["is_error"] for r in results] == [False, False, True, False]
    assert results[1]["output"] == "hello"
    assert results[2]["output"] == "File not found: /workspace/missing.txt"
    assert not of(events, "error")
    outcome = get_runner("gemini").outcome(exit_code("gemini", "edit_file"), events)
    assert outcome.success and outcome.summary == messages[-1]
    assert outcome.session_id == first("gemini", "edit_file.jsonl", "session_id")
    # Five model requests, each prompt 50 cached tokens of 250 (170 for the last), output
    # 40 (30) plus 25 thinking tokens: the CLI's output_tokens (190) leaves thinking out.
    assert (outcome.tokens_in, outcome.tokens_out) == (4 * 250 + 170, 4 * 65 + 55)
    (final,) = [c for c in of(events, "cost") if c.get("final")]
    assert final["tokens_cached"] == 250 and final["tool_calls"] == 4 and final["usd"] is None


def test_gemini_api_error_fails_with_the_message() -> None:
    events = parse("gemini", "api_error.jsonl")
    outcome = get_runner("gemini").outcome(exit_code("gemini", "api_error"), events)
    assert exit_code("gemini", "api_error") != 0 and not outcome.success
    assert any("stub: model not allowed" in str(e["message"]) for e in of(events, "error"))
    assert not get_runner("gemini").outcome(0, events).success  # status error, even on exit 0


def test_gemini_text_after_the_last_line_still_makes_the_summary() -> None:
    runner = get_runner("gemini")
    lines = (FIXTURES / "gemini" / "edit_file.jsonl").read_text().splitlines()[:-1]
    events = [e for line in lines for e in runner.parse_line("stdout", line)]
    outcome = runner.outcome(0, events)
    assert not outcome.success  # no result line
    assert outcome.summary == "Created hello.txt and changed the greeting to 'hello, world'."


def test_gemini_warnings_are_logged_not_errors() -> None:
    runner = get_runner("gemini")
    warning = '{"type":"error","severity":"warning","message":"Loop detected"}'
    (event,) = runner.parse_line("stdout", warning)
    assert event.kind == "log" and event.data["severity"] == "warning"
    error = '{"type":"error","severity":"error","message":"Maximum session turns exceeded"}'
    assert [e.kind for e in runner.parse_line("stdout", error)] == ["error"]


def test_opencode_edit_run_yields_messages_tools_cost_and_session() -> None:
    events = parse("opencode", "edit_file.jsonl")
    messages = [m["text"] for m in of(events, "message")]
    assert messages == [
        "I'll create the file.",
        "Created hello.txt and changed the greeting to 'hello, world'.",
    ]
    tools = of(events, "tool")
    assert [t["name"] for t in tools] == ["write", "bash", "read", "edit"]
    assert all(t["phase"] == "result" for t in tools)
    assert [t["is_error"] for t in tools] == [False, False, True, False]
    assert tools[1]["output"] == "hello\n" and "cat hello.txt" in str(tools[1]["input"])
    assert tools[2]["output"] == "File not found: /workspace/missing.txt"
    assert not of(events, "error")
    # The last step_finish is printed twice; it is counted once: four tool steps and the
    # final answer, at the stub's usage and Claude Sonnet 4.5's prices.
    steps = of(events, "cost")
    assert len(steps) == 5
    outcome = get_runner("opencode").outcome(exit_code("opencode", "edit_file"), events)
    assert outcome.success and outcome.summary == messages[-1]
    assert (outcome.tokens_in, outcome.tokens_out) == (4 * 200 + 120, 4 * 40 + 30)
    assert outcome.cost_usd == pytest.approx(4 * 0.0012 + 0.00081)
    lines = (FIXTURES / "opencode" / "edit_file.jsonl").read_text().splitlines()
    assert outcome.session_id == json.loads(lines[0])["sessionID"]


def test_opencode_api_error_fails_with_the_message() -> None:
    events = parse("opencode", "api_error.jsonl")
    (error,) = of(events, "error")
    assert error["message"] == "APIError: stub: model not allowed (HTTP 400)"
    outcome = get_runner("opencode").outcome(exit_code("opencode", "api_error"), events)
    assert not outcome.success and exit_code("opencode", "api_error") == 1
    assert not get_runner("opencode").outcome(0, events).success  # the error, even on exit 0


@pytest.mark.parametrize("name", sorted(RUNNERS))
@pytest.mark.parametrize(
    "line", ["", "not json", "{broken", "[1, 2]", '{"type": 5}', '{"type": "result", "usage": 3}']
)
def test_malformed_output_becomes_log_events_never_exceptions(name: str, line: str) -> None:
    runner = get_runner(name)
    for stream in ("stdout", "stderr"):
        events = runner.parse_line(stream, line)
        assert all(e.kind in ("log", "cost", "error", "message", "tool") for e in events)
    outcome = runner.outcome(None, runner.parse_line("stdout", line))
    assert outcome.success is False


def test_capabilities_are_declared_per_runner() -> None:
    caps = {name: get_runner(name).capabilities for name in RUNNERS}
    assert caps["claude-code"].cost_reporting and caps["claude-code"].session_resume
    assert caps["claude-code"].tool_allowlist
    assert caps["codex"].session_resume and not caps["codex"].cost_reporting
    assert not caps["script"].cost_reporting and not caps["aider"].session_resume
    assert all(c.streaming for c in caps.values())


PROFILES = {
    "claude-code": ProfileConfig(runner="claude-code", model="claude-sonnet-4-5", max_turns=7),
    "codex": ProfileConfig(runner="codex", model="gpt-5-codex"),
    "aider": ProfileConfig(runner="aider", model="anthropic/claude-sonnet-4-5"),
    "opencode": ProfileConfig(runner="opencode", model="anthropic/claude-sonnet-4-5"),
    "gemini": ProfileConfig(runner="gemini", model="gemini-2.5-pro"),
    "script": ProfileConfig(runner="script", command=["python3", "codemod.py"]),
}


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_invocations_hold_no_secrets_and_no_shell_strings(name: str) -> None:
    invocation = get_runner(name).invocation(PROFILES[name], gateway_url=GATEWAY)
    keys = {k: v for k, v in invocation.env.items() if k.endswith(("_KEY", "_TOKEN"))}
    assert all(v == GATEWAY_KEY for v in keys.values()), keys
    assert invocation.argv[0] not in ("sh", "bash", "/bin/sh")
    if name != "script":
        assert GATEWAY in json.dumps(invocation.env) + " ".join(invocation.argv)
        assert "/bosun/prompt.md" in [invocation.stdin, *invocation.argv]


def test_claude_invocation_flags() -> None:
    runner = get_runner("claude-code")
    profile = ProfileConfig(
        runner="claude-code", model="m", max_turns=7, budget_usd=2.5, allowed_tools=["Read", "Edit"]
    )
    inv = runner.invocation(profile, session_id="abc", gateway_url=GATEWAY)
    argv = inv.argv
    assert argv[:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert argv[argv.index("--permission-mode") + 1] == "dontAsk"
    assert argv[argv.index("--allowedTools") + 1] == "Read,Edit"
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert argv[argv.index("--max-budget-usd") + 1] == "2.5"
    assert argv[argv.index("--resume") + 1] == "abc"
    assert inv.env["ANTHROPIC_BASE_URL"] == GATEWAY and inv.stdin == "/bosun/prompt.md"
    plain = runner.invocation(ProfileConfig(runner="claude-code"))
    assert plain.argv[plain.argv.index("--permission-mode") + 1] == "bypassPermissions"
    assert "ANTHROPIC_BASE_URL" not in plain.env


def test_codex_invocation_points_the_provider_at_the_gateway_and_resumes() -> None:
    inv = get_runner("codex").invocation(PROFILES["codex"], session_id="t-1", gateway_url=GATEWAY)
    assert 'model_providers.bosun.base_url="http://127.0.0.1:8788/v1"' in inv.argv
    assert 'model_providers.bosun.wire_api="responses"' in inv.argv
    assert inv.argv[-3:] == ["resume", "t-1", "-"]
    assert inv.env["OPENAI_API_KEY"] == GATEWAY_KEY


def test_gemini_invocation_selects_api_key_auth_and_enforces_the_tool_list() -> None:
    runner = get_runner("gemini")
    inv = runner.invocation(PROFILES["gemini"], gateway_url=GATEWAY)
    assert inv.env["GOOGLE_GEMINI_BASE_URL"] == GATEWAY and inv.env["GEMINI_API_KEY"] == GATEWAY_KEY
    settings = json.loads(inv.files["~/.gemini/settings.json"])
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert inv.argv[inv.argv.index("--approval-mode") + 1] == "yolo"
    limited = ProfileConfig(runner="gemini", allowed_tools=["read_file", "replace"])
    argv = runner.invocation(limited).argv
    assert argv[argv.index("--approval-mode") + 1] == "default"  # others are denied headless
    assert argv[argv.index("--allowed-tools") + 1] == "read_file,replace"
    assert "GOOGLE_GEMINI_BASE_URL" not in runner.invocation(limited).env


def test_launcher_writes_files_and_feeds_stdin(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text('it\'s a "quoted" $PROMPT `x`\n')
    target = tmp_path / "conf" / "config.toml"
    inv = Invocation(
        argv=["sh", "-c", 'cat; cat "$HOME/.x/y.txt"; cat "$0"', str(target)],
        files={str(target): 'base_url = "$(reboot)"\n', "~/.x/y.txt": "home file\n"},
        stdin=str(prompt),
    )
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run(
        inv.command(), capture_output=True, text=True, env={"HOME": str(home)}, check=True
    )
    assert out.stdout == 'it\'s a "quoted" $PROMPT `x`\nhome file\nbase_url = "$(reboot)"\n'
    assert Invocation(argv=["true"]).command() == ["true"]
