"""The model gateway (SPEC §5.3): API keys stay on the host, the sandbox reaches model APIs only
through a per-run Unix socket, and every request is metered against the run's budget."""

from __future__ import annotations

from bot.agents.gateway.errors import GatewayError, MissingKey, SocketSetupError
from bot.agents.gateway.layout import (
    FORWARDER_PORT,
    GATEWAY_MOUNT,
    forwarder_argv,
    sandbox_mount,
    socket_dir,
)
from bot.agents.gateway.limits import GatewayLimits, GatewayRefusal
from bot.agents.gateway.metering import Usage, UsageMeter, UsageRecord
from bot.agents.gateway.pricing import (
    DEFAULT_PRICES,
    UNKNOWN_MODEL_PRICE,
    Charge,
    Price,
    PricingTable,
)
from bot.agents.gateway.routes import (
    DUMMY_KEY,
    KNOWN_UPSTREAMS,
    Upstream,
    agent_env,
    default_route,
    routes_for_profile,
)
from bot.agents.gateway.server import ModelGateway

__all__ = [
    "DEFAULT_PRICES",
    "DUMMY_KEY",
    "FORWARDER_PORT",
    "GATEWAY_MOUNT",
    "KNOWN_UPSTREAMS",
    "UNKNOWN_MODEL_PRICE",
    "Charge",
    "GatewayError",
    "GatewayLimits",
    "GatewayRefusal",
    "MissingKey",
    "ModelGateway",
    "Price",
    "PricingTable",
    "SocketSetupError",
    "Upstream",
    "Usage",
    "UsageMeter",
    "UsageRecord",
    "agent_env",
    "default_route",
    "forwarder_argv",
    "routes_for_profile",
    "sandbox_mount",
    "socket_dir",
]
