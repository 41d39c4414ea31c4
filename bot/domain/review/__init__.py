"""The review loop's decisions (SPEC §8, §3.3 buttons), made purely from arguments.

``model`` holds the inputs and decision types, ``approvals`` the approval rules, ``decide``
the permission and state rules. Import everything from ``bot.domain.review``.

The jobs layer reads the run, the commenter's collaborator permission and the PR head, builds a
:class:`RunSnapshot`, and applies the returned decision. Nothing here does I/O.

* ``authorize`` — may this actor use this command at all (permission rules).
* ``decide_command`` — permission plus the run's state: what to do (``Approve``, ``RetryRun``,
  ``RefuseCommand``...). Every decision carries ``rule`` for the run's ``policy`` event and
  ``outcome`` (``accepted``, ``refused``, ``ignored``) for the command audit row.
* ``approval_status`` — are the approvals bound to the head enough to merge, which paths are
  kept, which path approvers are still missing.
* ``head_when_written`` — the PR head a comment was about (None when the head moved after
  it was written: nothing is bound to a commit the writer may not have seen).
* ``decide_push`` — what a push does to the approvals (``invalidate_on_push``, the rule);
  ``partial_paths`` — the keep/revert split.
* ``merge_refusal`` — re-checked inside the step that merges: the run is approved, not on
  hold, still at the approved head, and the approvals on exactly that head suffice.
* ``button_command`` / ``decide_review`` — check-run buttons and GitHub reviews as commands.
* ``review_section`` / ``with_review_section`` — the status comment's review section.

Approvers: ``approval.approvers`` is either a minimum permission or an exclusive list of logins;
``approval.path_approvers`` owners may also approve, but their approval only satisfies their
paths and does not count towards ``required_approvals`` (``general=False``).
"""

from bot.domain.review.approvals import (
    approval_status,
    decide_push,
    head_when_written,
    invalidate_on_push,
    merge_refusal,
    owned_globs,
    partial_paths,
    same_login,
    sha_matches,
    status_text,
)
from bot.domain.review.decide import (
    BUTTONS,
    authorize,
    button_command,
    decide_command,
    decide_review,
)
from bot.domain.review.model import (
    RETRYABLE,
    REVIEWABLE,
    ApprovalSnapshot,
    ApprovalStatus,
    Approve,
    Authorization,
    Cancel,
    FoldFeedback,
    Hold,
    IgnoreCommand,
    PushDecision,
    RaiseBudget,
    RefuseCommand,
    Reject,
    ReplyHelp,
    ReplyStatus,
    Resume,
    RetryRun,
    ReviewDecision,
    RevokeApproval,
    RunSnapshot,
    Steer,
    Unhold,
)
from bot.domain.review.notes import (
    REVIEW_END,
    REVIEW_START,
    review_section,
    review_section_of,
    with_review_section,
)

__all__ = [
    "BUTTONS",
    "RETRYABLE",
    "REVIEWABLE",
    "REVIEW_END",
    "REVIEW_START",
    "ApprovalSnapshot",
    "ApprovalStatus",
    "Approve",
    "Authorization",
    "Cancel",
    "FoldFeedback",
    "Hold",
    "IgnoreCommand",
    "PushDecision",
    "RaiseBudget",
    "RefuseCommand",
    "Reject",
    "ReplyHelp",
    "ReplyStatus",
    "Resume",
    "RetryRun",
    "ReviewDecision",
    "RevokeApproval",
    "RunSnapshot",
    "Steer",
    "Unhold",
    "approval_status",
    "authorize",
    "button_command",
    "decide_command",
    "decide_push",
    "decide_review",
    "head_when_written",
    "invalidate_on_push",
    "merge_refusal",
    "owned_globs",
    "partial_paths",
    "review_section",
    "review_section_of",
    "same_login",
    "sha_matches",
    "status_text",
    "with_review_section",
]
