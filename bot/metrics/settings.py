"""``metrics.*`` settings: who may scrape ``/metrics``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class MetricsSettings(BaseModel):
    """Prometheus `/metrics`: who may scrape it, and a worker's own endpoint."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr | None = Field(
        default=None,
        description=(
            "When set, every scrape must send `Authorization: Bearer <token>` (401 otherwise), "
            "from any address."
        ),
    )
    public: bool = Field(
        default=False,
        description=(
            "Without a token: `false` answers loopback clients only (403 to others); `true` "
            "answers anyone. Behind a proxy on the same host every client looks local: set a "
            "token instead."
        ),
    )
    cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "How long one process reuses the counts it read from the database and Redis, so "
            "frequent scrapes cost the database one read per interval."
        ),
    )
    worker_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "Port on which each worker serves its own process-local metrics (GitHub calls, "
            "job pickup latency) at `/metrics`, with the same protection; unset: none."
        ),
    )
    worker_host: str = Field(
        default="127.0.0.1", description="Address the worker's metrics port listens on."
    )
