"""The gateway speaking Gemini's API, against the Gemini API stub over loopback, through the
run's Unix socket: the real key injected (the stub refuses any other) and every key the agent
sends dropped, header or query; the model endpoints allowed and nothing else; usage metered from
``usageMetadata`` however the answer is framed; the budget cut-off; steers in Gemini's format."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.agents.gateway import (
    DUMMY_KEY,
    ModelGateway,
    Upstream,
    Usage,
    UsageMeter,
    UsageRecord,
    agent_env,
    default_route,
    routes_for_profile,
)
from bot.agents.gateway.pricing import DEFAULT_PRICES
from bot.agents.gateway.steering import steer_payload
from bot.domain.steering import SteerMessage
from bot.profiles import ProfileConfig
from tests.modelstubs import ModelScript, ToolTurn
from tests.modelstubs.gemini import GeminiStub
from tests.modelstubs.server import running

REAL_KEY = "AIzaSy-REAL-" + "g" * 28
ROOT = Path("/tmp/bgw-tests")  # short: Unix socket paths are limited to 107 bytes
MODEL = "gemini-2.5-pro"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent"
TOOLS = [{"functionDeclarations": [{"name": "write_file", "parameters": {"type": "OBJECT"}}]}]
PROMPT = {"role": "user", "parts": [{"text": "Write colour.txt"}]}


class Harness:
    """A Gemini stub (refusing every key but the real one) behind one run's gateway."""

    def __init__(self, stub: GeminiStub, gateway: ModelGateway) -> None:
        self.stub, self.gateway = stub, gateway
        self.records: list[UsageRecord] = []
        self.delivered: list[tuple[list[SteerMessage], int]] = []

    def client(self) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.gateway.socket_path))
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8788", timeout=30)


@pytest.fixture
def stub_script() -> ModelScript:
    return ModelScript(
        [ToolTurn("write_file", {"file_path": "a.txt", "content": "x"}, text="Writing.")] * 20
    )


@pytest.fixture
async def harness(
    stub_script: ModelScript, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    budget = getattr(request, "param", None)
    stub = GeminiStub(stub_script, key=REAL_KEY, cached_tokens=50, thoughts_tokens=25)
    path = ROOT / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    with running(stub) as url:
        routes = {"gemini": Upstream(api="gemini", base_url=url)}
        holder: list[Harness] = []
        gateway = ModelGateway(
            "run-gemini",
            path / "gateway",
            routes,
            environ={"GEMINI_API_KEY": REAL_KEY},
            default_route="gemini",
            budget_usd=budget,
            on_usage=lambda record: holder[0].records.append(record),
            on_steered=lambda messages, n: holder[0].delivered.append((messages, n)),
        )
        harness = Harness(stub, gateway)
        holder.append(harness)
        await gateway.start()
        try:
            yield harness
        finally:
            await gateway.stop()
            shutil.rmtree(path, ignore_errors=True)


def body(contents: list[dict[str, Any]], tools: bool = True) -> dict[str, Any]:
    payload: dict[str, Any] = {"contents": contents, "generationConfig": {"temperature": 0}}
    if tools:
        payload["tools"] = TOOLS
    return payload


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "alt=sse",
        "alt=sse&key=AIza-agent",
        "key=AIza-agent&alt=sse",
        "alt=sse&KEY=x&access_token=y",
        "%6Bey=AIza-agent&alt=sse",
        "alt=sse&key",
    ],
)
async def test_the_real_key_replaces_every_key_the_agent_sends(
    harness: Harness, query: str
) -> None:
    async with harness.client() as client:
        headers = {"x-goog-api-key": DUMMY_KEY, "authorization": f"Bearer {DUMMY_KEY}"}
        response = await client.post(f"{STREAM}?{query}", json=body([PROMPT]), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    (seen,) = harness.stub.seen
    assert seen["key"] == REAL_KEY and seen["query"] == "alt=sse"
    (call,) = harness.stub.script.requests
    assert "authorization" not in call["headers"]


@pytest.mark.parametrize(
    ("query", "forwarded"),
    [
        ("alt=sse&fields=candidates", "alt=sse"),
        ("alt=sse&%24fields=candidates&prettyPrint=false", "alt=sse"),
        ("alt=proto", ""),
        ("alt=json&callback=steal", ""),
        ("alt=media&alt=sse", "alt=sse"),
    ],
)
async def test_parameters_that_would_hide_the_usage_are_not_forwarded(
    harness: Harness, query: str, forwarded: str
) -> None:
    """Google's system parameters and headers that leave ``usageMetadata`` out of the answer
    (a field mask), change its format (protobuf, JSONP) or the method never reach upstream:
    every answer is metered."""
    headers = {
        "x-goog-fieldmask": "candidates",
        "x-http-method-override": "GET",
        "accept": "application/x-protobuf",
        "content-type": "application/json+protobuf",
    }
    async with harness.client() as client:
        response = await client.post(f"{STREAM}?{query}", json=body([PROMPT]), headers=headers)
    assert response.status_code == 200, response.text
    (seen,) = harness.stub.seen
    assert seen["query"] == forwarded
    (call,) = harness.stub.script.requests
    assert not {"x-goog-fieldmask", "x-http-method-override"} & set(call["headers"])
    assert call["headers"]["content-type"] == "application/json"
    assert call["headers"]["accept"] == "*/*"
    (record,) = harness.records
    assert record.metered and record.usage == EXPECTED


async def test_unprefixed_paths_reach_the_gemini_route(harness: Harness) -> None:
    """The runner points GOOGLE_GEMINI_BASE_URL at the bare forwarder URL."""
    async with harness.client() as client:
        prefixed = await client.post(f"/gemini{STREAM}?alt=sse", json=body([PROMPT]))
        bare = await client.post(f"{STREAM}?alt=sse", json=body([PROMPT]))
    assert prefixed.status_code == bare.status_code == 200
    assert [s["path"] for s in harness.stub.seen] == [STREAM, STREAM]


# -- allow-list ----------------------------------------------------------------------------------

REFUSED = [
    ("POST", f"/v1beta/models/{MODEL}:batchGenerateContent"),
    ("POST", f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"),
    ("POST", "/v1beta/cachedContents"),
    ("POST", "/upload/v1beta/files"),
    ("GET", "/v1beta/files"),
    ("POST", "/v1beta/tunedModels/mine:generateContent"),
    ("POST", "/v1beta/models/../files:generateContent"),
    ("POST", "/v1beta/models/a%2F..%2Ffiles:generateContent"),
    ("POST", "/v1beta/models/.hidden:generateContent"),
    ("POST", "/v1beta/models/:generateContent"),
    ("POST", f"/v1beta/models/{MODEL}:generateContent/extra"),
    ("POST", f"/v1beta/models/{MODEL}/x:generateContent"),
    ("GET", f"/v1beta/models/{MODEL}:generateContent"),
    ("DELETE", f"/v1beta/models/{MODEL}"),
    ("POST", f"/v2/models/{MODEL}:generateContent"),
    ("POST", "/v1beta/models/" + "m" * 129 + ":generateContent"),
]


async def test_only_the_model_endpoints_pass(harness: Harness) -> None:
    async with harness.client() as client:
        for method, path in REFUSED:
            response = await client.request(method, path, json=body([PROMPT]))
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["type"] == "forbidden"
        allowed = [
            ("POST", f"/v1beta/models/{MODEL}:countTokens"),
            ("GET", "/v1beta/models"),
            ("GET", f"/v1/models/{MODEL}"),
            ("POST", f"/v1/models/{MODEL}:generateContent"),
        ]
        for method, path in allowed:
            response = await client.request(method, path, json=body([PROMPT]))
            assert response.status_code == 200, (method, path, response.text)
    assert [(s["method"], s["path"]) for s in harness.stub.seen] == allowed


# -- metering ------------------------------------------------------------------------------------

# Per scripted tool turn the stub reports promptTokenCount 250 (50 of them cached),
# candidatesTokenCount 40 and thoughtsTokenCount 25.
EXPECTED = Usage(input_tokens=200, output_tokens=65, cache_read_tokens=50)
FRAMINGS = {
    "sse": (STREAM + "?alt=sse", True),
    "json-array": (STREAM, False),
    "whole": (f"/v1beta/models/{MODEL}:generateContent", False),
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_usage_metadata_is_metered_and_priced(harness: Harness, framing: str) -> None:
    path, streamed = FRAMINGS[framing]
    async with harness.client() as client:
        response = await client.post(path, json=body([PROMPT]))
    assert response.status_code == 200, response.text
    (record,) = harness.records
    assert record.usage == EXPECTED and record.metered and record.streamed is streamed
    assert record.model == MODEL and record.known_model and record.upstream == "gemini"
    price = DEFAULT_PRICES[MODEL]
    read = price.input if price.cache_read is None else price.cache_read
    dollars = (200 * price.input + 65 * price.output + 50 * read) / 1e6
    assert record.cost_usd == pytest.approx(dollars)
    assert harness.gateway.spent_usd == pytest.approx(dollars)


async def test_count_tokens_is_free_and_the_path_names_the_model(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post(f"/v1beta/models/{MODEL}:countTokens", json=body([PROMPT]))
    assert response.json() == {"totalTokens": 100, "promptTokensDetails": []}
    (record,) = harness.records
    assert record.model == MODEL and not record.metered and record.cost_usd == 0


async def test_the_path_names_the_model_when_the_answer_does_not(
    stub_script: ModelScript,
) -> None:
    """The model Gemini runs is the one in the path: a cheaper name in the body changes
    nothing (should an answer lack ``modelVersion``)."""
    stub = GeminiStub(stub_script, key=REAL_KEY, model_version=False)
    records: list[UsageRecord] = []
    path = ROOT / uuid.uuid4().hex[:8]
    with running(stub) as url:
        gateway = ModelGateway(
            "run-gemini",
            path / "gateway",
            {"gemini": Upstream(api="gemini", base_url=url)},
            environ={"GEMINI_API_KEY": REAL_KEY},
            on_usage=records.append,
        )
        async with gateway:
            transport = httpx.AsyncHTTPTransport(uds=str(gateway.socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                cheap = {**body([PROMPT]), "model": "gemini-2.0-flash-lite"}
                response = await client.post(f"/gemini{STREAM}?alt=sse", json=cheap)
    shutil.rmtree(path, ignore_errors=True)
    assert response.status_code == 200
    (record,) = records
    assert record.model == MODEL and record.metered


def sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


def test_streamed_counts_are_read_whatever_the_chunking() -> None:
    """Later chunks replace earlier counts field by field; a chunk without candidates (an
    intermediate one) does not zero what came before."""
    chunks = [
        {"usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 600}},
        {"usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 7}},
        {
            "usageMetadata": {
                "promptTokenCount": 1000,
                "cachedContentTokenCount": 600,
                "toolUsePromptTokenCount": 30,
                "candidatesTokenCount": 90,
                "thoughtsTokenCount": 400,
            },
            "modelVersion": "gemini-2.5-flash",
        },
        {"usageMetadata": {"promptTokenCount": 1000}},
    ]
    raw = sse(chunks)
    expected = Usage(input_tokens=430, output_tokens=490, cache_read_tokens=600)
    for size in (1, 3, 7, 64, len(raw)):
        meter = UsageMeter(streaming=True, request_model=MODEL)
        for i in range(0, len(raw), size):
            meter.feed(raw[i : i + size])
        meter.finish()
        assert meter.usage == expected and meter.model == "gemini-2.5-flash", size
    meter = UsageMeter(streaming=False)
    meter.feed(json.dumps(chunks).encode())  # the JSON array of a stream without ?alt=sse
    meter.finish()
    assert meter.usage == expected


def test_hostile_usage_numbers_are_ignored() -> None:
    meter = UsageMeter(streaming=False)
    usage = {"promptTokenCount": -5, "candidatesTokenCount": "9", "thoughtsTokenCount": True}
    meter.feed(json.dumps({"usageMetadata": usage}).encode())
    meter.finish()
    assert meter.usage == Usage() and not meter.seen_usage
    cached_over = UsageMeter(streaming=False)  # a cached count above the prompt: capped
    cached_over.feed(b'{"usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 99}}')
    cached_over.finish()
    assert cached_over.usage == Usage(input_tokens=0, cache_read_tokens=10)


@pytest.mark.parametrize("harness", [0.0005], indirect=True)
async def test_the_budget_cuts_gemini_off_like_the_others(harness: Harness) -> None:
    async with harness.client() as client:
        first = await client.post(f"{STREAM}?alt=sse", json=body([PROMPT]))
        second = await client.post(f"{STREAM}?alt=sse", json=body([PROMPT]))
    assert first.status_code == 200 and harness.gateway.exhausted
    assert second.status_code == 402 and "/budget +" in second.json()["error"]["message"]
    assert len(harness.stub.seen) == 1  # the refused request never left the host


# -- steering ------------------------------------------------------------------------------------

CALL = {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {}}}]}
RESULT = {
    "role": "user",
    "parts": [{"functionResponse": {"name": "write_file", "response": {"output": "ok"}}}],
}


async def test_a_steer_joins_the_function_results_and_stays_in_place(harness: Harness) -> None:
    gateway = harness.gateway
    async with harness.client() as client:

        async def ask(contents: list[dict[str, Any]], tools: bool = True) -> dict[str, Any]:
            seen = len(harness.stub.script.requests)
            response = await client.post(f"{STREAM}?alt=sse", json=body(contents, tools))
            assert response.status_code == 200, response.text
            return harness.stub.script.requests[seen]["body"]

        gateway.steer([SteerMessage("alice", "Use blue, STEER-g1.", 1)])
        assert await ask([PROMPT], tools=False) == body([PROMPT], tools=False)  # a side request
        waiting = [PROMPT, CALL]  # the model's call still waits for its result: not now
        assert await ask(waiting) == body(waiting)
        assert harness.delivered == [] and len(gateway.pending_steers) == 1

        sent = await ask([PROMPT, CALL, RESULT])
        last = sent["contents"][-1]
        assert last["role"] == "user" and len(sent["contents"]) == 3
        assert last["parts"][0] == RESULT["parts"][0]  # the function response stays first
        steer = last["parts"][1]["text"]
        assert "Message from @alice" in steer and "through Bosun" in steer and "STEER-g1" in steer
        assert [(len(m), n) for m, n in harness.delivered] == [(1, 3)]

        text = {"role": "model", "parts": [{"text": "Done."}]}
        grown = [PROMPT, CALL, RESULT, CALL, RESULT, text]
        later = await ask(grown)
        assert later["contents"][2] == last and json.dumps(later).count("STEER-g1") == 1
        assert later["contents"][3:] == grown[3:]
        other = await ask([{"role": "user", "parts": [{"text": "another task"}]}, CALL, RESULT])
        assert "STEER-g1" not in json.dumps(other)  # another conversation
        assert len(harness.delivered) == 1


def test_a_steer_after_a_model_text_turn_is_a_user_turn_of_its_own() -> None:
    text = {"role": "model", "parts": [{"text": "What colour?"}]}
    payload = body([PROMPT, text])
    changed, placed = steer_payload("POST /v1beta/models/{model}:generateContent", payload, "S")
    assert changed and placed is not None and not placed.joined
    assert payload["contents"][-1] == {"role": "user", "parts": [{"text": "S"}]}
    # The CLI answers with its own user turn next: the steer is merged into it, never two
    # user turns in a row.
    reply = {"role": "user", "parts": [{"text": "blue"}]}
    later = body([PROMPT, text, reply])
    assert steer_payload("POST /v1/models/{model}:streamGenerateContent", later, None, [placed])[0]
    assert later["contents"][2] == {"role": "user", "parts": [{"text": "S"}, {"text": "blue"}]}


def test_gemini_routes_keys_and_default_route() -> None:
    profile = ProfileConfig(
        runner="gemini", upstreams=["https://generativelanguage.googleapis.com"]
    )
    routes = routes_for_profile(profile)
    (route,) = routes.values()
    assert list(routes) == ["gemini"] and route.key_env == "GEMINI_API_KEY"
    assert route.auth_style == "x-goog-api-key"
    assert default_route("gemini", routes) == "gemini"
    assert agent_env(routes, 8788) == {
        "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:8788/gemini",
        "GEMINI_API_KEY": DUMMY_KEY,
    }
    found = route.endpoint("post", f"/v1beta/models/{MODEL}:streamGenerateContent")
    assert found is not None and found.model == MODEL
    assert found.template == "POST /v1beta/models/{model}:streamGenerateContent"
    assert route.endpoint("POST", "/v1beta/models/{model}:generateContent") is None
