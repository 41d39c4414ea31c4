"""What a metered model request cost, in dollars.

A price is found by the model's name alone — whichever route served it (Anthropic, OpenAI,
Gemini, an OpenAI-compatible server) — the first of:

1. **the operator's overrides** (``gateway.prices``): dollars per million tokens, for every
   model name a key starts with (the longest key wins: ``my-model`` prices ``my-model-v2``);
2. **the genai-prices catalogue**: the snapshot of https://github.com/pydantic/genai-prices the
   installed ``genai-prices`` package ships (never fetched at run time), which knows dated
   snapshots and aliases (``claude-sonnet-4-5-20250929``, ``gemini-flash-latest``), long-context
   tiers and price changes by date;
3. **unknown**: ``unknown`` (``gateway.unknown_model_price``; by default ``UNKNOWN_MODEL_PRICE``,
   Claude Opus 4 rates with no cache discount, above every mainstream coding model), and the
   charge says so (``Charge.known`` false) so the run can flag it. A catalogue price of $0 for
   usage that is not zero counts as unknown too: a free model is the operator's to declare.

Never $0 for a model nobody priced, so an unknown model over-counts a run's spend rather than
slipping past its budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.agents.gateway.metering import Usage

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo

MTOK = 1_000_000
CATALOGUE_PROVIDERS = ("anthropic", "openai", "google")
"""Whose models ``DEFAULT_PRICES`` lists (any model the catalogue knows is priced)."""


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

    def summary(self) -> str:
        return f"${self.input:g} in / ${self.output:g} out per million tokens"


UNKNOWN_MODEL_PRICE = Price(input=15.0, output=75.0, cache_read=15.0, cache_write=18.75)
"""Price of a model nobody priced: Claude Opus 4 rates with no cache discount, above every
mainstream coding model, so an unknown model's spend is over-counted rather than missed."""

Source = Literal["override", "genai-prices", "unknown"]


@dataclass(frozen=True)
class Charge:
    """What one request cost and where its price came from."""

    usd: float
    source: Source
    matched: str | None = None
    """The override key or the catalogue's model id that priced it."""

    @property
    def known(self) -> bool:
        return self.source != "unknown"


# --- the genai-prices catalogue ------------------------------------------------------------


@cache
def _snapshot() -> Any:
    """The catalogue the package ships (imported on first use: it is 1.6 MB of data)."""
    from genai_prices.data_snapshot import get_snapshot

    return get_snapshot()


def catalogue_model(model: str) -> ModelInfo | None:
    """The catalogue's entry for ``model`` (by name alone), or ``None``."""
    try:
        _, info = _snapshot().find_provider_model(model, None, None, None)
    except LookupError:
        return None
    return info  # type: ignore[no-any-return]


def catalogue_cost(model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
    """The catalogue's dollars for ``usage`` of ``model`` (its tier for this request's input,
    its price on ``at``, by default now), or ``None`` when it does not know the model."""
    from genai_prices import Usage as CatalogueUsage

    info = catalogue_model(model)
    if info is None:
        return None
    prices = info.get_prices(at or datetime.now(UTC))
    counted = CatalogueUsage(
        input_tokens=usage.total_input_tokens,  # the catalogue counts cached input within it
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
    return Decimal(prices.calc_price(counted)["total_price"])


def _rate(value: object) -> float | None:
    """A catalogue rate (a number, or tiers: their base) in dollars per million tokens."""
    if value is None:
        return None
    base = getattr(value, "base", value)
    return float(base)  # type: ignore[arg-type]


def catalogue_price(model: str, at: datetime | None = None) -> Price | None:
    """The catalogue's base rates for ``model`` (below any long-context tier), or ``None``."""
    info = catalogue_model(model)
    if info is None:
        return None
    prices = info.get_prices(at or datetime.now(UTC))
    rates = {
        name: _rate(getattr(prices, f"{name}_mtok", None))
        for name in ("input", "output", "cache_read", "cache_write")
    }
    if rates["input"] is None or rates["output"] is None:
        return None
    return Price(
        input=rates["input"],
        output=rates["output"],
        cache_read=rates["cache_read"],
        cache_write=rates["cache_write"],
    )


class _Catalogue(Mapping[str, Price]):
    """The catalogue as a mapping of model names to their base rates: any name the catalogue
    matches (``DEFAULT_PRICES["claude-sonnet-4-5-20250929"]``); iterating lists the model ids
    of ``CATALOGUE_PROVIDERS``."""

    def __getitem__(self, model: str) -> Price:
        price = catalogue_price(model)
        if price is None:
            raise KeyError(model)
        return price

    def _ids(self) -> list[str]:
        return [
            info.id
            for provider in _snapshot().providers
            if provider.id in CATALOGUE_PROVIDERS
            for info in provider.models
        ]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids())

    def __len__(self) -> int:
        return len(self._ids())


DEFAULT_PRICES: Mapping[str, Price] = _Catalogue()
"""The genai-prices catalogue's base rates by model name."""


# --- the table a gateway charges from ------------------------------------------------------


@dataclass(frozen=True)
class PricingTable:
    """The operator's overrides over the genai-prices catalogue, and the price of an unknown
    model (``catalogue=False`` leaves out the catalogue: overrides and unknown only)."""

    overrides: Mapping[str, Price] = field(default_factory=dict)
    unknown: Price = UNKNOWN_MODEL_PRICE
    catalogue: bool = True

    def _override(self, model: str) -> str | None:
        name = model.lower()
        return max(
            (key for key in self.overrides if name.startswith(key.lower())), key=len, default=None
        )

    def charge(self, model: str | None, usage: Usage) -> Charge:
        """What ``usage`` of ``model`` cost (``model`` ``None``: the response named none)."""
        if model:
            key = self._override(model)
            if key is not None:
                return Charge(self.overrides[key].cost(usage), "override", key)
            if self.catalogue:
                info = catalogue_model(model)
                dollars = catalogue_cost(model, usage) if info is not None else None
                used = usage.total_input_tokens + usage.output_tokens
                if info is not None and dollars is not None and (dollars > 0 or not used):
                    return Charge(float(dollars), "genai-prices", info.id)
        return Charge(self.unknown.cost(usage), "unknown")

    def cost(self, model: str | None, usage: Usage) -> float:
        return self.charge(model, usage).usd

    def with_overrides(
        self, overrides: Mapping[str, Price], *, unknown: Price | None = None
    ) -> PricingTable:
        """A copy with ``overrides`` added or replacing rows (and optionally a new fallback)."""
        merged = {**self.overrides, **overrides}
        return PricingTable(merged, unknown or self.unknown, self.catalogue)
