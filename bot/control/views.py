"""What the control plane shows of runs, tasks, repositories and profiles: the typed read
models the REST API returns, the CLI prints (``--format json``) and the dashboard renders.
Built only by ``bot.control.queries``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")


def _utc(value: datetime) -> datetime:
    """Timestamps are stored in UTC; SQLite hands them back without the zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_utc)]
"""A moment, always with its zone (RFC 3339 ``date-time``: ``2026-05-01T12:00:00Z``)."""


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class Page(_View, Generic[T]):
    """One page of a list. Pass ``next_cursor`` back as ``cursor`` for the next page; it is
    ``null`` on the last one."""

    items: list[T]
    next_cursor: str | None = None


class RunSummary(_View):
    id: str
    repository: str
    task_id: int
    issue_number: int | None
    title: str
    state: str
    terminal: bool
    profile: str
    workflow: str
    trigger: str
    requester: str
    branch: str | None
    pr_number: int | None
    base_sha: str | None
    head_sha: str | None
    parent_run_id: str | None
    on_hold: bool
    cancel_requested: bool
    stalled: bool = Field(
        description="A running run with no event for `worker.stall_seconds` (until they resume)."
    )
    last_seq: int = Field(description="The `seq` of its latest event.")
    gates_passed: bool | None
    cost_usd: float
    budget_usd: float | None
    tokens_in: int
    tokens_out: int
    reason: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class GateOut(_View):
    name: str
    passed: bool
    exit_code: int | None = None
    duration_s: float | None = None
    timed_out: bool = False


class ArtifactOut(_View):
    name: str
    content_type: str
    size: int
    sha256: str
    storage: str
    created_at: Timestamp


class ApprovalOut(_View):
    actor: str
    sha: str
    paths: list[str]
    source: str
    valid: bool
    invalidated_reason: str | None
    created_at: Timestamp


class AuditOut(_View):
    created_at: Timestamp
    run_id: str | None
    repository: str
    actor: str
    source: str
    permission: str | None
    sha: str | None
    command: str
    args: str
    outcome: str
    reason: str | None
    delivery_id: str | None
    comment_id: int | None


class Lineage(_View):
    parent: str | None
    children: list[str]


class RunDetail(RunSummary):
    phase: str | None = Field(description="The phase of the latest progress event.")
    lineage: Lineage
    gates: list[GateOut]
    approvals: list[ApprovalOut]
    artifacts: list[ArtifactOut]
    prompt_instructions: str


class EventOut(_View):
    seq: int
    kind: str
    data: dict[str, Any]
    created_at: Timestamp


class FileStat(_View):
    path: str
    status: str
    added: int | None
    removed: int | None
    binary: bool
    old_path: str | None = None
    size: int | None = None


class DiffOut(_View):
    run_id: str
    files: list[FileStat]
    lines_added: int
    lines_removed: int
    unified: str | None = Field(
        description="The unified diff; null when it is larger than `max_bytes` (fetch the "
        "`diff` artifact instead)."
    )
    size: int


class RepositoryOut(_View):
    full_name: str
    kind: Literal["github", "local"]
    default_branch: str
    private: bool
    local_path: str | None
    installed: bool
    enabled: bool
    created_at: Timestamp


class CapabilitiesOut(_View):
    streaming: bool
    cost_reporting: bool
    session_resume: bool
    tool_allowlist: bool


class ProfileOut(_View):
    name: str
    runner: str
    model: str | None
    image: str | None
    workflow: str
    workflows: list[str]
    max_turns: int | None
    timeout: int | None
    budget_usd: float | None
    capabilities: CapabilitiesOut
    default: bool


class TaskOut(_View):
    id: int
    repository: str
    kind: Literal["issue", "local"] = Field(
        default="issue", description="An issue of a GitHub repository, or a local task."
    )
    issue_number: int | None = Field(
        description="The issue's number; a local task's number in its repository (`#N`)."
    )
    title: str
    body: str
    acceptance: list[str] = Field(default_factory=list, description="A local task's checklist.")
    labels: list[str] = Field(default_factory=list)
    priority: int = 0
    focus: list[str] = Field(default_factory=list, description="A local task's focus paths.")
    profile: str | None = Field(default=None, description="The profile its runs use by default.")
    state: Literal["open", "closed"] = "open"
    pr_number: int | None
    branch: str | None
    last_run: RunSummary | None
    created_at: Timestamp


class TokenOut(_View):
    name: str
    prefix: str
    scope: str
    repos: list[str]
    expires_at: Timestamp | None
    revoked: bool
    created_at: Timestamp
    last_used_at: Timestamp | None


class NewToken(TokenOut):
    token: str = Field(description="The secret. Shown once: Bosun keeps only its hash.")


class ActionOut(_View):
    """What an action on a run did, decided like the comment command it mirrors."""

    run_id: str
    command: str
    outcome: Literal["accepted", "refused", "pending"]
    reason: str | None = None
    new_run_id: str | None = Field(default=None, description="The run a retry or resume started.")
    run: RunSummary | None = None
