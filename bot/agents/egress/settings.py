"""Settings of the setup phase's network: the egress proxy's allowlist and the dependency
caches (``BOSUN_EGRESS__*``, ``BOSUN_CACHES__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.domain.egress import BadEntry, Rule

DEFAULT_ALLOW: tuple[str, ...] = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "deb.debian.org",
    "security.debian.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "proxy.golang.org",
    "sum.golang.org",
)


def check_entries(values: list[str]) -> list[str]:
    for value in values:
        try:
            Rule.parse(value)
        except BadEntry as exc:
            raise ValueError(str(exc)) from exc
    return values


class EgressSettings(BaseModel):
    """The setup phase's egress proxy (and the agent's, with `agent_network: registries`)."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOW),
        description=(
            "Hosts every repository's setup may reach: `host`, `*.domain` or either with "
            "`:port` (no port: 80 and 443). Package registries by default; add your mirrors."
        ),
    )
    repository_may_allow: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts a repository may add with `egress.allow` in `.github/bosun.yml` (same "
            "forms; `*` lets it add any public host). Empty: repositories may only narrow."
        ),
    )
    private_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Exact hosts that may resolve to loopback, private or link-local addresses (an "
            "internal mirror). Any other name resolving there is refused (DNS rebinding)."
        ),
    )
    setup_timeout_seconds: int = Field(
        default=900, gt=0, description="Time the whole setup phase may take."
    )
    max_connections: int = Field(
        default=64, gt=0, description="Connections one run may hold open through the proxy."
    )
    connect_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Seconds to connect to an allowed host before a 502."
    )

    @field_validator("allow", "repository_may_allow")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        return check_entries(value)


class CacheSettings(BaseModel):
    """Per-repository dependency caches (pip, uv, npm, cargo, go), written by setup only."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Keep dependency caches between runs.")
    dir: Path | None = Field(
        default=None, description="Host folder of the caches; unset: `<data_dir>/caches`."
    )
    max_bytes_per_repository: int = Field(
        default=5 * 1024**3,
        gt=0,
        description=(
            "A repository's cache larger than this after setup is dropped, not kept; it is also "
            "how far a run's copy may grow during setup, and uv's writable copy while the agent "
            "runs (past it the command or the agent is stopped)."
        ),
    )
    max_bytes: int = Field(
        default=50 * 1024**3,
        gt=0,
        description="All caches together; past it the least recently used repositories' go.",
    )
