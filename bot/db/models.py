"""SQLAlchemy models: the database is Bosun's source of truth (SPEC §3.1, §4, §7, §8)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import true

from bot.domain.states import DeliveryStatus, RunState


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Installation(Base):
    __tablename__ = "installations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account_login: Mapped[str] = mapped_column(String(255))
    account_type: Mapped[str] = mapped_column(String(32), default="User")
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Repository(Base):
    """A GitHub repository (``github_id`` set) or a local project (``local_path`` set)."""

    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    github_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    installation_id: Mapped[int | None] = mapped_column(
        ForeignKey("installations.id", ondelete="SET NULL")
    )
    full_name: Mapped[str] = mapped_column(String(255), unique=True)
    default_branch: Mapped[str] = mapped_column(String(255), default="main")
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    local_path: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    """Whether the App's installation still includes it."""
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    """Whether an operator lets Bosun start runs on it (``PATCH /api/v1/repositories/…``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Delivery(Base):
    """One webhook delivery, recorded before it is processed."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(64))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    repository: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus), default=DeliveryStatus.RECEIVED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    redeliveries: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()
    trace_parent: Mapped[str | None] = mapped_column(String(64))
    """W3C ``traceparent`` of the span that received it, when tracing is on: processing
    continues that trace (``bot.tracing``)."""

    __table_args__ = (Index("ix_deliveries_status", "status", "received_at"),)


class Task(Base):
    """What a run works on: an issue of a repository (or a manual task)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    issue_number: Mapped[int | None] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    pr_number: Mapped[int | None] = mapped_column(Integer)
    branch: Mapped[str | None] = mapped_column(String(255))
    status_comment_id: Mapped[int | None] = mapped_column(BigInteger)
    pending_feedback: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Higher first on the board (a local task's; an issue's is 0)."""
    acceptance: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    """A local task's acceptance checklist: one criterion per item, given to the agent."""
    focus: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    """A local task's focus paths (as an issue's ``Focus:`` line)."""
    profile: Mapped[str | None] = mapped_column(String(128))
    """The profile a local task's runs use unless a start names another."""
    author: Mapped[str] = mapped_column(String(255), default="", server_default="")
    state: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    """``open`` or ``closed`` (a local task; an issue's state lives on GitHub)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("repository_id", "issue_number"),)


class Profile(Base):
    """An agent profile from server config, kept for the API and for audit."""

    __tablename__ = "profiles"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    parent_run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    state: Mapped[RunState] = mapped_column(_enum(RunState), default=RunState.QUEUED)
    profile: Mapped[str] = mapped_column(String(128), default="default")
    workflow: Mapped[str] = mapped_column(String(32), default="implement")
    trigger: Mapped[str] = mapped_column(String(32), default="label")
    requester: Mapped[str] = mapped_column(String(255), default="")
    delivery_id: Mapped[str | None] = mapped_column(String(64))
    instructions: Mapped[str] = mapped_column(Text, default="")
    prompt: Mapped[str] = mapped_column(Text, default="")
    branch: Mapped[str | None] = mapped_column(String(255))
    base_sha: Mapped[str | None] = mapped_column(String(64))
    head_sha: Mapped[str | None] = mapped_column(String(64))
    pr_number: Mapped[int | None] = mapped_column(Integer)
    check_run_id: Mapped[int | None] = mapped_column(BigInteger)
    on_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_actor: Mapped[str | None] = mapped_column(String(255))
    repo_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    phase: Mapped[str | None] = mapped_column(String(64))
    budget_usd: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    gates_passed: Mapped[bool | None] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Bumped by every state transition and every review-loop decision: a decision commits
    only if the run still has the version it was decided on (``jobs.review.step``)."""
    head_since: Mapped[datetime | None] = mapped_column()
    """When the current ``head_sha`` became the PR head as Bosun knows it: a comment written
    before then was not written about this head (``bot.domain.review.head_when_written``)."""
    stalled_since: Mapped[datetime | None] = mapped_column()
    """Set while the run has gone ``worker.stall_seconds`` without an event."""
    merged_sha: Mapped[str | None] = mapped_column(String(64))
    """The merge commit on the base branch once Bosun merged the PR."""
    job_id: Mapped[str | None] = mapped_column(String(128))
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    state_since: Mapped[datetime | None] = mapped_column()
    """When the run entered its current state (``created_at`` while it never moved)."""
    trace_parent: Mapped[str | None] = mapped_column(String(64))
    """W3C ``traceparent`` under which every job of the run records its spans, when tracing
    is on (``bot.tracing``): one trace per run, from the delivery that started it."""

    __table_args__ = (
        Index("ix_runs_state", "state"),
        Index("ix_runs_repository", "repository_id", "created_at"),
        Index("ix_runs_task", "task_id"),
    )


class RunEvent(Base):
    """Append-only event log of a run; ``seq`` is monotonic per run."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "seq"),)


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    """The file holding it (``storage`` = ``file``); empty for the database backend."""
    storage: Mapped[str] = mapped_column(String(16), default="file", server_default="file")
    """``file`` (``path`` on the writing worker's disk) or ``database`` (``artifact_chunks``)."""
    content_type: Mapped[str] = mapped_column(String(128), default="text/plain")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "name"),)


class ArtifactChunk(Base):
    """A piece of an artifact kept in the database (``ArtifactStore`` backend ``database``)."""

    __tablename__ = "artifact_chunks"

    artifact_id: Mapped[int] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Approval(Base):
    """An approval bound to the head SHA it was given on."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(255))
    sha: Mapped[str] = mapped_column(String(64))
    paths: Mapped[list[Any]] = mapped_column(default=list)
    general: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(32), default="comment")
    invalidated_at: Mapped[datetime | None] = mapped_column()
    invalidated_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CommandAudit(Base):
    """Every command, accepted or refused (SPEC §8)."""

    __tablename__ = "command_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str | None] = mapped_column(String(64))
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    run_id: Mapped[str | None] = mapped_column(String(32))
    repository: Mapped[str] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(255))
    permission: Mapped[str | None] = mapped_column(String(32))
    sha: Mapped[str | None] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="comment", server_default="comment")
    """Where it came from: ``comment``, ``review``, ``button``, ``api``, ``cli``, ``dashboard``."""
    args: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ControlCommand(Base):
    """An action on a run from the API, the CLI or the dashboard, recorded by the web process
    before its job is enqueued: the job carries only this row's id, so whoever can write to
    Redis cannot make up an actor, a permission or a command (``jobs.deliveries.commands``)."""

    __tablename__ = "control_commands"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    """The run acted on; none for ``start``, whose ``args`` name the repository and issue."""
    verb: Mapped[str] = mapped_column(String(32))
    args: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(255))
    permission: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(32))
    """``accepted``, ``refused`` or ``ignored`` once decided."""
    reason: Mapped[str | None] = mapped_column(Text)
    new_run_id: Mapped[str | None] = mapped_column(String(32))
    """The run a ``start``, ``retry`` or ``resume`` created."""


class ScopeLock(Base):
    """A lease on focus paths of a repository; expires if its holder dies."""

    __tablename__ = "scope_locks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(32), unique=True)
    paths: Mapped[list[Any]] = mapped_column(default=list)
    holder: Mapped[str] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An API token; only its SHA-256 is stored (``bot.control.tokens``)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), default="", server_default="")
    """The token's first characters, to tell tokens apart in listings."""
    scope: Mapped[str] = mapped_column(String(16), default="read", server_default="read")
    """``read`` (GET), ``operate`` (run actions on its repositories) or ``admin``."""
    repos: Mapped[list[Any]] = mapped_column(default=list)
    """Repositories (``owner/name``) it may act on; empty: every repository."""
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()


class AppCredentials(Base):
    """GitHub App credentials stored by the manifest flow (``GET /setup``)."""

    __tablename__ = "app_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(BigInteger)
    slug: Mapped[str] = mapped_column(String(255))
    private_key: Mapped[str] = mapped_column(Text)
    webhook_secret: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(String(255))
    client_secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """Where Bosun sends signed notifications (``bot.notify``): configured in
    ``notify.endpoints`` (``source`` = ``settings``, kept in step at start) or through the API."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    """The HMAC-SHA256 key notifications are signed with (needed to sign, so kept as is)."""
    events: Mapped[list[Any]] = mapped_column(default=list)
    """Notification types it wants; empty: every type."""
    repos: Mapped[list[Any]] = mapped_column(default=list)
    """Repositories (``owner/name`` or ``owner/*``) it wants; empty: every repository."""
    source: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """One notification for one endpoint: written in the transaction that changed the run,
    sent (and retried with backoff) by the worker's ``send_notifications`` job."""

    __tablename__ = "notify_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    delivery_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(32))
    repository: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32))
    previous_state: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    """The run's ``status`` event this notification is about."""
    body: Mapped[str | None] = mapped_column(Text)
    """The exact bytes sent, fixed at the first attempt so every retry is identical."""
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """``pending`` (to send, or to retry), ``delivered`` or ``failed`` (out of attempts)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_notify_outbox_due", "status", "next_attempt_at"),
        Index("ix_notify_outbox_endpoint", "endpoint_id", "id"),
    )


class NotificationAttempt(Base):
    """One try at sending a notification: the delivery log ``/api/v1/webhooks/{id}/deliveries``
    shows."""

    __tablename__ = "notify_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notify_outbox.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_notify_attempts_notification", "notification_id", "attempt"),)


class BoardPosition(Base):
    """Where a person put a task on the dashboard's board (its order within its column)."""

    __tablename__ = "board_positions"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    position: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
