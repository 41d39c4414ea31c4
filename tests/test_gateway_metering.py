"""Pure parts of the gateway: the SSE/JSON usage meter, the pricing table, route building."""

from __future__ import annotations

import json

import pytest

from bot.agents.gateway import (
    DUMMY_KEY,
    UNKNOWN_MODEL_PRICE,
    Price,
    PricingTable,
    Upstream,
    Usage,
    UsageMeter,
    agent_env,
    default_route,
    routes_for_profile,
)
from bot.agents.gateway.pricing import DEFAULT_PRICES
from bot.errors import ConfigError
from bot.profiles import ProfileConfig


def sse(*events: dict[str, object], newline: str = "\n") -> bytes:
    frames = [f"event: x{newline}data: {json.dumps(e)}{newline}{newline}" for e in events]
    return "".join(frames).encode()


ANTHROPIC_STREAM = sse(
    {
        "type": "message_start",
        "message": {
            "model": "claude-opus-4-1",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 20, "output_tokens": 1},
        },
    },
    {"type": "content_block_delta", "delta": {"text": 'data: {"usage": 99}\n\n'}},
    {"type": "message_delta", "usage": {"output_tokens": 30}},
    {"type": "message_stop"},
)


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
def test_sse_usage_survives_any_chunking(size: int) -> None:
    meter = UsageMeter(streaming=True)
    for start in range(0, len(ANTHROPIC_STREAM), size):
        meter.feed(ANTHROPIC_STREAM[start : start + size])
    meter.finish()
    assert meter.usage == Usage(input_tokens=10, output_tokens=30, cache_read_tokens=20)
    assert meter.model == "claude-opus-4-1"


def test_crlf_framing_and_a_missing_final_blank_line() -> None:
    body = sse(
        {"type": "response.created", "response": {"model": "gpt-5", "usage": None}},
        {
            "type": "response.completed",
            "response": {
                "model": "gpt-5",
                "usage": {
                    "input_tokens": 100,
                    "input_tokens_details": {"cached_tokens": 40},
                    "output_tokens": 7,
                },
            },
        },
        newline="\r\n",
    ).rstrip(b"\r\n")
    meter = UsageMeter(streaming=True)
    meter.feed(body)
    meter.finish()
    assert meter.usage == Usage(input_tokens=60, output_tokens=7, cache_read_tokens=40)


def test_cumulative_message_delta_counts_replace_the_start_counts() -> None:
    meter = UsageMeter(streaming=True)
    meter.feed(
        sse(
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 5, "output_tokens": 1}},
            },
            {
                "type": "message_delta",
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 8, "output_tokens": 9},
            },
        )
    )
    meter.finish()
    assert meter.usage == Usage(input_tokens=5, output_tokens=9, cache_write_tokens=8)


def test_a_response_without_usage_is_flagged_unmetered() -> None:
    meter = UsageMeter(streaming=False, request_model="gpt-5")
    meter.feed(b'{"error": {"message": "overloaded"}}')
    meter.finish()
    assert not meter.seen_usage and meter.usage == Usage() and meter.model == "gpt-5"


def test_chat_usage_in_the_last_chunk_and_done_marker() -> None:
    chunk = {"object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": []}
    usage = {"prompt_tokens": 50, "completion_tokens": 5}
    meter = UsageMeter(streaming=True)
    meter.feed(sse({**chunk, "usage": None}, {**chunk, "usage": usage}) + b"data: [DONE]\n\n")
    meter.finish()
    assert meter.usage == Usage(input_tokens=50, output_tokens=5)


def test_pricing_matches_the_longest_prefix() -> None:
    table = PricingTable()
    assert table.price_for("gpt-5-mini-2025-08-07") == (DEFAULT_PRICES["gpt-5-mini"], True)
    assert table.price_for("gpt-5-2025-08-07") == (DEFAULT_PRICES["gpt-5"], True)
    assert table.price_for("gpt-5-pro") == (DEFAULT_PRICES["gpt-5-pro"], True)
    assert table.price_for("claude-opus-4-5-20251101")[0].input == 5.0
    assert table.price_for("claude-opus-4-1-20250805")[0].input == 15.0
    assert table.price_for("mystery-model") == (UNKNOWN_MODEL_PRICE, False)
    assert table.price_for(None) == (UNKNOWN_MODEL_PRICE, False)


def test_unknown_models_are_never_cheaper_than_mainstream_ones() -> None:
    premium = {"gpt-5-pro", "o1", "o1-pro", "o3-pro"}
    for name, price in DEFAULT_PRICES.items():
        if name not in premium:
            assert price.input <= UNKNOWN_MODEL_PRICE.input, name
            assert price.output <= UNKNOWN_MODEL_PRICE.output, name


def test_pricing_overrides_and_cost() -> None:
    table = PricingTable().with_overrides({"my-model": Price(input=2, output=4)})
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cache_read_tokens=1_000_000)
    assert table.cost("my-model-v2", usage) == pytest.approx(2 + 2 + 2)  # reads at input price
    sonnet = table.cost("claude-sonnet-4-5", usage)
    assert sonnet == pytest.approx(3 + 7.5 + 0.3)


def test_routes_for_known_upstreams_and_agent_env() -> None:
    profile = ProfileConfig(
        runner="claude-code", upstreams=["https://api.anthropic.com/", "https://api.openai.com/v1"]
    )
    routes = routes_for_profile(profile)
    assert set(routes) == {"anthropic", "openai"}
    assert routes["openai"].base_url == "https://api.openai.com"
    assert routes["anthropic"].key_env == "ANTHROPIC_API_KEY"
    assert routes["openai"].auth_style == "bearer"
    assert agent_env(routes, 8788) == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8788/anthropic",
        "ANTHROPIC_API_KEY": DUMMY_KEY,
        "OPENAI_BASE_URL": "http://127.0.0.1:8788/openai/v1",
        "OPENAI_API_KEY": DUMMY_KEY,
    }


def test_routes_refuse_unknown_upstreams_unless_configured() -> None:
    profile = ProfileConfig(runner="codex", upstreams=["https://llm.internal:8443"])
    with pytest.raises(ConfigError, match="not a known model API"):
        routes_for_profile(profile)
    local = Upstream(api="openai", base_url="https://llm.internal:8443", key_env="LOCAL_KEY")
    routes = routes_for_profile(profile, {"https://llm.internal:8443/": local})
    assert routes == {"openai": local}
    assert local.allows("POST", "/v1/responses")
    assert not local.allows("POST", "/v1/responses/abc/cancel")


def test_routes_are_empty_without_model_access_and_prefixes_must_differ() -> None:
    none = ProfileConfig(network="none", upstreams=["https://api.anthropic.com"])
    assert routes_for_profile(none) == {}
    twice = ProfileConfig(upstreams=["https://api.openai.com", "https://llm.internal"])
    other = Upstream(api="openai", base_url="https://llm.internal")
    with pytest.raises(ConfigError, match="distinct prefix"):
        routes_for_profile(twice, {"https://llm.internal": other})
    renamed = Upstream(api="openai", base_url="https://llm.internal", prefix="local")
    assert set(routes_for_profile(twice, {"https://llm.internal": renamed})) == {"openai", "local"}


def test_keyless_upstream_sends_no_auth() -> None:
    upstream = Upstream(api="openai", base_url="http://127.0.0.1:8000", key_env="")
    assert upstream.auth_style == "none"
    with pytest.raises(ValueError, match="http"):
        Upstream(api="openai", base_url="file:///etc/passwd")


def test_default_route_follows_the_runner_api() -> None:
    both = routes_for_profile(
        ProfileConfig(upstreams=["https://api.anthropic.com", "https://api.openai.com"])
    )
    assert default_route("claude-code", both) == "anthropic"
    assert default_route("codex", both) == "openai"
    assert default_route("aider", both) is None
    only = {"openai": both["openai"]}
    assert default_route("aider", only) == "openai"
    assert default_route("claude-code", {}) is None
