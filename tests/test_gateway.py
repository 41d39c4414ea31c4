"""The host-side model gateway against a stub upstream over loopback, through its Unix socket:
key injection, allow-lists, metering of every API shape (streamed and not), dollars, budget."""

from __future__ import annotations

import json
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.gateway import (
    DUMMY_KEY,
    MissingKey,
    ModelGateway,
    Price,
    PricingTable,
    SocketSetupError,
    Upstream,
    Usage,
    UsageRecord,
)
from bot.gateway.pricing import DEFAULT_PRICES
from tests.test_gateway_stub import (
    ANTHROPIC_MODEL,
    ANTHROPIC_USAGE,
    CHAT_USAGE,
    OPENAI_MODEL,
    RESPONSES_USAGE,
    StubUpstream,
    start_stub,
    stop_stub,
)

REAL_ANTHROPIC = "sk-ant-api03-REAL-" + "a" * 40
REAL_OPENAI = "sk-proj-REAL-" + "b" * 40
KEYS = {"ANTHROPIC_API_KEY": REAL_ANTHROPIC, "OPENAI_API_KEY": REAL_OPENAI}
ROOT = Path("/tmp/bgw-tests")  # short: Unix socket paths are limited to 107 bytes


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    stub, server, thread = start_stub()
    yield stub
    stop_stub(server, thread)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = ROOT / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def routes(stub: StubUpstream) -> dict[str, Upstream]:
    return {
        "anthropic": Upstream(api="anthropic", base_url=stub.url),
        "openai": Upstream(api="openai", base_url=stub.url),
    }


Factory = Callable[..., Awaitable[ModelGateway]]


@pytest.fixture
async def make_gateway(
    stub: StubUpstream, run_dir: Path
) -> AsyncIterator[Callable[..., Awaitable[ModelGateway]]]:
    started: list[ModelGateway] = []

    async def make(**kwargs: Any) -> ModelGateway:
        kwargs.setdefault("environ", KEYS)
        gateway = ModelGateway("run-1", run_dir / "gateway", routes(stub), **kwargs)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        await gateway.stop()


def sandbox_client(gateway: ModelGateway) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(gateway.socket_path))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8788", timeout=30)


ANTHROPIC_HEADERS = {
    "x-api-key": DUMMY_KEY,
    "authorization": f"Bearer {DUMMY_KEY}",
    "anthropic-version": "2023-06-01",
}
OPENAI_HEADERS = {"authorization": f"Bearer {DUMMY_KEY}", "openai-organization": "org-agent"}
MESSAGE = {"role": "user", "content": "hi"}

A = ANTHROPIC_USAGE
ANTHROPIC_EXPECTED = Usage(A["input"], A["output"], A["cache_read"], A["cache_write"])
R = RESPONSES_USAGE
RESPONSES_EXPECTED = Usage(R["input"] - R["cached"], R["output"], R["cached"], 0)
C = CHAT_USAGE
CHAT_EXPECTED = Usage(C["input"], C["output"], 0, 0)

CASES = {
    "anthropic-stream": ("/anthropic/v1/messages?beta=true", True, ANTHROPIC_EXPECTED),
    "anthropic-json": ("/anthropic/v1/messages", False, ANTHROPIC_EXPECTED),
    "responses-stream": ("/openai/v1/responses", True, RESPONSES_EXPECTED),
    "responses-json": ("/openai/v1/responses", False, RESPONSES_EXPECTED),
    "chat-stream": ("/openai/v1/chat/completions", True, CHAT_EXPECTED),
    "chat-json": ("/openai/v1/chat/completions", False, CHAT_EXPECTED),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_usage_is_metered_exactly_and_priced_from_the_table(
    case: str, make_gateway: Factory, stub: StubUpstream
) -> None:
    path, streamed, expected = CASES[case]
    records: list[UsageRecord] = []
    gateway = await make_gateway(on_usage=records.append)
    anthropic = path.startswith("/anthropic")
    model = "claude-sonnet-4-5" if anthropic else "gpt-5"
    body: dict[str, Any] = {"model": model, "stream": streamed, "max_tokens": 64}
    body["messages" if "responses" not in path else "input"] = [MESSAGE]
    async with sandbox_client(gateway) as client:
        response = await client.post(
            path, json=body, headers=ANTHROPIC_HEADERS if anthropic else OPENAI_HEADERS
        )
    assert response.status_code == 200
    if streamed:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "data: " in response.text
    else:
        assert response.json()["usage"]

    assert len(records) == 1
    record = records[0]
    assert record.usage == expected
    assert record.model == (ANTHROPIC_MODEL if anthropic else OPENAI_MODEL)
    assert record.streamed is streamed and record.metered and record.known_model
    price = DEFAULT_PRICES["claude-sonnet-4" if anthropic else "gpt-5"]
    dollars = (
        expected.input_tokens * price.input
        + expected.output_tokens * price.output
        + expected.cache_read_tokens * (price.cache_read or price.input)
        + expected.cache_write_tokens * (price.cache_write or price.input)
    ) / 1_000_000
    assert record.cost_usd == pytest.approx(dollars, rel=1e-12)
    assert gateway.spent_usd == pytest.approx(dollars, rel=1e-12)
    assert record.event_data()["tokens_in"] == expected.total_input_tokens

    seen = stub.requests()[-1]
    real = REAL_ANTHROPIC if anthropic else REAL_OPENAI
    if anthropic:
        assert seen.headers["x-api-key"] == real
        assert "authorization" not in seen.headers
        assert seen.headers["anthropic-version"] == "2023-06-01"
    else:
        assert seen.headers["authorization"] == f"Bearer {real}"
        assert "x-api-key" not in seen.headers and "openai-organization" not in seen.headers
    assert DUMMY_KEY not in json.dumps(seen.headers)
    assert seen.query == ("beta=true" if "beta" in path else "")
    if case == "chat-stream":  # the gateway asked for usage the agent did not request
        assert seen.json()["stream_options"] == {"include_usage": True}


async def test_streams_flow_through_chunk_by_chunk(make_gateway: Factory) -> None:
    gateway = await make_gateway()
    body = {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 8, "messages": [MESSAGE]}
    async with sandbox_client(gateway) as client:
        t0 = time.monotonic()
        async with client.stream(
            "POST", "/anthropic/v1/messages", json=body, headers={"x-stub-pause": "1.5"}
        ) as response:
            chunks = response.aiter_raw()
            first = await chunks.__anext__()
            first_at = time.monotonic() - t0
            rest = b"".join([chunk async for chunk in chunks])
        total = time.monotonic() - t0
    assert b"message_start" in first and b"message_stop" not in first
    assert b"message_stop" in rest
    assert first_at < 1.0 <= 1.5 <= total + 0.05


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/gemini/v1beta/models/x:generateContent"),  # not an allow-listed upstream
        ("POST", "/anthropic/v1/messages/batches"),  # cost the gateway could not meter
        ("POST", "/openai/v1/files"),
        ("GET", "/anthropic/v1/messages"),  # wrong method
        ("POST", "/anthropic/v1/messages/../../v1/files"),
        ("POST", "/anthropic//v1/messages"),
        ("POST", "/"),
    ],
)
async def test_requests_outside_the_allow_list_are_refused(
    method: str, path: str, make_gateway: Factory, stub: StubUpstream
) -> None:
    gateway = await make_gateway()
    before = len(stub.requests())
    async with sandbox_client(gateway) as client:
        response = await client.request(method, path, content=b"{}")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "forbidden"
    assert len(stub.requests()) == before


async def test_background_responses_are_refused(make_gateway: Factory, stub: StubUpstream) -> None:
    gateway = await make_gateway()
    before = len(stub.requests())
    async with sandbox_client(gateway) as client:
        response = await client.post(
            "/openai/v1/responses", json={"model": "gpt-5", "input": "x", "background": True}
        )
    assert response.status_code == 400
    assert "background" in response.json()["error"]["message"]
    assert len(stub.requests()) == before


async def test_budget_cuts_off_fires_once_and_raise_budget_reopens(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    # $1 per million tokens of every kind: one Anthropic stub request = 5,001 tokens = $0.005001.
    flat = PricingTable({"claude": Price(input=1, output=1, cache_read=1, cache_write=1)})
    exhausted: list[float] = []
    records: list[UsageRecord] = []
    gateway: ModelGateway | None = None

    def on_exhausted() -> None:
        assert gateway is not None
        exhausted.append(gateway.spent_usd)

    gateway = await make_gateway(
        budget_usd=0.009, pricing=flat, on_usage=records.append, on_budget_exhausted=on_exhausted
    )
    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [MESSAGE]}

    async def ask() -> httpx.Response:
        async with sandbox_client(gateway) as client:
            response = await client.post("/anthropic/v1/messages", json=body)
        await _settle()
        return response

    assert (await ask()).status_code == 200
    assert exhausted == []
    assert (await ask()).status_code == 200  # crosses the budget: it was already under way
    assert exhausted == [pytest.approx(0.010002)]
    assert gateway.exhausted
    seen = len(stub.requests())
    for _ in range(2):
        refused = await ask()
        assert refused.status_code == 402
        assert refused.json()["error"]["type"] == "budget_exhausted"
        assert "$0.01" in refused.json()["error"]["message"]
    assert len(stub.requests()) == seen and len(exhausted) == 1 and len(records) == 2

    assert gateway.raise_budget(0.01) == pytest.approx(0.019)
    assert not gateway.exhausted
    assert (await ask()).status_code == 200
    assert len(exhausted) == 1
    assert (await ask()).status_code == 200  # crosses the raised cap: the callback fires again
    assert len(exhausted) == 2
    assert (await ask()).status_code == 402
    assert [r.spent_usd for r in records] == pytest.approx([0.005001 * n for n in range(1, 5)])


async def test_zero_budget_refuses_the_first_request(make_gateway: Factory) -> None:
    exhausted: list[bool] = []
    gateway = await make_gateway(budget_usd=0.0, on_budget_exhausted=lambda: exhausted.append(True))
    async with sandbox_client(gateway) as client:
        response = await client.post("/anthropic/v1/messages", json={"model": "claude"})
    await _settle()
    assert response.status_code == 402 and exhausted == [True]


async def test_unknown_model_is_priced_at_the_documented_default(make_gateway: Factory) -> None:
    records: list[UsageRecord] = []
    gateway = await make_gateway(
        on_usage=records.append,
        pricing=PricingTable({}, unknown=Price(input=10, output=100, cache_read=1, cache_write=20)),
    )
    async with sandbox_client(gateway) as client:
        await client.post("/anthropic/v1/messages", json={"model": "x", "messages": [MESSAGE]})
    (record,) = records
    assert not record.known_model
    u = ANTHROPIC_EXPECTED
    expected = (u.input_tokens * 10 + u.output_tokens * 100 + u.cache_read_tokens * 1) / 1e6
    expected += u.cache_write_tokens * 20 / 1e6
    assert record.cost_usd == pytest.approx(expected)


async def test_a_missing_key_stops_the_gateway_from_starting(
    run_dir: Path, stub: StubUpstream
) -> None:
    gateway = ModelGateway(
        "run-1", run_dir / "gateway", routes(stub), environ={"ANTHROPIC_API_KEY": "sk-ant-x"}
    )
    with pytest.raises(MissingKey, match="OPENAI_API_KEY"):
        await gateway.start()
    assert not gateway.socket_path.exists()


async def test_unreachable_upstream_is_a_502(run_dir: Path) -> None:
    dead = {"anthropic": Upstream(api="anthropic", base_url="http://127.0.0.1:9")}
    gateway = ModelGateway("run-1", run_dir / "gw", dead, environ=KEYS)
    async with gateway, sandbox_client(gateway) as client:
        response = await client.post("/anthropic/v1/messages", json={"model": "claude"})
    assert response.status_code == 502
    assert REAL_ANTHROPIC not in response.text


async def test_socket_directory_is_shared_with_the_sandbox_group_only(run_dir: Path) -> None:
    directory = run_dir / "gateway"
    gid = 101000
    async with ModelGateway("run-1", directory, {}, environ=KEYS, sandbox_gid=gid) as gateway:
        dir_stat = directory.stat()
        sock_stat = gateway.socket_path.stat()
        assert stat.S_ISSOCK(sock_stat.st_mode)
        assert (dir_stat.st_gid, stat.S_IMODE(dir_stat.st_mode)) == (gid, 0o750)
        assert (sock_stat.st_gid, stat.S_IMODE(sock_stat.st_mode)) == (gid, 0o660)
        forwarder = directory / "forwarder.py"
        assert stat.S_IMODE(forwarder.stat().st_mode) == 0o644
        assert "def relay" in forwarder.read_text()
    assert not gateway.socket_path.exists()


async def _settle() -> None:
    """Let the gateway finish accounting (it runs right after the response's last byte)."""
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0.005)


async def test_a_socket_path_too_long_for_unix_sockets_is_refused_clearly() -> None:
    gateway = ModelGateway("run-1", ROOT / ("d" * 120), {}, environ=KEYS)
    with pytest.raises(SocketSetupError, match=r"shorter sandbox\.workdir"):
        await gateway.start()


async def test_unprefixed_paths_go_to_the_default_route(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    records: list[UsageRecord] = []
    gateway = await make_gateway(default_route="anthropic", on_usage=records.append)
    async with sandbox_client(gateway) as client:
        plain = await client.post("/v1/messages", json={"model": "claude", "messages": [MESSAGE]})
        other = await client.post("/openai/v1/responses", json={"model": "gpt-5", "input": "x"})
        refused = await client.post("/v1/responses", json={"model": "gpt-5", "input": "x"})
    assert (plain.status_code, other.status_code, refused.status_code) == (200, 200, 403)
    assert [r.upstream for r in records] == ["anthropic", "openai"]
    assert stub.requests()[-1].headers["authorization"] == f"Bearer {REAL_OPENAI}"


async def test_requests_waiting_for_a_slot_are_refused_once_the_budget_is_spent(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    import asyncio

    gateway = await make_gateway(budget_usd=0.001, max_concurrent=1)
    body = {"model": "claude-sonnet-4-5", "stream": True, "messages": [MESSAGE]}
    async with sandbox_client(gateway) as client:
        responses = await asyncio.gather(
            *[
                client.post("/anthropic/v1/messages", json=body, headers={"x-stub-pause": "0.3"})
                for _ in range(3)
            ]
        )
    assert sorted(r.status_code for r in responses) == [200, 402, 402]
    assert gateway.requests == 1


async def test_keys_never_reach_the_logs(make_gateway: Factory) -> None:
    import structlog

    gateway = await make_gateway(budget_usd=0.0001)
    with structlog.testing.capture_logs() as logs:
        async with sandbox_client(gateway) as client:
            await client.post("/anthropic/v1/messages", json={"model": "c", "messages": []})
            await client.post("/openai/v1/responses", json={"model": "gpt-5", "input": "x"})
            await client.post("/openai/v1/files", json={})
        await gateway.stop()
    text = repr(logs)
    names = {entry["event"] for entry in logs}
    assert {"gateway_request_metered", "gateway_request_refused", "gateway_stopped"} <= names
    assert REAL_ANTHROPIC not in text and REAL_OPENAI not in text
