"""The review loop's inputs and decisions: plain frozen dataclasses, no behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import ClassVar

from bot.domain.states import RunState

S = RunState
RETRYABLE: frozenset[RunState] = frozenset({S.REVIEW_READY, S.FAILED, S.TIMED_OUT, S.CANCELLED})
REVIEWABLE: frozenset[RunState] = frozenset({S.REVIEW_READY, S.APPROVED})


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalSnapshot:
    """One recorded approval, bound to the head SHA it was given on."""

    actor: str
    sha: str
    paths: tuple[str, ...] = ()
    """Globs of a partial approval; empty approves every path."""
    valid: bool = True
    general: bool = True
    """False for a path approver who is not an approver otherwise: it satisfies their paths
    but does not count towards ``required_approvals``."""
    id: int | None = None


@dataclass(frozen=True)
class RunSnapshot:
    run_id: str
    state: RunState
    requester: str
    head_sha: str | None = None
    on_hold: bool = False
    pr_number: int | None = None
    changed_paths: tuple[str, ...] = ()
    approvals: tuple[ApprovalSnapshot, ...] = ()
    budget_usd: float | None = None
    cost_usd: float = 0.0
    version: int = 0
    """The run's version when read: a decision on this snapshot commits only if it is still
    the run's version (``jobs.review.step``)."""
    head_since: datetime | None = None
    """When ``head_sha`` became the head Bosun knows (None: since before any comment)."""
    merged_sha: str | None = None
    """The merge commit, once Bosun merged the PR."""


# --- decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Authorization:
    allowed: bool
    rule: str
    reason: str
    """Why not, as one polite sentence for the reply (empty when allowed)."""


@dataclass(frozen=True)
class _Outcome:
    kind: ClassVar[str]
    outcome: ClassVar[str] = "accepted"
    rule: str

    def as_policy_event(self) -> dict[str, object]:
        """The payload of the run's ``policy`` event."""
        return {"decision": self.kind, "outcome": self.outcome, **asdict(self)}


@dataclass(frozen=True)
class Approve(_Outcome):
    kind: ClassVar[str] = "approve"
    actor: str
    sha: str
    paths: tuple[str, ...] = ()
    revert: tuple[str, ...] = ()
    """Changed paths a partial approval leaves out (reverted before merge)."""
    general: bool = True

    def as_snapshot(self) -> ApprovalSnapshot:
        return ApprovalSnapshot(self.actor, self.sha, self.paths, general=self.general)


@dataclass(frozen=True)
class RevokeApproval(_Outcome):
    kind: ClassVar[str] = "revoke_approval"
    actor: str


@dataclass(frozen=True)
class Reject(_Outcome):
    kind: ClassVar[str] = "reject"
    reason: str


@dataclass(frozen=True)
class RetryRun(_Outcome):
    kind: ClassVar[str] = "retry"
    feedback: str


@dataclass(frozen=True)
class FoldFeedback(_Outcome):
    """The run is still working: keep the feedback for the next run instead of racing it."""

    kind: ClassVar[str] = "fold_feedback"
    feedback: str


@dataclass(frozen=True)
class Steer(_Outcome):
    """Queue ``message`` (sanitised) for the running agent's next model request; for a run
    that has not started (``folded``), add it to the run's prompt instead."""

    kind: ClassVar[str] = "steer"
    actor: str
    message: str
    folded: bool = False


@dataclass(frozen=True)
class Cancel(_Outcome):
    kind: ClassVar[str] = "cancel"
    reason: str


@dataclass(frozen=True)
class Resume(_Outcome):
    kind: ClassVar[str] = "resume"


@dataclass(frozen=True)
class Hold(_Outcome):
    kind: ClassVar[str] = "hold"


@dataclass(frozen=True)
class Unhold(_Outcome):
    kind: ClassVar[str] = "unhold"


@dataclass(frozen=True)
class RaiseBudget(_Outcome):
    kind: ClassVar[str] = "raise_budget"
    amount: float
    new_budget_usd: float | None


@dataclass(frozen=True)
class ReplyStatus(_Outcome):
    kind: ClassVar[str] = "status"
    text: str


@dataclass(frozen=True)
class ReplyHelp(_Outcome):
    kind: ClassVar[str] = "help"
    text: str


@dataclass(frozen=True)
class RefuseCommand(_Outcome):
    """Reply ``reply`` (and react 👎); change nothing."""

    kind: ClassVar[str] = "refuse"
    outcome: ClassVar[str] = "refused"
    reply: str


@dataclass(frozen=True)
class IgnoreCommand(_Outcome):
    """Say nothing, change nothing (bots, no run, reviews that only comment)."""

    kind: ClassVar[str] = "ignore"
    outcome: ClassVar[str] = "ignored"
    reason: str


ReviewDecision = (
    Approve
    | RevokeApproval
    | Reject
    | RetryRun
    | FoldFeedback
    | Steer
    | Cancel
    | Resume
    | Hold
    | Unhold
    | RaiseBudget
    | ReplyStatus
    | ReplyHelp
    | RefuseCommand
    | IgnoreCommand
)


@dataclass(frozen=True)
class PushDecision:
    """What a push to the PR branch does to the run's approvals (``decide_push``)."""

    kind: str
    """``rebind`` (same tree: approvals follow the new head), ``invalidate`` (the files
    changed: approvals on older commits stop counting) or ``ignore``."""
    rule: str
    new_head: str
    approvals: tuple[ApprovalSnapshot, ...] = ()
    """The approvals that change: rebound to ``new_head`` or no longer valid."""
    back_to_review: bool = False
    """An ``approved`` run whose approvals stopped counting goes back to ``review_ready``."""
    reason: str = ""
    """Why a push is ignored."""


@dataclass(frozen=True)
class ApprovalStatus:
    satisfied: bool
    have: int
    need: int
    missing_path_approvers: dict[str, list[str]]
    """Glob → logins who could still approve it (empty: only the requester could)."""
    counted: list[str]
    keep: tuple[str, ...] = ()
    revert: tuple[str, ...] = ()
