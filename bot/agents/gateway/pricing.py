"""Model prices in dollars per million tokens, and the dollars a metered request cost.

A model name matches the longest table key it starts with, so dated snapshots
(``claude-sonnet-4-5-20250929``, ``gpt-5-2025-08-07``) price like their family. A model no key
matches is priced at ``UNKNOWN_MODEL_PRICE`` (Claude Opus 4 rates, no cache discount), above every
mainstream coding model, so an unknown model over-counts a run's spend rather than slipping past
its budget; the premium "pro" models carry their own rows. Operators override or
extend the table with ``PricingTable.with_overrides``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from bot.agents.gateway.metering import Usage

MTOK = 1_000_000


class Price(BaseModel):
    """Dollars per million tokens for one model family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="Uncached input tokens.")
    output: float = Field(ge=0, description="Output tokens (reasoning tokens included).")
    cache_read: float | None = Field(
        default=None, ge=0, description="Cached input tokens read; unset = the input price."
    )
    cache_write: float | None = Field(
        default=None, ge=0, description="Input tokens written to the cache; unset = input price."
    )

    def cost(self, usage: Usage) -> float:
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        dollars = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * read
            + usage.cache_write_tokens * write
        )
        return dollars / MTOK


def _p(input: float, output: float, cache_read: float, cache_write: float | None = None) -> Price:
    return Price(input=input, output=output, cache_read=cache_read, cache_write=cache_write)


DEFAULT_PRICES: dict[str, Price] = {
    # Anthropic: cache writes are the 5-minute tier (1.25x input), cache reads 0.1x input.
    "claude-opus-4-5": _p(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4": _p(15.0, 75.0, 1.50, 18.75),
    "claude-3-opus": _p(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-7-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-5-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": _p(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": _p(0.80, 4.0, 0.08, 1.0),
    "claude-3-haiku": _p(0.25, 1.25, 0.03, 0.30),
    # OpenAI: cached input is a discounted read; there is no separate write price.
    "gpt-5": _p(1.25, 10.0, 0.125),
    "gpt-5-mini": _p(0.25, 2.0, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-4.1": _p(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.0, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "gpt-5-pro": _p(15.0, 120.0, 15.0),
    "o1": _p(15.0, 60.0, 7.50),
    "o1-mini": _p(1.10, 4.40, 0.55),
    "o1-pro": _p(150.0, 600.0, 150.0),
    "o3": _p(2.0, 8.0, 0.50),
    "o3-pro": _p(20.0, 80.0, 20.0),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "codex-mini": _p(1.50, 6.0, 0.375),
    # Google Gemini, prompts up to 200K tokens (longer ones cost more); thinking tokens are
    # billed as output, implicitly cached input as a discounted read.
    "gemini-3-pro": _p(2.0, 12.0, 0.20),
    "gemini-2.5-pro": _p(1.25, 10.0, 0.125),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(0.075, 0.30, 0.075),
}

UNKNOWN_MODEL_PRICE = _p(15.0, 75.0, 15.0, 18.75)
"""Price of a model no table key matches: Claude Opus 4 rates with no cache discount, above
every mainstream coding model, so an unknown model's spend is over-counted rather than missed."""


@dataclass(frozen=True)
class PricingTable:
    """Per-model prices with longest-prefix matching and a fallback for unknown models."""

    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    unknown: Price = UNKNOWN_MODEL_PRICE

    def price_for(self, model: str | None) -> tuple[Price, bool]:
        """The price of ``model`` and whether the table knew it."""
        if model:
            name = model.lower()
            best = max(
                (key for key in self.prices if name.startswith(key.lower())), key=len, default=None
            )
            if best is not None:
                return self.prices[best], True
        return self.unknown, False

    def cost(self, model: str | None, usage: Usage) -> float:
        return self.price_for(model)[0].cost(usage)

    def with_overrides(
        self, overrides: Mapping[str, Price], *, unknown: Price | None = None
    ) -> PricingTable:
        """A copy with ``overrides`` added or replacing rows (and optionally a new fallback)."""
        return PricingTable({**self.prices, **overrides}, unknown or self.unknown)
