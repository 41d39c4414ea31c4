"""End to end with the real Gemini CLI: it runs in the hardened sandbox (network none) against
the Gemini API stub, reached only through the run's model gateway, which holds the real key —
the stub refuses any other key, so a run that completes proves only the real one reached it.
Bosun opens the PR with the metered cost in it. And a maintainer's steer sent while the agent
sits in a long tool call reaches the very next model request, in Gemini's format, and the agent
follows it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.modelstubs import Depends, ModelScript, TextTurn, ToolTurn
from tests.modelstubs.gemini import GeminiStub
from tests.modelstubs.server import running
from tests.stack import StackPlace
from tests.test_e2e_agents import _git, agent_stack
from tests.test_e2e_steer import _colour, _steer_and_check

GEMINI_KEY = "AIzaSy-REAL-GEMINI-KEY-never-in-the-sandbox-0123"
KEY_ENV = "BOSUN_TEST_GEMINI_KEY"
MODEL = "gemini-2.5-pro"
GENERATE = ":streamGenerateContent"
THOUGHT = "**Planning the change**\n\nI will look at the task, then act."
"""A thought summary opening each answer, as Gemini 2.5 sends them (the CLI asks for them)."""


@pytest.fixture
def gemini_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, GEMINI_KEY)
    return GEMINI_KEY


def gemini_stack(place: StackPlace, url: str) -> Any:
    return agent_stack(
        place,
        url,
        5.0,
        runner="gemini",
        api="gemini",
        model=MODEL,
        key_env=KEY_ENV,
    )


def test_gemini_cli_edits_through_the_gateway_and_pr_shows_cost(
    place: StackPlace,
    gemini_key: str,
) -> None:
    script = ModelScript(
        [
            ToolTurn(
                "write_file",
                {"file_path": "/workspace/hello.txt", "content": "hello from gemini\n"},
                text="I'll create the file.",
            ),
            ToolTurn("run_shell_command", {"command": "cat hello.txt", "description": "Show"}),
            TextTurn("I created hello.txt."),
        ]
    )
    stub = GeminiStub(script, key=gemini_key, cached_tokens=50, thoughts_tokens=25, thought=THOUGHT)
    with (
        running(stub) as stub_url,
        gemini_stack(place, stub_url) as stack,
    ):
        number = stack.emulator.create_issue(stack.repo, "Say hello", "Add hello.txt", "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "review_ready", run
        assert _git(stack, "show", f"{run['head_sha']}:hello.txt") == "hello from gemini\n"

        # Every request reached the stub with the real key and nothing else (the stub answers
        # 400 API_KEY_INVALID to any other); the sandbox only ever held the placeholder.
        assert script.used == 3
        calls = stub.seen
        assert calls and all(c["key"] == gemini_key for c in calls), calls
        assert all("key=" not in c["query"] for c in calls)
        generate = [c for c in calls if c["path"].endswith(GENERATE)]
        assert len(generate) >= 3 and all(c["query"] == "alt=sse" for c in generate)

        metered = [
            e["data"]
            for e in stack.events(run["id"], "cost")
            if e["data"].get("source") == "gateway"
        ]
        streamed = [d for d in metered if d["endpoint"].endswith(GENERATE)]
        assert len(streamed) == len(generate)
        assert all(d["upstream"] == "gemini" and d["model"] == MODEL for d in streamed)
        assert all(d["metered"] and d["known_model"] and d["streamed"] for d in streamed)
        # Per scripted turn: prompt = 200 uncached + 50 cached, output = 40 + 25 thinking.
        assert [d["cache_read_tokens"] for d in streamed[:3]] == [50, 50, 50]
        assert [d["tokens_in"] for d in streamed[:3]] == [250, 250, 170]
        assert [d["tokens_out"] for d in streamed[:3]] == [65, 65, 55]
        spent = stack.db("SELECT cost_usd FROM runs WHERE id=?", run["id"])[0][0]
        assert spent == pytest.approx(sum(d["usd"] for d in metered), rel=1e-3) and spent > 0
        pr = stack.wait_for(lambda: stack.state()["pulls"], 10, "a PR")[0]
        assert "$" in pr["body"] and "tokens in" in pr["body"]

        # The model's text streams in pieces; each message is one event on the run.
        messages = [e["data"]["text"] for e in stack.events(run["id"], "message")]
        assert messages == ["I'll create the file.", "I created hello.txt."], messages
        tools = [e["data"] for e in stack.events(run["id"], "tool")]
        assert [t["name"] for t in tools if t["phase"] == "call"] == [
            "write_file",
            "run_shell_command",
        ]
        transcript = stack.artifacts(run["id"])["transcript"].read_bytes()
        assert gemini_key.encode() not in transcript
        for event in stack.events(run["id"]):
            assert gemini_key not in json.dumps(event["data"])


def test_gemini_cli_follows_a_steer_sent_during_a_long_tool_call(
    place: StackPlace,
    gemini_key: str,
) -> None:
    def write(colour: str) -> ToolTurn:
        return ToolTurn(
            "write_file", {"file_path": "/workspace/colour.txt", "content": f"{colour}\n"}
        )

    script = ModelScript(
        [
            ToolTurn("run_shell_command", {"command": "sleep 8", "description": "wait a while"}),
            Depends(lambda body: _colour(body, write("blue"), write("red"))),
            TextTurn("Wrote colour.txt."),
        ]
    )
    with (
        running(GeminiStub(script, key=gemini_key, thought=THOUGHT)) as stub_url,
        gemini_stack(place, stub_url) as stack,
    ):
        _steer_and_check(stack, script, GENERATE)
