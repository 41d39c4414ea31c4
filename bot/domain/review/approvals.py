"""Approvals: binding to the head SHA, invalidation on push, partial approvals, counting."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from bot.domain.limits import LIST_ITEMS, clip, listing
from bot.domain.policy import matches
from bot.domain.repoconfig import RepoConfig
from bot.domain.review.model import (
    REVIEWABLE,
    ApprovalSnapshot,
    ApprovalStatus,
    PushDecision,
    RunSnapshot,
)
from bot.domain.states import RunState


def same_login(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def sha_matches(given: str, head: str | None) -> bool:
    """Whether a (possibly abbreviated, 7+ hex) SHA names ``head``."""
    a, b = given.strip().lower(), (head or "").strip().lower()
    return len(a) >= 7 and len(b) >= 7 and (a.startswith(b) or b.startswith(a))


def _eligible(logins: list[str], run: RunSnapshot, config: RepoConfig) -> list[str]:
    if config.approval.allow_self_approval:
        return list(logins)
    return [login for login in logins if not same_login(login, run.requester)]


def owned_globs(actor: str, paths: tuple[str, ...], config: RepoConfig) -> list[str]:
    """``path_approvers`` globs that list ``actor`` and match one of ``paths``."""
    return [
        glob
        for glob, owners in config.approval.path_approvers.items()
        if any(same_login(actor, o) for o in owners) and any(matches(p, [glob]) for p in paths)
    ]


def partial_paths(
    changed_paths: tuple[str, ...] | list[str], approved_globs: tuple[str, ...] | list[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(keep, revert)``: changed paths an ``/approve <path>…`` keeps, and the rest."""
    keep = tuple(p for p in changed_paths if matches(p, approved_globs))
    return keep, tuple(p for p in changed_paths if p not in keep)


def invalidate_on_push(
    approvals: tuple[ApprovalSnapshot, ...] | list[ApprovalSnapshot],
    new_head_sha: str,
    tree_changed: bool,
) -> list[ApprovalSnapshot]:
    """Approvals after a push to ``new_head_sha``.

    A push that changes the tree invalidates approvals bound to an older SHA; one that keeps
    the tree (a rebase onto the same content) rebinds them to the new head.
    """
    out: list[ApprovalSnapshot] = []
    for approval in approvals:
        if not approval.valid or sha_matches(approval.sha, new_head_sha):
            out.append(approval)
        elif tree_changed:
            out.append(replace(approval, valid=False))
        else:
            out.append(replace(approval, sha=new_head_sha))
    return out


def head_when_written(run: RunSnapshot, written_at: datetime) -> str | None:
    """The PR head a comment written at ``written_at`` was about: the run's head, unless
    that head only arrived after the comment was written (then None: Bosun cannot tell
    which commit the writer saw, and binds nothing to a commit they may not have seen)."""
    if run.head_since is not None and _utc(written_at) < _utc(run.head_since):
        return None
    return run.head_sha


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; Bosun stores UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def decide_push(run: RunSnapshot, new_head: str, *, same_tree: bool) -> PushDecision:
    """A push moved the PR head to ``new_head``: rebind the approvals (same tree) or
    invalidate them (the files changed), and send an ``approved`` run whose approvals
    stopped counting back to review. Decided on the run as it is now."""
    if run.state not in REVIEWABLE:
        why = (
            f"the run was merged at {(run.merged_sha or '')[:12]}"
            if run.state is RunState.MERGED
            else f"the run is {run.state.value}"
        )
        return PushDecision("ignore", "approval.bound_to_tree", new_head, reason=why)
    if sha_matches(new_head, run.head_sha):
        return PushDecision(
            "ignore", "approval.bound_to_tree", new_head, reason="the head did not move"
        )
    after = invalidate_on_push(run.approvals, new_head, tree_changed=not same_tree)
    changed = tuple(a for a, b in zip(after, run.approvals, strict=True) if a != b)
    return PushDecision(
        "rebind" if same_tree else "invalidate",
        "approval.bound_to_tree",
        new_head,
        approvals=changed,
        back_to_review=run.state is RunState.APPROVED and not same_tree,
    )


def merge_refusal(
    run: RunSnapshot, config: RepoConfig, approved_sha: str, merge_sha: str | None = None
) -> str | None:
    """Why the run may not be merged now, or None. Checked on the run as read inside the step
    that merges: it is approved and not on hold, its head is exactly the one about to be
    merged, and the approvals on ``approved_sha`` suffice. ``merge_sha`` differs from
    ``approved_sha`` only for Bosun's own revert commit of a partial approval, made on top of
    ``approved_sha`` and holding exactly the approved files."""
    merge_sha = merge_sha or approved_sha
    if run.state is not RunState.APPROVED:
        return f"the run is {run.state.value.replace('_', ' ')}"
    if run.on_hold:
        return "the run is on hold"
    if not run.head_sha or run.head_sha != merge_sha:
        return f"the head is `{(run.head_sha or 'unknown')[:12]}`, not `{merge_sha[:12]}`"
    status = approval_status(replace(run, head_sha=approved_sha), config)
    if not status.satisfied:
        return (
            f"the approvals on `{approved_sha[:12]}` do not suffice "
            f"({status.have} of {status.need})"
        )
    return None


def approval_status(run: RunSnapshot, config: RepoConfig) -> ApprovalStatus:
    """Whether the approvals bound to the run's head SHA are enough to merge.

    Counts valid approvals on the current head, the latest per actor, without the requester
    unless ``allow_self_approval``. Partial approvals narrow the kept paths to what every
    counted approver approved; each kept path matching a ``path_approvers`` glob needs an
    approval, covering that path, from one of the glob's logins.
    """
    latest: dict[str, ApprovalSnapshot] = {}
    for approval in run.approvals:
        if approval.valid and sha_matches(approval.sha, run.head_sha):
            latest[approval.actor.casefold()] = approval
    if not config.approval.allow_self_approval:
        latest.pop(run.requester.casefold(), None)
    general = [a for a in latest.values() if a.general]
    keep = tuple(
        p for p in run.changed_paths if all(not a.paths or matches(p, a.paths) for a in general)
    )
    revert = tuple(p for p in run.changed_paths if p not in keep)
    missing: dict[str, list[str]] = {}
    for glob, owners in config.approval.path_approvers.items():
        for path in (p for p in keep if matches(p, [glob])):
            covered = any(
                any(same_login(a.actor, o) for o in owners)
                and (not a.paths or matches(path, a.paths))
                for a in latest.values()
            )
            if not covered:
                missing[glob] = _eligible(owners, run, config)
                break
    need = config.approval.required_approvals
    have = len(general)
    satisfied = have >= need and not missing and (bool(keep) or not run.changed_paths)
    return ApprovalStatus(
        satisfied=satisfied,
        have=have,
        need=need,
        missing_path_approvers=missing,
        counted=[a.actor for a in general],
        keep=keep,
        revert=revert,
    )


def status_text(run: RunSnapshot, config: RepoConfig) -> str:
    """The ``/status`` reply: state, head, hold, budget and approvals."""
    state = run.state.value.replace("_", " ")
    lines = [f"Run `{run.run_id}` is **{state}**" + (" and **on hold**." if run.on_hold else ".")]
    if run.head_sha:
        lines.append(f"Head: `{run.head_sha[:12]}`.")
    if run.budget_usd is not None:
        lines.append(f"Cost so far: ${run.cost_usd:.2f} of ${run.budget_usd:.2f}.")
    if run.state in REVIEWABLE:
        status = approval_status(run, config)
        who = listing(status.counted, show=_at) or "nobody yet"
        lines.append(f"Approvals: {status.have} of {status.need} ({who}).")
        missing = list(status.missing_path_approvers.items())
        for glob, owners in missing[:LIST_ITEMS]:
            names = listing(owners, show=_at) or "nobody but the requester"
            lines.append(f"`{clip(glob, 120)}` still needs an approval from {names}.")
        if len(missing) > LIST_ITEMS:
            lines.append(f"… and {len(missing) - LIST_ITEMS} more paths need their approvers.")
        if status.revert:
            lines.append(f"{len(status.revert)} path(s) will be reverted before merge.")
    return "\n".join(lines)


def _at(login: str) -> str:
    return f"@{clip(login, 60)}"
