"""The host-side model gateway against a stub upstream over loopback, through its Unix socket:
key injection, allow-lists, metering of every API shape (streamed and not), dollars, budget."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from bot.agents.gateway import (
    DUMMY_KEY,
    GatewayLimits,
    GatewayRefusal,
    MissingKey,
    ModelGateway,
    Price,
    PricingTable,
    SocketSetupError,
    Upstream,
    Usage,
    UsageRecord,
)
from bot.agents.gateway.http import adjust_body
from bot.agents.gateway.limits import BodyBuffer
from bot.agents.gateway.pricing import DEFAULT_PRICES
from bot.settings import GatewaySettings
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
        pricing=PricingTable(
            {}, unknown=Price(input=10, output=100, cache_read=1, cache_write=20), catalogue=False
        ),  # the stub's model is in the catalogue: leave the catalogue out
    )
    async with sandbox_client(gateway) as client:
        await client.post("/anthropic/v1/messages", json={"model": "x", "messages": [MESSAGE]})
    (record,) = records
    assert not record.known_model and record.event_data()["priced_by"] == "unknown"
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


# -- limits: everything the agent sends is hostile -----------------------------------------


async def _raw(gateway: ModelGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(gateway.socket_path))


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """One response read off a raw connection: status, headers and the JSON body."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "gateway")]))
    conn.send(h11.EndOfMessage())  # (what was sent is the caller's; h11 only reads here)
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, json.loads(body) if body.startswith(b"{") else body


def _head(target: str, length: int, *extra: str) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "host: gateway", "content-type: application/json"]
    lines += [f"content-length: {length}", *extra, "", ""]
    return "\r\n".join(lines).encode()


@pytest.mark.parametrize(
    ("target", "status", "rule"),
    [
        ("/anthropic/v1/messages", 413, "gateway.max_body_bytes"),  # over the size limit
        ("/bosun-attacker/never", 403, "gateway.routes"),  # not a route
        ("/anthropic/v1/messages/batches", 403, "gateway.routes"),  # not an endpoint
    ],
)
async def test_a_request_is_refused_from_its_head_before_any_of_its_body_is_read(
    target: str, status: int, rule: str, make_gateway: Factory, stub: StubUpstream
) -> None:
    refusals: list[GatewayRefusal] = []
    gateway = await make_gateway(on_refused=refusals.append)
    before = len(stub.requests())
    reader, writer = await _raw(gateway)
    # A 56 MiB body is announced and not one byte of it sent: the answer comes anyway.
    writer.write(_head(target, 56 << 20))
    code, headers, body = await _response(reader)
    assert code == status and headers["connection"] == "close"
    assert body["error"]["type"] == ("request_too_large" if status == 413 else "forbidden")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await gateway.stop()
    assert len(stub.requests()) == before
    assert [(r.rule, r.status, r.count) for r in refusals] == [(rule, status, 1)]
    assert refusals[0].event_data()["decision"] == "refuse"


async def test_a_body_over_the_limit_gets_413_however_it_is_sent(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    refusals: list[GatewayRefusal] = []
    limits = GatewayLimits(max_body_bytes=1 << 20, max_buffered_bytes=2 << 20)
    gateway = await make_gateway(limits=limits, on_refused=refusals.append)
    before = len(stub.requests())

    async def chunked() -> AsyncIterator[bytes]:  # no declared size: cut off at the limit
        for _ in range(64):
            yield b"x" * (64 << 10)

    async with sandbox_client(gateway) as client:
        whole = await client.post("/anthropic/v1/messages", content=b"x" * (2 << 20))
        streamed = await client.post("/anthropic/v1/messages", content=chunked())
        fits = await client.post(
            "/anthropic/v1/messages",
            json={"model": "claude", "messages": [MESSAGE], "pad": "x" * (1 << 19)},
        )
    # An SDK that sends its whole body anyway reads the answer (the rest is read and dropped).
    assert (whole.status_code, streamed.status_code, fits.status_code) == (413, 413, 200)
    assert "1048576 bytes" in whole.json()["error"]["message"]
    assert len(stub.requests()) == before + 1 and len(stub.requests()[-1].body) > 1 << 19
    await gateway.stop()
    assert [(r.rule, r.count) for r in refusals] == [
        ("gateway.max_body_bytes", 1),
        ("gateway.max_body_bytes", 2),  # the second within the interval: reported at stop
    ]


async def test_slow_heads_and_bodies_get_408_and_idle_connections_are_closed(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    refusals: list[GatewayRefusal] = []
    limits = GatewayLimits(client_timeout=0.3, idle_timeout=0.6)
    gateway = await make_gateway(limits=limits, on_refused=refusals.append)
    before = len(stub.requests())

    async def answer(data: bytes) -> tuple[int, float]:
        reader, writer = await _raw(gateway)
        started = time.monotonic()
        writer.write(data)
        code, _, body = await _response(reader)
        assert body["error"]["type"] == "request_timeout"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
        writer.close()
        return code, time.monotonic() - started

    # A head that never ends, a body that stops short.
    for data in (b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: gw\r\n", _head("/v1", 9) + b"{"):
        code, took = await answer(data.replace(b"/v1 ", b"/anthropic/v1/messages "))
        assert code == 408 and 0.25 < took < 2

    # A connection that sends nothing, and one kept alive after a request: closed when idle.
    idle, idle_writer = await _raw(gateway)
    kept, writer = await _raw(gateway)
    request = json.dumps({"model": "claude", "messages": [MESSAGE]}).encode()
    writer.write(_head("/anthropic/v1/messages", len(request)) + request)
    started = time.monotonic()
    assert (await _response(kept))[0] == 200
    assert await asyncio.wait_for(idle.read(), 5) == b""
    assert await asyncio.wait_for(kept.read(), 5) == b""
    assert 0.5 < time.monotonic() - started < 3
    idle_writer.close()
    writer.close()
    await gateway.stop()
    assert len(stub.requests()) == before + 1
    assert {(r.rule, r.status) for r in refusals} == {("gateway.client_timeout_seconds", 408)}
    assert refusals[-1].count == 2


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _open_connections(
    path: Path, count: int, held: list[socket.socket] | None = None
) -> list[socket.socket]:
    """``count`` connections to the gateway (from another thread), as the agent would open them
    (a full backlog makes ``connect`` wait, so the gateway has to take each in turn)."""
    held = [] if held is None else held
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))  # blocking: with a timeout it would fail at once instead
        held.append(sock)
    return held


def _still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the gateway has not closed (a closed one reads end of file)."""
    open_ = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            open_ += sock.recv(1) != b""
        except BlockingIOError:
            open_ += 1
    return open_


async def test_open_connections_are_capped(make_gateway: Factory, stub: StubUpstream) -> None:
    refusals: list[GatewayRefusal] = []
    limits = GatewayLimits(max_connections=4)
    gateway = await make_gateway(max_concurrent=2, limits=limits, on_refused=refusals.append)
    before = _descriptors()

    # 300 idle connections: each new one takes the place of the one idle longest. The
    # descriptors this process holds beyond the flood's own are the gateway's.
    flood: list[socket.socket] = []
    opening = asyncio.create_task(
        asyncio.to_thread(_open_connections, gateway.socket_path, 300, flood)
    )
    peak = 0
    while not opening.done():
        peak = max(peak, _descriptors() - before - len(flood))
        await asyncio.sleep(0)
    await opening
    await _settle()
    # the cap; a flood socket not yet in the list, one being taken, one being closed
    assert peak <= 4 + 3, peak
    assert _descriptors() - before - len(flood) <= 4
    assert _still_open(flood) <= 4
    for sock in flood:
        sock.close()
    await _settle()

    # Four busy connections (two forwarding, two waiting for a slot): a fifth is refused.
    body = {"model": "claude-sonnet-4-5", "stream": True, "messages": [MESSAGE]}
    clients = [sandbox_client(gateway) for _ in range(4)]
    busy = [
        asyncio.create_task(
            client.post("/anthropic/v1/messages", json=body, headers={"x-stub-pause": "0.8"})
        )
        for client in clients
    ]
    await asyncio.sleep(0.3)
    reader, writer = await _raw(gateway)
    code, _, refused = await _response(reader)
    assert code == 503 and refused["error"]["type"] == "too_many_connections"
    writer.close()
    assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * 4
    for client in clients:
        await client.aclose()
    async with sandbox_client(gateway) as client:  # room again
        assert (await client.post("/anthropic/v1/messages", json=body)).status_code == 200

    await gateway.stop()
    assert {r.rule for r in refusals} == {"gateway.max_connections"}
    assert sum(r.status == 503 for r in refusals) >= 1
    assert max(r.count for r in refusals) >= 296  # every closed or refused one is counted
    assert len(refusals) <= 4  # ... in a few reports, not one event each


async def test_a_body_is_read_only_while_its_request_holds_a_slot(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    gateway = await make_gateway(max_concurrent=1)
    streamed = {"model": "claude-sonnet-4-5", "stream": True, "messages": [MESSAGE]}
    payload = json.dumps({"model": "claude", "messages": [MESSAGE], "pad": "x" * (6 << 20)})
    data = _head("/anthropic/v1/messages", len(payload)) + payload.encode()

    def send_until_stuck(sock: socket.socket) -> int:
        sent = 0
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while sent < len(data):
                sent += sock.send(data[sent : sent + (64 << 10)])
        return sent

    async with sandbox_client(gateway) as client:
        holder = asyncio.create_task(
            client.post("/anthropic/v1/messages", json=streamed, headers={"x-stub-pause": "1.5"})
        )
        await asyncio.sleep(0.2)  # the first request holds the only slot
        (sock,) = await asyncio.to_thread(_open_connections, gateway.socket_path, 1)
        sent = await asyncio.to_thread(send_until_stuck, sock)
        # Only what the socket buffers hold was taken: the gateway is not reading the body.
        assert sent < 2 << 20, sent
        assert not holder.done()
        assert (await holder).status_code == 200
    sock.settimeout(10)
    await asyncio.to_thread(sock.sendall, data[sent:])
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    assert (await _response(reader))[0] == 200
    writer.close()
    assert len(stub.requests()[-1].body) == len(payload)


async def test_the_buffer_makes_a_request_wait_until_its_body_fits() -> None:
    buffer = BodyBuffer(10)
    order: list[str] = []

    async def take(name: str, size: int, hold: float) -> None:
        async with buffer.reserve(size) as reservation:
            order.append(f"{name}+")
            reservation.shrink(size // 2)
            await asyncio.sleep(hold)
            order.append(f"{name}-")

    first = asyncio.create_task(take("a", 8, 0.1))
    await asyncio.sleep(0.01)
    assert buffer.held == 4  # shrunk to what it used
    await asyncio.gather(take("b", 6, 0), take("c", 8, 0), first)
    assert order.index("c+") > order.index("a-")  # 8 fitted only once "a" let go
    assert order.index("b+") < order.index("a-")  # 6 fitted beside a's 4
    assert buffer.held == 0


def test_limits_that_could_never_be_met_are_refused() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        GatewaySettings(max_body_bytes=2 << 20, max_buffered_bytes=1 << 20)
    with pytest.raises(ValueError, match="max_connections"):
        GatewaySettings(max_concurrent=8, max_connections=4)
    limits = GatewaySettings(max_connections=40, idle_timeout_seconds=5).limits()
    assert (limits.max_connections, limits.idle_timeout) == (40, 5.0)


async def test_a_body_of_countless_tiny_json_values_is_refused_unparsed(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    # ``[]`` is 3 bytes in the body and ~64 once parsed: 1 MiB of them would be ~20 MiB.
    refusals: list[GatewayRefusal] = []
    limits = GatewayLimits(max_body_bytes=1 << 20, max_buffered_bytes=1 << 20)
    gateway = await make_gateway(limits=limits, on_refused=refusals.append)
    before = len(stub.requests())
    dense = b'{"model":"claude","messages":[],"pad":[' + b"[]," * 70_000 + b"[]]}"
    wordy = {"model": "claude", "messages": [{"role": "user", "content": "[], " * 200_000}]}
    async with sandbox_client(gateway) as client:
        refused = await client.post("/anthropic/v1/messages", content=dense)
        fine = await client.post("/anthropic/v1/messages", json=wordy)  # text, however it reads
    assert refused.status_code == 413 and "65536 JSON values" in refused.json()["error"]["message"]
    assert fine.status_code == 200
    assert len(stub.requests()) == before + 1
    assert [r.rule for r in refusals] == ["gateway.max_body_bytes"]


def test_a_body_nested_too_deep_to_parse_is_passed_on_as_it_is() -> None:
    body = b"[" * 100_000
    assert adjust_body("POST /v1/messages", body, max_values=1 << 20) == (body, None)


async def test_a_slowloris_client_is_cut_off_however_steadily_it_trickles(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    """A byte every 50 ms keeps the connection busy but does not move the deadline: the head
    and the body must each arrive whole within ``client_timeout`` of their start."""
    refusals: list[GatewayRefusal] = []
    limits = GatewayLimits(client_timeout=0.5, idle_timeout=5)
    gateway = await make_gateway(limits=limits, on_refused=refusals.append)
    before = len(stub.requests())
    body = json.dumps({"model": "claude", "messages": [MESSAGE]}).encode()
    head = _head("/anthropic/v1/messages", len(body))
    cases = {"head": (b"", head), "body": (head, body)}

    async def trickle(sent_at_once: bytes, trickled: bytes) -> tuple[int, float, int]:
        reader, writer = await _raw(gateway)
        writer.write(sent_at_once)
        started = time.monotonic()

        async def drip() -> int:
            sent = 0
            for byte in trickled:
                writer.write(bytes([byte]))
                sent += 1
                await asyncio.sleep(0.05)
            return sent

        dripping = asyncio.create_task(drip())
        code, _, answer = await _response(reader)
        took = time.monotonic() - started
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await dripping
        assert answer["error"]["type"] == "request_timeout"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
        writer.close()
        return code, took, len(trickled)

    for name, (sent_at_once, trickled) in cases.items():
        code, took, length = await trickle(sent_at_once, trickled)
        # cut at the deadline, long before the trickle would have finished
        assert code == 408 and 0.45 < took < 1.5 and length * 0.05 > 2 * took, (name, took)
    await gateway.stop()
    assert len(stub.requests()) == before  # nothing reached the model
    assert [(r.rule, r.status) for r in refusals][-1] == ("gateway.client_timeout_seconds", 408)
    assert refusals[-1].count == 2


FLOOD_CLIENT = r"""
import json, socket, sys, threading
path, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
piece = b"x" * (64 << 10)
statuses = []
lock = threading.Lock()

def one(i):
    chunked = i % 2 == 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {size}"
    sock.sendall(
        f"POST /anthropic/v1/messages HTTP/1.1\r\nhost: gw\r\n{framing}\r\n\r\n".encode()
    )
    sent = 0
    try:
        while sent < size:
            if chunked:
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                sock.sendall(piece)
            sent += len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the gateway answered and stopped reading: the answer is waiting
    answer = b""
    try:
        while b"\r\n" not in answer:
            more = sock.recv(4096)
            if not more:
                break
            answer += more
    except OSError:
        pass
    sock.close()
    with lock:
        statuses.append((chunked, int(answer.split()[1]) if answer else 0, sent))

def worker(ids):
    for i in ids:
        one(i)

threads = [threading.Thread(target=worker, args=(range(k, count, 8),)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(statuses))
"""


def _rss() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_fifty_oversized_bodies_leave_the_workers_memory_bounded(
    make_gateway: Factory, stub: StubUpstream
) -> None:
    """50 bodies of 12 MiB each (over the default 8 MiB), half with a Content-Length and half
    chunked, sent whole over 8 connections at a time by another process: 600 MiB offered to a
    gateway at its default limits. This process (the worker's role) grows by about what the
    run's buffer allows, not by what was sent."""
    import sys

    refusals: list[GatewayRefusal] = []
    gateway = await make_gateway(on_refused=refusals.append)  # the default limits
    before = len(stub.requests())
    size, count = 12 << 20, 50
    baseline = peak = _rss()
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOOD_CLIENT, str(gateway.socket_path), str(count), str(size),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    waiting = asyncio.create_task(client.communicate())
    while not waiting.done():
        peak = max(peak, _rss())
        await asyncio.sleep(0.01)
    out, _ = await waiting
    statuses = json.loads(out)
    await gateway.stop()
    growth = peak - baseline
    sent = sum(length for _, _, length in statuses)
    print(f"gateway RSS +{growth / (1 << 20):.1f} MiB at peak; {sent >> 20} MiB sent in bodies")
    assert len(statuses) == count and {status for _, status, _ in statuses} == {413}
    assert sum(chunked for chunked, _, _ in statuses) == count // 2
    assert len(stub.requests()) == before
    assert sent >= count * (8 << 20)  # each at least up to the limit: it was all offered
    assert growth < 80 << 20, growth  # the 32 MiB buffer, parsing and read buffers
    assert refusals and {r.rule for r in refusals} == {"gateway.max_body_bytes"}
    assert refusals[-1].count == count and len(refusals) <= 4  # a few counted reports


async def test_a_gateway_paused_for_setup_serves_again(make_gateway: Factory) -> None:
    """The setup phase stops the run's gateway (no setup command reaches a model) and starts it
    again for the agent: while stopped its socket is gone, afterwards it answers as before."""
    gateway = await make_gateway()
    await gateway.stop()
    assert not gateway.socket_path.exists()
    await gateway.start()
    async with sandbox_client(gateway) as client:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [MESSAGE]}
        answer = await client.post("/anthropic/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert answer.status_code == 200, answer.text
