"""Pure parts of the gateway: the SSE/JSON usage meter, the pricing table, route building."""

from __future__ import annotations

import json

import pytest

from bot.agents.gateway import (
    DUMMY_KEY,
    UNKNOWN_MODEL_PRICE,
    Charge,
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
from bot.domain.states import RunState
from bot.domain.status import MAX_UNPRICED, RunView, check_run_update, flag_unpriced
from bot.errors import ConfigError
from bot.profiles import ProfileConfig
from bot.settings import GatewaySettings


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


KNOWN = [
    # (the model a response names, the catalogue's model id, the usage, dollars by hand)
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", Usage(100_000, 10_000), 0.3 + 0.15),
    ("claude-opus-4-5-20251101", "claude-opus-4-5", Usage(100_000, 10_000), 0.5 + 0.25),
    ("claude-haiku-4-5", "claude-haiku-4-5", Usage(0, 0, 1_000_000), 0.1),  # cache reads
    ("gpt-5-2025-08-07", "gpt-5", Usage(100_000, 10_000), 0.125 + 0.1),
    ("gpt-5-mini", "gpt-5-mini", Usage(1_000_000, 0), 0.25),
    ("gemini-2.5-pro", "gemini-2.5-pro", Usage(100_000, 10_000), 0.125 + 0.1),
    ("gemini-2.5-flash", "gemini-2.5-flash", Usage(1_000_000, 100_000), 0.3 + 0.25),
    # past 200K tokens of input, Sonnet 4.5 costs $6 / $22.50 per million for the request
    ("claude-sonnet-4-5", "claude-sonnet-4-5", Usage(300_000, 10_000), 1.8 + 0.225),
]


@pytest.mark.parametrize(("model", "entry", "usage", "dollars"), KNOWN)
def test_known_models_are_priced_from_the_genai_prices_catalogue(
    model: str, entry: str, usage: Usage, dollars: float
) -> None:
    import genai_prices

    charge = PricingTable().charge(model, usage)
    assert (charge.source, charge.matched, charge.known) == ("genai-prices", entry, True)
    assert charge.usd == pytest.approx(dollars)
    # the same number the package's own entry point gives
    counted = genai_prices.Usage(
        input_tokens=usage.total_input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        output_tokens=usage.output_tokens,
    )
    assert charge.usd == pytest.approx(float(genai_prices.calc_price(counted, model).total_price))


def test_an_override_wins_over_the_catalogue() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cache_read_tokens=1_000_000)
    settings = GatewaySettings.model_validate(
        {
            "prices": {
                "claude-sonnet-4": {"input": 1, "output": 2, "cache_read": 0.5},
                "claude-sonnet-4-5": {"input": 2, "output": 4},  # longer key: wins for 4.5
                "my-model": {"input": 2, "output": 4},
            }
        }
    )
    table = settings.pricing()
    sonnet = table.charge("claude-sonnet-4-5-20250929", usage)
    assert (sonnet.source, sonnet.matched) == ("override", "claude-sonnet-4-5")
    assert sonnet.usd == pytest.approx(2 + 2 + 2)  # cache reads at the input price when unset
    assert table.charge("claude-sonnet-4-20250514", usage).usd == pytest.approx(1 + 1 + 0.5)
    assert table.charge("my-model-v2", usage) == Charge(6.0, "override", "my-model")
    assert table.charge("gpt-5", usage).source == "genai-prices"  # the rest: the catalogue
    assert (
        PricingTable().with_overrides({"gpt-5": Price(input=0, output=0)}).cost("gpt-5", usage) == 0
    )  # an operator may declare a model free; only the operator


@pytest.mark.parametrize("model", ["mystery-model", "llama-3.1-8b-instruct", "x", None])
def test_an_unknown_model_is_charged_the_conservative_price_and_flagged(
    model: str | None,
) -> None:
    usage = Usage(input_tokens=100_000, output_tokens=10_000, cache_read_tokens=50_000)
    charge = PricingTable().charge(model, usage)
    assert (charge.source, charge.known, charge.matched) == ("unknown", False, None)
    assert charge.usd == pytest.approx(UNKNOWN_MODEL_PRICE.cost(usage)) and charge.usd > 0
    assert charge.usd == pytest.approx((100_000 * 15 + 10_000 * 75 + 50_000 * 15) / 1e6)
    custom = GatewaySettings(unknown_model_price=Price(input=30, output=150)).pricing()
    assert custom.charge(model, usage).usd == pytest.approx((150_000 * 30 + 10_000 * 150) / 1e6)
    # the flag: one policy event per model, and the cost in the status says it is an estimate
    view = RunView("r1", RunState.RUNNING, "o/r", 1, "t", "alice", "default", cost_usd=1.5)
    view.tokens_in = 150_000
    first = flag_unpriced(view, model, UNKNOWN_MODEL_PRICE.summary())
    assert first is not None and first["rule"] == "gateway.pricing"
    assert first["decision"] == "flag" and "gateway.prices" in first["message"]
    assert flag_unpriced(view, model, UNKNOWN_MODEL_PRICE.summary()) is None
    update = check_run_update(view)
    cost = f"{update.summary}\n{update.text}"
    assert "an estimate: no price is known for" in cost
    assert "$15 in / $75 out per million tokens" in cost


def test_the_unknown_price_is_above_mainstream_coding_models() -> None:
    mainstream = [
        "claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5", "gpt-5", "gpt-5-mini",
        "gpt-5.1", "gpt-4.1", "o3", "o4-mini", "gemini-2.5-pro", "gemini-2.5-flash",
    ]  # fmt: skip
    for name in mainstream:
        price = DEFAULT_PRICES[name]
        assert 0 < price.input <= UNKNOWN_MODEL_PRICE.input, name
        assert 0 < price.output <= UNKNOWN_MODEL_PRICE.output, name
    assert "gemini-2.5-pro" in set(DEFAULT_PRICES) and "mystery-model" not in DEFAULT_PRICES


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


def test_a_new_model_name_on_every_request_makes_a_bounded_number_of_flags() -> None:
    """The agent names the model: 1,000 made-up names are 10 flags, and the cost note stays
    one line naming five of them."""
    view = RunView("r1", RunState.RUNNING, "o/r", 1, "t", "alice", "default", cost_usd=9.0)
    events = [flag_unpriced(view, f"made-up-{i}`*{'x' * 500}", "$15") for i in range(1000)]
    assert sum(event is not None for event in events) == MAX_UNPRICED == 10
    assert all(len(name) == 120 for name in view.unpriced_models)
    update = check_run_update(view)
    note = next(line for line in (update.text or "").splitlines() if "an estimate" in line)
    assert note.count("made-up-") == 5 and " and more," in note and len(note) < 1200
