"""Bosun's settings: one pydantic-settings model, built once by an entrypoint and passed down.

Environment names are ``BOSUN_<GROUP>__<FIELD>`` (for example ``BOSUN_DATABASE__URL``).
``docs/configuration.md`` is generated from this module by ``scripts/gen_config_docs.py``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.agents.egress.settings import CacheSettings, EgressSettings
from bot.agents.gateway.limits import GatewayLimits
from bot.agents.gateway.pricing import UNKNOWN_MODEL_PRICE, Price, PricingTable
from bot.agents.gateway.routes import Upstream
from bot.envfiles import FileValuesSource, WithoutFileVariables, env_file_path, read_env_file
from bot.errors import ConfigError
from bot.metrics.settings import MetricsSettings
from bot.notify.settings import NotifySettings
from bot.profiles import ProfileConfig, load_profiles
from bot.web.dashboard.settings import DashboardSettings
from sandboxes.seccomp import check_profile_name

DEFAULT_DATA_DIR = Path("var")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Group):
    """Where Bosun keeps its state (the source of truth)."""

    url: str = Field(
        default="sqlite+aiosqlite:///var/bosun.db",
        description=(
            "SQLAlchemy async URL. SQLite (`sqlite+aiosqlite:///path`) is the embedded default; "
            "use `postgresql+asyncpg://user:pass@host/db` to scale out."
        ),
    )
    echo: bool = Field(default=False, description="Log every SQL statement (debugging only).")


class ArtifactSettings(_Group):
    """Where run artifacts (diff, transcript, gate output, manifest, …) are kept."""

    backend: Literal["filesystem", "database"] = Field(
        default="filesystem",
        description=(
            "`filesystem`: files under `<data_dir>/artifacts/<run>/` on the worker that wrote "
            "them (one host, or a shared volume). `database`: in the database, so web processes "
            "and workers on different hosts share nothing but the database and Redis."
        ),
    )
    max_database_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description=(
            "Largest artifact the `database` backend keeps; a larger one is cut at this size "
            "and its `artifact` event says `truncated`."
        ),
    )


class RedisSettings(_Group):
    """The job transport. Losing it loses nothing: the database is the source of truth."""

    url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis DSN for the arq queue.")
    namespace: str = Field(
        default="bosun",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every Redis key and of the queue name (one Redis, many Bosuns).",
    )
    password: SecretStr | None = Field(
        default=None,
        description=(
            "Password Redis requires (`requirepass`). A password written in `url` "
            "(`redis://:PASSWORD@host`) is taken out of it and kept here. Prefer `password_file`."
        ),
    )
    password_file: Path | None = Field(
        default=None,
        description=(
            "File holding the Redis password (`scripts/bootstrap.sh` keeps one in "
            "`/etc/bosun/redis-password`, root-only)."
        ),
    )
    spawn_local: bool = Field(
        default=True,
        description=(
            "`bosun up` starts a private `redis-server` child when none answers at `url` "
            "(loopback URLs only), requiring the configured password or a generated one."
        ),
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> RedisSettings:
        url, in_url = split_redis_password(self.url)
        sources = [in_url is not None, self.password is not None, self.password_file is not None]
        if sum(sources) > 1:
            raise ValueError(
                "set the Redis password in one place: redis.url, redis.password or "
                "redis.password_file"
            )
        if in_url is not None:
            self.url, self.password = url, SecretStr(in_url)
        return self

    def password_value(self) -> str | None:
        """The password Redis wants, read from ``password_file`` when one is configured."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(
                f"cannot read redis.password_file {self.password_file}: {exc.strerror}"
            ) from exc

    @property
    def queue_name(self) -> str:
        return f"{self.namespace}:queue"

    def key(self, *parts: str) -> str:
        """A namespaced Redis key: ``key("cancel", run_id)`` → ``bosun:cancel:<run_id>``."""
        return ":".join((self.namespace, *parts))


def split_redis_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (``None`` when it holds none). A user
    name (Redis ACL) stays in the URL."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url, None
    user, _, password = userinfo.partition(":")
    netloc = f"{user}@{hostport}" if user else hostport
    return urlunsplit(parts._replace(netloc=netloc)), unquote(password)


class GitHubSettings(_Group):
    """The GitHub App Bosun acts as, and where GitHub is."""

    app_id: int | None = Field(default=None, description="The GitHub App's numeric id.")
    private_key: SecretStr | None = Field(
        default=None, description="The App's private key (PEM text). Prefer `private_key_file`."
    )
    private_key_file: Path | None = Field(
        default=None, description="Path of a file holding the App's private key (PEM)."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Secret GitHub signs webhook deliveries with (HMAC-SHA256)."
    )
    client_id: str | None = Field(default=None, description="OAuth client id of the App.")
    client_secret: SecretStr | None = Field(default=None, description="OAuth client secret.")
    api_url: str = Field(
        default="https://api.github.com",
        description="REST API base URL (`https://HOST/api/v3` on GitHub Enterprise Server).",
    )
    web_url: str = Field(
        default="https://github.com", description="Web base URL, used for links and git remotes."
    )
    max_retries: int = Field(default=5, ge=0, description="Retries of a failed GitHub call.")
    retry_base_seconds: float = Field(
        default=1.0, gt=0, description="First backoff after a 5xx; doubles per retry."
    )
    secondary_backoff_seconds: float = Field(
        default=60.0, ge=0, description="Minimum wait after a secondary rate limit."
    )
    slug: str = Field(
        default="bosun", description="The App's slug; its bot login is `<slug>[bot]`."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> GitHubSettings:
        if self.private_key is not None and self.private_key_file is not None:
            raise ValueError("set either github.private_key or github.private_key_file, not both")
        return self

    def private_key_pem(self) -> str | None:
        """The App's private key text, read from the file when one is configured."""
        if self.private_key is not None:
            return self.private_key.get_secret_value()
        if self.private_key_file is not None:
            return self.private_key_file.read_text()
        return None

    @property
    def bot_login(self) -> str:
        return f"{self.slug}[bot]"


class SandboxSettings(_Group):
    """Defaults for agent containers. Profiles may narrow them."""

    docker_host: str | None = Field(
        default=None, description="Docker engine URL; unset means the `DOCKER_HOST` default."
    )
    image: str = Field(
        default="bosun-agent:latest", description="Default agent image for profiles that name none."
    )
    base_image: str = Field(
        default="debian:bookworm-slim", description="Base image the agent image is built from."
    )
    memory: str = Field(default="2g", description="Memory limit per sandbox (docker units).")
    cpus: float = Field(default=1.0, gt=0, description="CPU limit per sandbox.")
    pids: int = Field(default=512, gt=0, description="Process limit per sandbox.")
    tmpfs_size: str = Field(default="256m", description="Size of the /tmp and home tmpfs mounts.")
    timeout_seconds: int = Field(default=1800, gt=0, description="Hard time limit per run.")
    output_limit_bytes: int = Field(
        default=5_000_000, gt=0, description="Agent output kept per run before truncation."
    )
    user: str = Field(default="1000:1000", description="uid:gid the agent runs as (never 0).")
    runtime: str | None = Field(
        default=None, description="OCI runtime (for example `runsc` for gVisor); unset = default."
    )
    workdir: Path = Field(
        default=DEFAULT_DATA_DIR / "workspaces",
        description="Host folder for repository mirrors and per-run workspaces.",
    )
    seccomp_profile: str = Field(
        default="bosun",
        description=(
            "Syscall filter: `bosun` (Bosun's profile, `sandboxes/seccomp/sandbox.json`: the "
            "engine default without `ptrace`, `process_vm_*` and `io_uring`), `default` (the "
            "engine's own) or an absolute path to a JSON profile. `unconfined` is refused."
        ),
    )
    workspace_limit_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description=(
            "Disk the workspace may grow by while the agent runs (allocated blocks, measured "
            "every 2 s); past it the agent is stopped and the run fails, nothing pushed."
        ),
    )
    allowed_images: list[str] = Field(
        default_factory=list,
        description=(
            "Images a repository may name in `image:` of `.github/bosun.yml`: an exact "
            "reference (`ghcr.io/acme/agent:1.2`; without a tag or digest any tag of that "
            "image) or a prefix ending in `*` (`ghcr.io/acme/*`). Empty: repositories use the "
            "profile's image only."
        ),
    )
    image_pull: Literal["never", "missing", "always"] = Field(
        default="never",
        description=(
            "Whether a worker pulls an allowed repository image: `never` (it must be present "
            "on the worker's engine: `docker pull`/`docker load` it yourself), `missing` "
            "(pulled when absent), `always` (pulled before each run)."
        ),
    )
    repo_dockerfiles: bool = Field(
        default=False,
        description=(
            "Whether a repository may build its own image from a Dockerfile "
            "(`image: {dockerfile: ...}`, or its dev container's `build`) on the worker host; "
            "`RUN` steps reach only the hosts setup may reach, through the run's egress proxy "
            "(no network when that allowlist is empty). Every `FROM` must be an allowed image "
            "present on the engine."
        ),
    )
    image_build_timeout_seconds: int = Field(
        default=900, gt=0, description="Time limit for building one repository image."
    )
    image_build_memory: str = Field(
        default="2g", description="Memory limit of a repository image build (docker units)."
    )

    @field_validator("allowed_images")
    @classmethod
    def _allowed_images(cls, value: list[str]) -> list[str]:
        for entry in value:
            stem = entry.removesuffix("*")
            if not stem or any(ch.isspace() for ch in entry) or "*" in stem:
                raise ValueError(
                    f"{entry!r} is not an image or a prefix ending in `*` "
                    "(e.g. `ghcr.io/acme/agent:1.2`, `ghcr.io/acme/*`)"
                )
        return value

    pool_size: int = Field(
        default=0,
        ge=0,
        le=32,
        description=(
            "Warm pool: started sandboxes each worker keeps ready per sandbox shape (image, "
            "limits and mounts a profile asks for), so a run does not wait for its container "
            "to start. Each is bound to its own empty folders and used by one run only. "
            "0 = no pool: every run starts its own container."
        ),
    )
    pool_idle_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "A pooled sandbox idle this long is removed and replaced (so one started from an "
            "image since rebuilt does not live on)."
        ),
    )

    @field_validator("seccomp_profile")
    @classmethod
    def _seccomp_profile(cls, value: str) -> str:
        return check_profile_name(value)


class WorkerSettings(_Group):
    """The arq worker."""

    max_jobs: int = Field(default=10, gt=0, description="Jobs one worker runs at once.")
    stall_seconds: float = Field(
        default=300,
        gt=0,
        description=(
            "A running run with no event for this long is marked stalled (an event, a field "
            "in the API, a line on GitHub) until its events resume."
        ),
    )
    poll_delay: float = Field(
        default=0.5,
        gt=0,
        description=(
            "Seconds between queue polls of an idle worker. A queued job wakes the workers at "
            "once (a message on the queue's wake channel); the poll only bounds a missed "
            "wake-up and how late a deferred job starts."
        ),
    )
    job_timeout: int = Field(default=7200, gt=0, description="Seconds before arq abandons a job.")
    max_concurrent_runs: int = Field(default=8, gt=0, description="Global cap on running agents.")
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Lease of a run's capacity slot and scope lock, renewed every third of it while the "
            "run lives: a crashed worker's slot and lock free themselves this long after it died."
        ),
    )
    queue_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How often a run waiting for a slot or a scope lock asks again (it is also woken "
            "as soon as a slot frees); it holds no worker job slot in between."
        ),
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="Seconds between heartbeats of a run a worker executes."
    )
    heartbeat_stale_seconds: float = Field(
        default=90.0,
        gt=0,
        description=(
            "A run whose heartbeat is older than this lost its worker: the reconciler ends it "
            "`failed` (interrupted) and removes its sandbox."
        ),
    )
    reconcile_seconds: int = Field(
        default=60,
        ge=1,
        le=60,
        description="Seconds between reconciler passes (a divisor of 60); it also runs at start.",
    )
    sweep_minutes: int = Field(
        default=5,
        ge=1,
        le=60,
        description=(
            "Minutes between redelivery sweeps (a divisor of 60; also at start): deliveries "
            "GitHub failed to hand over are asked for again."
        ),
    )
    sweep_window_hours: int = Field(
        default=24,
        ge=1,
        le=72,
        description="How far back a sweep looks (GitHub keeps deliveries for 3 days).",
    )
    merge_recheck_minutes: int = Field(
        default=2,
        ge=1,
        le=60,
        description=(
            "Minutes between re-reads of the checks of approved runs whose merge waits for "
            "required checks (a divisor of 60). Check webhooks re-read them at once; this "
            "timer catches a webhook that never came."
        ),
    )
    merge_wait_hours: float = Field(
        default=24,
        gt=0,
        description=(
            "How long an approved run waits for the required checks of its pull request; "
            "then it goes back to review, saying which checks never passed."
        ),
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description=(
            "This worker's name in its health-check key (`bosun worker --check`); unset: the "
            "host name. Give each worker on one host its own."
        ),
    )
    health_check_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How often the worker writes its health-check key; the key lapses one second after "
            "the next write was due, so `bosun worker --check` fails within this of a worker "
            "that stopped polling Redis."
        ),
    )

    @model_validator(mode="after")
    def _check_timing(self) -> WorkerSettings:
        if 60 % self.reconcile_seconds:
            raise ValueError(
                "reconcile_seconds must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)"
            )
        if 60 % self.merge_recheck_minutes:
            raise ValueError(
                "merge_recheck_minutes must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)"
            )
        if 60 % self.sweep_minutes:
            raise ValueError(
                "sweep_minutes must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)"
            )
        if self.heartbeat_stale_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                "heartbeat_stale_seconds must be at least three times heartbeat_seconds, or a slow "
                "heartbeat would end a live run"
            )
        return self


class RetentionSettings(_Group):
    """How long finished work is kept (`bosun prune`, and the worker's hourly upkeep). Only
    runs in a terminal state are pruned, counted from when they ended; 0 keeps forever."""

    events_days: int = Field(
        default=90,
        ge=0,
        description=(
            "Days a finished run's event log (agent output, tool calls, gate lines) is kept; "
            "its `status` events stay with its record."
        ),
    )
    artifacts_days: int = Field(
        default=30,
        ge=0,
        description=(
            "Days a finished run's artifacts (diff, transcript, gate output, …) are kept, "
            "`manifest.json` and `summary` excepted."
        ),
    )
    records_days: int = Field(
        default=0,
        ge=0,
        description=(
            "Days a finished run's record (`manifest.json`, `summary` and its `status` events) "
            "is kept; at least `events_days` and `artifacts_days`. The run's row always stays."
        ),
    )
    deliveries_days: int = Field(
        default=30,
        ge=0,
        description=(
            "Days a handled webhook delivery (processed, ignored or failed; its payload "
            "included) and a sent or failed outbound notification are kept. Longer than "
            "`worker.sweep_window_hours`, or the sweeper would ask GitHub for them again."
        ),
    )

    @model_validator(mode="after")
    def _records_last_longest(self) -> RetentionSettings:
        if self.records_days:
            shorter = {"events_days": self.events_days, "artifacts_days": self.artifacts_days}
            for name, days in shorter.items():
                if days == 0 or days > self.records_days:
                    raise ValueError(
                        f"records_days ({self.records_days}) must be 0 (forever) or at least "
                        f"{name} ({days or 'forever'}): a run's manifest and summary are kept "
                        "longest"
                    )
        return self


class GatewaySettings(_Group):
    """The model gateway: how sandboxes reach model APIs without ever holding a key."""

    upstreams: dict[str, Upstream] = Field(
        default_factory=dict,
        description=(
            "Model APIs beyond api.anthropic.com, api.openai.com and "
            "generativelanguage.googleapis.com, by base URL "
            '(JSON: `{"http://llm:8080": {"api": "openai", "key_env": ""}}`).'
        ),
    )
    max_concurrent: int = Field(default=8, gt=0, description="Model requests in flight per run.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description=(
            "Largest request body an agent may send (413 above, refused before any of it is "
            "read). Claude Code's and Codex's requests start near 90 KB and 40 KB; a whole "
            "200K-token context is about 1 MiB."
        ),
    )
    max_buffered_bytes: int = Field(
        default=32 * 1024 * 1024,
        gt=0,
        description=(
            "Request body bytes one run's gateway holds at once; a request whose body does not "
            "fit waits. At least `max_body_bytes`."
        ),
    )
    max_connections: int = Field(
        default=16,
        gt=0,
        description=(
            "Open connections to one run's gateway, at least `max_concurrent`. Past it the one "
            "idle longest is closed; when every one is busy the new one gets a 503."
        ),
    )
    client_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long the gateway waits on the agent: for a request's head (from its first "
            "byte) and body (from when it may be read), 408 past it; and for the agent to take "
            "each piece of a response, the connection is closed past it."
        ),
    )
    idle_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a connection may wait for its next request before it is closed.",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description=(
            "Model prices in dollars per million tokens that win over the genai-prices "
            "catalogue; a key prices every model name it starts with, the longest key winning "
            '(JSON: `{"my-model": {"input": 1, "output": 4, "cache_read": 0.1}}`; cache rates '
            "default to the input rate)."
        ),
    )
    unknown_model_price: Price | None = Field(
        default=None,
        description=(
            "What a model neither `prices` nor the catalogue knows is charged, per million "
            'tokens (JSON like a `prices` value: `{"input": 30, "output": 150}`); the run '
            "records a `gateway.pricing` flag and its cost says it is an estimate. Unset: "
            "Claude Opus 4's rates without a cache discount ($15 in, $75 out), above every "
            "mainstream coding model."
        ),
    )

    @model_validator(mode="after")
    def _check_limits(self) -> GatewaySettings:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                "max_buffered_bytes must be at least max_body_bytes, or a request at the size "
                "limit could never be read"
            )
        if self.max_connections < self.max_concurrent:
            raise ValueError(
                "max_connections must be at least max_concurrent, or requests allowed in "
                "flight could not all have a connection"
            )
        return self

    def pricing(self) -> PricingTable:
        return PricingTable(self.prices, self.unknown_model_price or UNKNOWN_MODEL_PRICE)

    def limits(self) -> GatewayLimits:
        return GatewayLimits(
            max_body_bytes=self.max_body_bytes,
            max_buffered_bytes=self.max_buffered_bytes,
            max_connections=self.max_connections,
            client_timeout=self.client_timeout_seconds,
            idle_timeout=self.idle_timeout_seconds,
        )


class Settings(BaseSettings):
    """Everything Bosun reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="BOSUN_",
        env_nested_delimiter="__",
        env_file=None,
        extra="ignore",
    )

    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="URL where users and GitHub reach this Bosun (links, webhook URL).",
    )
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR, description="Folder for artifacts, metrics and local state."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`auto`: console on a TTY, JSON lines otherwise."
    )
    log_level: str = Field(default="info", description="Minimum log level.")
    max_webhook_bytes: int = Field(
        default=25 * 1024 * 1024, gt=0, description="Largest webhook body accepted (413 above)."
    )
    profiles: dict[str, ProfileConfig] = Field(
        default_factory=dict,
        description='Agent profiles as JSON (`{"name": {"runner": ...}}`); see docs/profiles.',
    )
    profiles_file: Path | None = Field(
        default=None, description="YAML or JSON file of agent profiles (merged under `profiles`)."
    )
    default_profile: str = Field(default="default", description="Profile of a plain `bosun` label.")
    allowed_users: list[str] = Field(
        default_factory=list,
        description="Logins trusted to start runs on every repository, whatever their permission.",
    )
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    caches: CacheSettings = Field(default_factory=CacheSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the env file (``bot.envfiles``), then the
        files ``*_FILE`` variables name."""
        env_file = env_file_path()
        variables = {**read_env_file(env_file), **os.environ}
        dotenv = DotEnvSettingsSource(settings_cls, env_file=env_file)
        return (
            init_settings,
            WithoutFileVariables(settings_cls, env_settings, variables),
            WithoutFileVariables(settings_cls, dotenv, variables),
            FileValuesSource(settings_cls, variables),
        )

    @field_validator("retention")
    @classmethod
    def _deliveries_outlive_the_sweep(
        cls, retention: RetentionSettings, info: ValidationInfo
    ) -> RetentionSettings:
        # A field validator (not a model one): its error quotes only this group, no secret.
        worker = info.data.get("worker")
        days = retention.deliveries_days
        if isinstance(worker, WorkerSettings) and days and days * 24 <= worker.sweep_window_hours:
            raise ValueError(
                f"retention.deliveries_days ({days}) must cover more than "
                f"worker.sweep_window_hours ({worker.sweep_window_hours} h), or the "
                "redelivery sweeper would ask GitHub again for deliveries already handled"
            )
        return retention

    def agent_profiles(self) -> dict[str, ProfileConfig]:
        return load_profiles(self.profiles, self.profiles_file)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def worker_health_key(self) -> str:
        """The Redis key a worker writes every ``worker.health_check_seconds`` (arq's health
        check; ``bosun worker --check`` reads it), named after the worker: ``worker.name``,
        else the host name."""
        return self.redis.key("health-check", self.worker.name or socket.gethostname())
