"""OpenTelemetry traces (issue 14): one trace per run, from the webhook that started it to the
pull request, exported over OTLP/HTTP to a real receiver on loopback; GenAI spans for the
agent, its model calls (through the gateway) and its tool calls; the trace kept across the
jobs of a run that waited for a slot; nothing of the prompt, the issue or the files in any
exported attribute; off (and nothing of OpenTelemetry imported) unless an endpoint is set."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bot import tracing
from bot.entrypoints.cli import main as cli
from bot.tracing.genai import AgentTrace
from tests.modelstubs import ModelScript, TextTurn, ToolTurn
from tests.modelstubs.anthropic import AnthropicStub
from tests.modelstubs.server import running
from tests.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from tests.stack import BosunStack, StackPlace
from tests.test_e2e_agents import KEY_ENV, REAL_KEY, agent_stack
from tests.test_e2e_capacity import capacity_stack, run_of

TITLE = "Greeting file zq81-title"
BODY = "Please add a greeting kx42-body-text to the repository."
FILE_TEXT = "hello from the agent w7p3-file\n"
GATES = 'gates:\n  - name: unit\n    run: ["true"]\n  - name: lint\n    run: ["true"]\n'

SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP span kinds
STATUS_ERROR = 2


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A loopback OTLP receiver that ``OTEL_EXPORTER_OTLP_ENDPOINT`` points at."""
    with otlp_receiver() as found:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", found.url)
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        yield found


def children(spans: Sequence[Any], parent: Any) -> list[Any]:
    return sorted(
        (s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id),
        key=lambda s: s.start_ns,
    )


def only(spans: Sequence[Any], name: str, **attributes: Any) -> Any:
    found = [
        s
        for s in spans
        if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def all_text(span: ReceivedSpan) -> str:
    return repr(span.name) + repr(sorted(span.attributes.items())) + repr(span.resource)


def test_a_run_is_one_trace_over_otlp_from_webhook_to_pull_request(
    place: StackPlace,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, REAL_KEY)
    script = ModelScript(
        [
            ToolTurn("Write", {"file_path": "/workspace/greeting.txt", "content": FILE_TEXT}),
            TextTurn("I wrote greeting.txt."),
        ]
    )
    with (
        running(AnthropicStub(script)) as stub_url,
        agent_stack(place, stub_url, 5.0) as stack,
    ):
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": GATES}, user="alice")
        number = stack.emulator.create_issue(stack.repo, TITLE, BODY, "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "review_ready", run
        ((delivery_id, trace_parent),) = stack.db(
            "SELECT delivery_id, trace_parent FROM runs WHERE id = ?", run["id"]
        )
        cost = [e["data"] for e in stack.events(run["id"], "cost")]
        prompt = stack.db("SELECT prompt FROM runs WHERE id = ?", run["id"])[0][0]
    # The stack has stopped: its processes flushed their spans to the receiver.
    spans = list(receiver.spans)
    assert spans, "nothing was exported"

    job = only(spans, "execute_run", **{"bosun.run.id": run["id"]})
    trace = [s for s in spans if s.trace_id == job.trace_id]
    assert trace_parent.startswith(f"00-{job.trace_id}-")  # the run row carries its trace

    # receive_delivery (web) → process_delivery (worker) → execute_run → the run's steps.
    (root,) = [s for s in trace if not s.parent_span_id]
    assert root.name == "receive_delivery" and root.kind == SERVER
    assert root.attributes["bosun.delivery.id"] == delivery_id
    assert root.attributes["github.event"] == "issues"
    assert root.attributes["bosun.repository"] == stack.repo
    assert root.resource["service.name"] == "bosun"
    (processing,) = children(trace, root)
    assert processing.name == "process_delivery" and processing.kind == CONSUMER
    assert processing.attributes["bosun.delivery.id"] == delivery_id
    assert processing.attributes["bosun.delivery.outcome"] == "processed"
    assert children(trace, processing) == [job]
    assert job.attributes["bosun.delivery.id"] == delivery_id
    assert job.attributes["bosun.run.state"] == "review_ready"
    assert job.attributes["bosun.run.profile"] == "agent"

    steps = children(trace, job)
    names = [s.name for s in steps]
    assert names == ["admission", "prepare", "invoke_agent claude-code", "gates", "publish"]
    admission, _prepare, agent, gates, publish = steps
    assert admission.attributes["bosun.admission.outcome"] == "admitted"
    assert gates.attributes["bosun.gates.passed"] is True
    assert publish.attributes["bosun.pull_request.number"] > 0
    assert publish.attributes["bosun.changes.files"] >= 1
    assert all(s.status_code != STATUS_ERROR for s in trace)
    for earlier, later in itertools.pairwise(steps):  # one after the other
        assert earlier.end_ns <= later.start_ns

    # The agent phase, as the GenAI conventions name it.
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "claude-code"
    assert agent.attributes["gen_ai.provider.name"] == "anthropic"
    assert agent.attributes["gen_ai.request.model"] == "claude-sonnet-4-5"
    assert agent.attributes["bosun.phase"] == "implement"
    assert agent.attributes["process.exit.code"] == 0
    under_agent = children(trace, agent)
    chats = [s for s in under_agent if s.name.startswith("chat ")]
    tools = [s for s in under_agent if s.name.startswith("execute_tool ")]
    assert len(chats) + len(tools) == len(under_agent)
    # Every model call the gateway metered is a chat span with its tokens.
    metered = [
        d for d in cost if d.get("source") == "gateway" and d["endpoint"] == "POST /v1/messages"
    ]
    assert len(chats) == len(metered) >= 2
    for chat in chats:
        assert chat.kind == CLIENT
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "anthropic"
        assert chat.name == f"chat {chat.attributes['gen_ai.request.model']}"
        assert agent.start_ns <= chat.start_ns <= chat.end_ns <= agent.end_ns
    assert sorted(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == sorted(
        d["tokens_in"] for d in metered
    )
    assert sorted(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == sorted(
        d["tokens_out"] for d in metered
    )
    assert agent.attributes["gen_ai.usage.input_tokens"] == sum(d["tokens_in"] for d in metered)
    # The Write the model asked for, from Claude Code's tool_use to its tool_result.
    (tool,) = tools
    assert tool.name == "execute_tool Write"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "Write"
    assert tool.attributes["gen_ai.tool.call.id"]
    assert tool.start_ns <= tool.end_ns

    # Nothing of the issue, the prompt, the file or the key left in any exported span.
    secrets = ["zq81-title", "kx42-body-text", "w7p3-file", "I wrote greeting.txt", REAL_KEY]
    assert all(s in prompt for s in ("zq81-title", "kx42-body-text"))
    for span in spans:
        text = all_text(span)
        for secret in secrets:
            assert secret not in text, (secret, span.name)


def test_a_run_that_waits_for_a_slot_keeps_one_trace_across_its_jobs(place: StackPlace) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.acquire(exporter)  # in-process: the stack's web and worker share it
    try:
        with capacity_stack(place, queue_poll_seconds=1) as stack:
            config = "limits:\n  concurrent_runs: 1\n"
            stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
            first, second = start_run(stack, "First"), start_run(stack, "Second")
            stack.wait_for(
                lambda: {run_of(stack, n)["state"] for n in (first, second)} == {"review_ready"},
                180,
                "both runs review_ready",
            )
            first_id, second_id = run_of(stack, first)["id"], run_of(stack, second)["id"]
    finally:
        tracing.release()
    spans = [Span.of(s) for s in exporter.get_finished_spans()]
    exporter.shutdown()

    def jobs_of(run_id: str) -> list[Span]:
        found = [
            s for s in spans if s.name == "execute_run" and s.attributes["bosun.run.id"] == run_id
        ]
        return sorted(found, key=lambda s: s.start_ns)

    waited = jobs_of(second_id)
    assert len(waited) >= 2, "the second run never waited"
    # Every job of the run is in one trace, under the delivery that started it.
    assert len({s.trace_id for s in waited}) == 1
    assert len({s.parent_span_id for s in waited}) == 1
    (parent,) = [s for s in spans if s.span_id == waited[0].parent_span_id]
    assert parent.name == "process_delivery"
    assert {s.trace_id for s in jobs_of(first_id)}.isdisjoint({waited[0].trace_id})
    trace = [s for s in spans if s.trace_id == waited[0].trace_id]
    for job in waited[:-1]:
        (admission,) = children(trace, job)
        assert admission.name == "admission"
        assert admission.attributes["bosun.admission.outcome"] == "waiting"
        assert admission.attributes["bosun.queue.position"] == 1
        assert job.status_code != STATUS_ERROR  # waiting is not a failure
    last = children(trace, waited[-1])
    assert [s.name for s in last] == [
        "admission",
        "prepare",
        "invoke_agent script",
        "gates",
        "publish",
    ]
    assert last[0].attributes["bosun.admission.outcome"] == "admitted"


def start_run(stack: BosunStack, title: str) -> int:
    number = stack.emulator.create_issue(stack.repo, title, "Please edit the README.", "alice")
    stack.label(number, "bosun:slowedit")
    stack.wait_for(lambda: run_of(stack, number), 30, f"a run for #{number}")
    return number


class Span:
    """An SDK span in the shape of ``ReceivedSpan`` (ids as hex)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    @classmethod
    def of(cls, span: Any) -> Any:
        return cls(
            trace_id=f"{span.context.trace_id:032x}",
            span_id=f"{span.context.span_id:016x}",
            parent_span_id=f"{span.parent.span_id:016x}" if span.parent else "",
            name=span.name,
            attributes=dict(span.attributes),
            status_code=span.status.status_code.value,
            start_ns=span.start_time,
            end_ns=span.end_time,
        )


def test_agent_trace_pairs_tool_calls_and_skips_what_is_no_model_call() -> None:
    exporter = InMemorySpanExporter()
    assert tracing.acquire(exporter)
    try:
        with tracing.span("invoke_agent codex") as agent:
            assert agent is not None
            trace = AgentTrace(agent)
            trace.tool({"phase": "call", "id": "a", "name": "shell", "input": "cat secret.txt"})
            trace.tool({"phase": "call", "id": "b", "name": "apply_patch"})
            trace.tool({"phase": "result", "id": "a", "is_error": True, "output": "secret!"})
            trace.tool({"phase": "result", "id": "z", "name": "edit", "input": "x"})  # aider
            for endpoint in ("GET /v1/models", "POST /v1/responses"):
                trace.model_call(
                    endpoint=endpoint,
                    provider="openai",
                    model="gpt-5-codex",
                    input_tokens=100,
                    output_tokens=7,
                    cache_read_tokens=40,
                    cache_write_tokens=0,
                    status=200,
                    duration_s=0.25,
                )
            trace.finish(exit_code=0, session_id="sess-1")
    finally:
        tracing.release()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {
        "invoke_agent codex",
        "execute_tool shell",
        "execute_tool apply_patch",
        "execute_tool edit",
        "chat gpt-5-codex",
    }
    assert spans["execute_tool shell"].status.status_code.name == "ERROR"
    assert spans["execute_tool apply_patch"].end_time is not None  # ended at the phase's end
    chat = spans["chat gpt-5-codex"]
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.usage.input_tokens"] == 100
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 40
    assert "gen_ai.usage.cache_creation.input_tokens" not in chat.attributes
    assert chat.end_time is not None and chat.start_time is not None
    assert 0.2e9 < chat.end_time - chat.start_time < 0.3e9
    agent_span = spans["invoke_agent codex"]
    assert agent_span.attributes is not None
    assert agent_span.attributes["bosun.agent.tool_calls"] == 3
    assert agent_span.attributes["bosun.agent.model_calls"] == 1
    assert agent_span.attributes["gen_ai.conversation.id"] == "sess-1"
    for span in spans.values():
        assert "secret" not in repr(dict(span.attributes or {}))
    exporter.shutdown()


def test_tracing_is_off_and_costs_no_import_without_an_endpoint() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = (
        "import sys, bot.tracing, bot.web.app, jobs.worker\n"
        "from bot import tracing\n"
        "assert tracing.acquire() is False\n"
        "assert tracing.span('x') is tracing.span('y')\n"  # the one shared no-op
        "assert tracing.traceparent() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
    )


def test_an_endpoint_without_the_packages_or_with_grpc_stops_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(tracing.TracingUnavailable, match="HTTP/protobuf"):
        tracing.check()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    tracing.check()  # installed here: fine
    # As on an installation without the `otel` extra: the import fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(tracing.TracingUnavailable, match=r"bosun\[otel\]"):
        tracing.check()
    with pytest.raises(tracing.TracingUnavailable):
        tracing.acquire()
    result = CliRunner().invoke(cli, ["worker", "--burst"])
    assert result.exit_code == 1
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry packages" in result.output
    assert "unset OTEL_EXPORTER_OTLP_ENDPOINT" in result.output
