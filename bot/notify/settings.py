"""``notify.*`` settings: endpoints and how notifications are sent and retried."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

NotificationType = Literal["run.state_changed", "run.review_ready", "run.finished"]
NOTIFICATION_TYPES: tuple[NotificationType, ...] = (
    "run.state_changed",
    "run.review_ready",
    "run.finished",
)


def check_url(value: str) -> str:
    """An ``http(s)://host/...`` URL with no credentials in it."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; the signature authenticates Bosun")
    return value


def check_repo_pattern(value: str) -> str:
    owner, slash, name = value.partition("/")
    if not slash or not owner or not name or "/" in name:
        raise ValueError(f"{value!r} is not OWNER/NAME or OWNER/*")
    return value


class EndpointConfig(BaseModel):
    """One endpoint of ``notify.endpoints``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where notifications are POSTed (http or https).")
    secret: SecretStr = Field(description="Key of the HMAC-SHA256 signature.")
    name: str = Field(
        default="",
        max_length=128,
        description="Unique name (defaults to the URL); the API shows endpoints by it.",
    )
    events: list[NotificationType] = Field(
        default_factory=list, description="Notification types to send; empty: every type."
    )
    repos: list[str] = Field(
        default_factory=list,
        description="Repositories (`OWNER/NAME` or `OWNER/*`); empty: every repository.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("repos")
    @classmethod
    def _repos(cls, value: list[str]) -> list[str]:
        return [check_repo_pattern(v) for v in value]

    @model_validator(mode="after")
    def _default_name(self) -> EndpointConfig:
        if not self.name:
            self.name = self.url[:128]
        if len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters")
        return self


class NotifySettings(BaseModel):
    """Outbound webhooks: signed notifications of run changes (docs/operations.md)."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointConfig] = Field(
        default_factory=list,
        description=(
            'Endpoints as JSON (`[{"url": "https://ci.example/hook", "secret": "…", '
            '"events": ["run.finished"], "repos": ["octo/*"]}]`); kept in step with the '
            "database when a process starts. More can be added through `/api/v1/webhooks`."
        ),
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="How long one attempt may take (connect to answer)."
    )
    max_attempts: int = Field(
        default=10, ge=1, le=50, description="Attempts before a notification is given up (failed)."
    )
    retry_base_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Wait after the first failed attempt; doubles after each further one.",
    )
    retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Longest wait between two attempts."
    )
    sweep_seconds: int = Field(
        default=10,
        ge=1,
        le=60,
        description=(
            "Seconds between sweeps for notifications due (a divisor of 60): retries go out "
            "then; a new notification is sent at once."
        ),
    )
    concurrency: int = Field(
        default=8, ge=1, le=64, description="Notifications one worker sends at once."
    )

    @model_validator(mode="after")
    def _check(self) -> NotifySettings:
        if 60 % self.sweep_seconds:
            raise ValueError("sweep_seconds must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError("endpoint names must be unique")
        return self
