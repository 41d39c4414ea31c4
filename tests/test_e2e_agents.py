"""End to end with real agent CLIs: the real Claude Code CLI runs in the hardened sandbox
(network none) against a scripted stub of the Anthropic Messages API reached only through the
model gateway, which holds the real key; Bosun opens the PR with the cost in it. And a run
that exceeds its budget is stopped, its partial work pushed, and the check run says why."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.modelstubs import ModelScript, TextTurn, ToolTurn
from tests.modelstubs.anthropic import AnthropicStub
from tests.modelstubs.openai import OpenAIResponsesStub
from tests.modelstubs.server import running
from tests.services import docker_client
from tests.stack import (
    PROFILES,
    BosunStack,
    StackPlace,
    free_port,
    make_stack_settings,
    running_stack,
)

REAL_KEY = "sk-ant-api03-REAL-KEY-never-in-the-sandbox-0123456789abcdef"
KEY_ENV = "BOSUN_TEST_ANTHROPIC_KEY"


def agent_stack(
    place: StackPlace,
    stub_url: str,
    budget: float,
    *,
    runner: str = "claude-code",
    api: str = "anthropic",
    model: str = "claude-sonnet-4-5",
    key_env: str = KEY_ENV,
    timeout: int | None = None,
) -> Any:
    docker_client().close()
    port = free_port()
    place.world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
    profiles = {
        **PROFILES,
        "agent": {
            "runner": runner,
            "model": model,
            "upstreams": [stub_url],
            "budget_usd": budget,
            "max_turns": 8,
            "timeout": timeout,
        },
    }
    settings = make_stack_settings(
        place.tmp_path,
        place.world,
        place.redis_url,
        place.namespace,
        place.work_root,
        port,
        profiles=profiles,
        gateway={"upstreams": {stub_url: {"api": api, "base_url": stub_url, "key_env": key_env}}},
    )
    return running_stack(settings, place.world, port)


@pytest.fixture
def real_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, REAL_KEY)
    yield REAL_KEY


def _git(stack: BosunStack, *args: str) -> str:
    git_dir = stack.state()["git_dir"]
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], capture_output=True, text=True, check=True
    ).stdout


def test_claude_code_edits_through_the_gateway_and_pr_shows_cost(
    place: StackPlace,
    real_key: str,
) -> None:
    script = ModelScript(
        [
            ToolTurn(
                "Write", {"file_path": "/workspace/hello.txt", "content": "hello from claude\n"}
            ),
            TextTurn("I created hello.txt."),
        ]
    )
    with (
        running(AnthropicStub(script)) as stub_url,
        agent_stack(place, stub_url, 5.0) as stack,
    ):
        number = stack.emulator.create_issue(stack.repo, "Say hello", "Add hello.txt", "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "review_ready", run
        assert _git(stack, "show", f"{run['head_sha']}:hello.txt") == "hello from claude\n"

        # The stub saw the real key on every model request; the sandbox only a dummy.
        model_calls = [r for r in script.requests if r["path"] == "/v1/messages"]
        assert model_calls
        for call in model_calls:
            headers = {k.lower(): v for k, v in call["headers"].items()}
            assert headers.get("x-api-key") == real_key

        cost = stack.events(run["id"], "cost")
        metered = [e["data"] for e in cost if e["data"].get("source") == "gateway"]
        assert metered and all(d["upstream"] for d in metered)
        assert sum(d["tokens_in"] for d in metered) >= 320  # the stub's two model turns
        spent = stack.db("SELECT cost_usd FROM runs WHERE id=?", run["id"])[0][0]
        assert spent > 0
        pr = stack.wait_for(lambda: stack.state()["pulls"], 10, "a PR")[0]
        assert "$" in pr["body"] and "tokens in" in pr["body"]
        transcript = stack.artifacts(run["id"])["transcript"].read_bytes()
        assert real_key.encode() not in transcript
        for event in stack.events(run["id"]):
            assert real_key not in str(event["data"])


def test_budget_exhaustion_stops_agent_and_pushes_partial_work(
    place: StackPlace,
    real_key: str,
) -> None:
    big = 2000  # tokens per turn: with the price table, two turns cross the budget
    script = ModelScript(
        [
            ToolTurn(
                "Write",
                {"file_path": "/workspace/part1.txt", "content": "first part\n"},
                input_tokens=big,
                output_tokens=big,
            ),
            ToolTurn(
                "Write",
                {"file_path": "/workspace/part2.txt", "content": "second part\n"},
                input_tokens=big * 20,
                output_tokens=big * 20,
            ),
            ToolTurn(
                "Write",
                {"file_path": "/workspace/part3.txt", "content": "never\n"},
                input_tokens=big,
                output_tokens=big,
            ),
            TextTurn("done"),
        ]
    )
    with (
        running(AnthropicStub(script)) as stub_url,
        agent_stack(place, stub_url, 0.1) as stack,
    ):
        number = stack.emulator.create_issue(stack.repo, "Expensive", "Do a lot", "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "failed", run
        assert "budget" in run["reason"] and "/budget +" in run["reason"]
        assert run["branch"] in stack.state()["branches"]
        tree = _git(stack, "ls-tree", "-r", "--name-only", run["branch"])
        assert "part1.txt" in tree and "part3.txt" not in tree

        def failed_check() -> dict[str, Any] | None:
            checks = [
                c
                for c in stack.state()["check_runs"]
                if c["status"] == "completed" and c["conclusion"] == "failure"
            ]
            return checks[-1] if checks else None

        check = stack.wait_for(failed_check, 30, "a failed check run")
        assert "budget" in check["output"]["summary"]


def test_codex_edits_through_the_gateway(
    place: StackPlace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    openai_key = "sk-proj-REAL-OPENAI-KEY-never-in-the-sandbox-0123456789"
    monkeypatch.setenv("BOSUN_TEST_OPENAI_KEY", openai_key)
    script = ModelScript(
        [
            ToolTurn("exec_command", {"cmd": "printf 'hello from codex\\n' > hello.txt"}),
            TextTurn("Wrote hello.txt."),
        ]
    )
    with (
        running(OpenAIResponsesStub(script)) as stub_url,
        agent_stack(
            place,
            stub_url,
            5.0,
            runner="codex",
            api="openai",
            model="gpt-5-codex",
            key_env="BOSUN_TEST_OPENAI_KEY",
        ) as stack,
    ):
        number = stack.emulator.create_issue(stack.repo, "Say hello", "Add hello.txt", "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "review_ready", run
        assert _git(stack, "show", f"{run['head_sha']}:hello.txt") == "hello from codex\n"
        calls = [r for r in script.requests if r["path"].endswith("/responses")]
        assert calls
        for call in calls:
            headers = {k.lower(): v for k, v in call["headers"].items()}
            assert headers.get("authorization") == f"Bearer {openai_key}"
        metered = [
            e["data"]
            for e in stack.events(run["id"], "cost")
            if e["data"].get("source") == "gateway"
        ]
        assert metered and sum(d["tokens_in"] for d in metered) > 0
        transcript = stack.artifacts(run["id"])["transcript"].read_bytes()
        assert openai_key.encode() not in transcript


def test_resume_continues_the_agent_session(
    place: StackPlace,
    real_key: str,
) -> None:
    """A run that hits its time limit keeps its Claude Code session; ``/resume`` starts a run
    whose agent continues that conversation (the model sees the first run's turns) on the same
    branch."""
    script = ModelScript(
        [
            ToolTurn("Write", {"file_path": "/workspace/part1.txt", "content": "first part\n"}),
            ToolTurn(
                "Bash",
                {"command": "python3 -c 'import time; time.sleep(600)'", "description": "wait"},
            ),
            ToolTurn("Write", {"file_path": "/workspace/part2.txt", "content": "second part\n"}),
            TextTurn("Both parts are written."),
        ]
    )
    with (
        running(AnthropicStub(script)) as stub_url,
        agent_stack(
            place,
            stub_url,
            5.0,
            timeout=25,
        ) as stack,
    ):
        number = stack.emulator.create_issue(stack.repo, "Two parts", "Write both.", "alice")
        stack.label(number, "bosun:agent")
        (first,) = stack.wait_run({"timed_out", "failed", "review_ready"}, timeout=180)
        assert first["state"] == "timed_out", first
        assert "/resume" in first["reason"]
        kept = stack.artifacts(first["id"])
        assert "session" in kept and "session.json" in kept
        session_id = json.loads(kept["session.json"].read_text())["session_id"]

        seen = len(script.requests)
        stack.emulator.comment(stack.repo, number, "/resume", "alice")

        def second() -> dict[str, Any] | None:
            runs = [r for r in stack.runs() if r["id"] != first["id"]]
            done = [r for r in runs if r["state"] in {"review_ready", "failed", "timed_out"}]
            return done[0] if done else None

        run = stack.wait_for(second, 180, "the resumed run to finish")
        assert run["state"] == "review_ready", run
        assert run["branch"] == first["branch"]
        tree = _git(stack, "ls-tree", "-r", "--name-only", run["head_sha"])
        assert "part1.txt" in tree and "part2.txt" in tree

        # The resumed agent's first model request carries the first run's conversation.
        resumed = [
            r
            for r in script.requests[seen:]
            if r["path"] == "/v1/messages" and r["body"].get("tools")
        ]
        assert resumed, "the resumed agent made no model request"
        history = json.dumps(resumed[0]["body"]["messages"])
        assert "part1.txt" in history and "time.sleep(600)" in history
        restored = [
            e["data"]
            for e in stack.events(run["id"], "progress")
            if e["data"].get("session") is not None
        ]
        assert restored == [
            {"phase": "prepare", "session": session_id, "resumed": True, "from_run": first["id"]}
        ]


def test_a_model_nobody_priced_is_charged_conservatively_and_flagged(
    place: StackPlace,
    real_key: str,
) -> None:
    """A profile naming a model no price list knows (an in-house model behind an Anthropic-
    compatible server): every request is charged at the unknown-model price, never $0; the run
    records one ``gateway.pricing`` flag and its PR says the cost is an estimate."""
    from bot.agents.gateway import UNKNOWN_MODEL_PRICE, Usage

    model = "acme-internal-coder-7"
    script = ModelScript(
        [
            ToolTurn("Write", {"file_path": "/workspace/hello.txt", "content": "hello\n"}),
            TextTurn("I created hello.txt."),
        ]
    )
    with (
        running(AnthropicStub(script)) as stub_url,
        agent_stack(
            place,
            stub_url,
            5.0,
            model=model,
        ) as stack,
    ):
        number = stack.emulator.create_issue(stack.repo, "Say hello", "Add hello.txt", "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "review_ready", run
        metered = [
            e["data"]
            for e in stack.events(run["id"], "cost")
            if e["data"].get("source") == "gateway"
        ]
        assert metered and {(d["model"], d["priced_by"], d["known_model"]) for d in metered} == {
            (model, "unknown", False)
        }
        for d in metered:
            usage = Usage(d["tokens_in"], d["tokens_out"])  # the stub reports no cache
            assert d["usd"] > 0
            assert d["usd"] == pytest.approx(UNKNOWN_MODEL_PRICE.cost(usage), abs=1e-6)
        flags = [
            e["data"]
            for e in stack.events(run["id"], "policy")
            if e["data"].get("rule") == "gateway.pricing"
        ]
        assert [(f["decision"], f["model"]) for f in flags] == [("flag", model)]
        spent = stack.db("SELECT cost_usd FROM runs WHERE id=?", run["id"])[0][0]
        assert spent == pytest.approx(sum(d["usd"] for d in metered), abs=1e-5)
        pr = stack.wait_for(lambda: stack.state()["pulls"], 10, "a PR")[0]
        assert "an estimate: no price is known for" in pr["body"] and model in pr["body"]
