"""The setup phase's network (SPEC §6): a per-run egress proxy on the host that lets the
sandbox reach allowlisted hosts only, through the same in-sandbox forwarder as the model
gateway, and the per-repository dependency caches its commands fill."""

from __future__ import annotations

from bot.agents.egress.caches import caches_of
from bot.agents.egress.proxy import (
    EGRESS_MOUNT,
    PROXY_PORT,
    EgressProxy,
    EgressRecord,
    forwarder_argv,
    proxy_env,
    socket_dir,
)
from bot.agents.egress.settings import DEFAULT_ALLOW, CacheSettings, EgressSettings

__all__ = [
    "DEFAULT_ALLOW",
    "EGRESS_MOUNT",
    "PROXY_PORT",
    "CacheSettings",
    "EgressProxy",
    "EgressRecord",
    "EgressSettings",
    "caches_of",
    "forwarder_argv",
    "proxy_env",
    "socket_dir",
]
