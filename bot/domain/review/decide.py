"""Who may use a command, and what it does to a run in its current state."""

from __future__ import annotations

from collections.abc import Sequence

from bot.domain.commands import VERBS, Command, help_text, review_retry
from bot.domain.limits import listing
from bot.domain.payloads import ReviewRef
from bot.domain.policy import matches
from bot.domain.repoconfig import PERMISSION_RANK, RepoConfig
from bot.domain.review.approvals import (
    owned_globs,
    partial_paths,
    same_login,
    sha_matches,
    status_text,
)
from bot.domain.review.model import (
    RETRYABLE,
    REVIEWABLE,
    Approve,
    Authorization,
    Cancel,
    FoldFeedback,
    Hold,
    IgnoreCommand,
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
    S,
    Steer,
    Unhold,
)
from bot.domain.states import ACTIVE, TERMINAL
from bot.domain.steering import clean

BUTTONS: dict[str, str] = {"approve": "approve", "retry": "retry", "cancel": "cancel"}
"""Check-run button identifiers and the verb each stands for; ``rerequested`` is ``retry``."""


def _is_bot(login: str, login_type: str) -> bool:
    return login_type == "Bot" or login.endswith("[bot]")


def _has(permission: str | None, level: str) -> bool:
    return PERMISSION_RANK.get(permission or "none", 0) >= PERMISSION_RANK[level]


def _you_have(permission: str | None) -> str:
    return f"you have {permission}" if permission else "your permission could not be checked"


# --- authorization ------------------------------------------------------------------------


def _approver_rule(
    actor: str, permission: str | None, run: RunSnapshot, config: RepoConfig
) -> str | None:
    approvers = config.approval.approvers
    if isinstance(approvers, list):
        if any(same_login(actor, login) for login in approvers):
            return "approval.approvers"
    elif _has(permission, approvers):
        return f"approval.approvers>={approvers}"
    if owned_globs(actor, run.changed_paths, config):
        return "approval.path_approvers"
    return None


def _approver_requirement(config: RepoConfig) -> str:
    approvers = config.approval.approvers
    who = (
        "one of " + ", ".join(f"@{login}" for login in approvers)
        if isinstance(approvers, list)
        else f"people with {approvers} access"
    )
    if config.approval.path_approvers:
        who += " or the `approval.path_approvers` of a changed path"
    return who


def authorize(
    command: Command,
    actor: str,
    actor_type: str,
    permission: str | None,
    run: RunSnapshot,
    config: RepoConfig,
) -> Authorization:
    """Whether ``actor`` may use ``command`` on ``run``, checked at execution time."""
    if _is_bot(actor, actor_type):
        return Authorization(False, "command.bots_ignored", f"@{actor} is a bot")
    who = VERBS[command.verb].who
    name = f"`/{command.name}`"
    if who == "anyone":
        return Authorization(True, "command.anyone", "")
    if who == "requester_or_write":
        if same_login(actor, run.requester):
            return Authorization(True, "command.requester", "")
        if _has(permission, "write"):
            return Authorization(True, "command.permission>=write", "")
        reason = (
            f"@{actor}, {name} is for the run's requester (@{run.requester}) or people with "
            f"write access ({_you_have(permission)})."
        )
        return Authorization(False, "command.requester_or_write", reason)
    if who == "approver":
        if command.revoke and any(a.valid and same_login(a.actor, actor) for a in run.approvals):
            return Authorization(True, "approval.revoke_own", "")
        rule = _approver_rule(actor, permission, run, config)
        if rule is not None:
            return Authorization(True, rule, "")
        reason = (
            f"@{actor}, {name} here is for {_approver_requirement(config)} "
            f"({_you_have(permission)})."
        )
        return Authorization(False, "approval.approvers", reason)
    if _has(permission, "write"):
        return Authorization(True, "command.permission>=write", "")
    reason = f"@{actor}, {name} needs write access to this repository ({_you_have(permission)})."
    return Authorization(False, "command.permission>=write", reason)


# --- decisions ----------------------------------------------------------------------------


def _state_refusal(actor: str, name: str, run: RunSnapshot, why: str) -> RefuseCommand:
    state = run.state.value.replace("_", " ")
    return RefuseCommand(rule=f"state.{name}", reply=f"@{actor}, this run is {state}; {why}")


def _merged(actor: str, run: RunSnapshot, why: str) -> RefuseCommand:
    sha = f" at `{run.merged_sha[:12]}`" if run.merged_sha else ""
    return RefuseCommand(
        rule="state.merged", reply=f"@{actor}, this run was already merged{sha}; {why}"
    )


def _decide_approve(
    command: Command,
    run: RunSnapshot,
    actor: str,
    config: RepoConfig,
    rule: str,
    now_sha: str | None,
) -> ReviewDecision:
    if run.state is S.MERGED:
        why = "there is no approval to withdraw." if command.revoke else "it needs no approval."
        return _merged(actor, run, why)
    if command.revoke:
        if run.state not in REVIEWABLE:
            return _state_refusal(actor, "approve", run, "there is no approval to withdraw.")
        if not any(a.valid and same_login(a.actor, actor) for a in run.approvals):
            reply = f"@{actor}, you have no approval on this run to withdraw."
            return RefuseCommand(rule="approval.revoke_own", reply=reply)
        return RevokeApproval(rule=rule, actor=actor)
    if run.state is S.APPROVED:
        return _state_refusal(actor, "approve", run, "it needs no further approval.")
    if run.state is not S.REVIEW_READY:
        why = "`/approve` works only once it is review-ready."
        return _state_refusal(actor, "approve", run, why)
    head = run.head_sha or ""
    given = now_sha or head  # an explicit SHA may name the current head in any case
    if command.sha and not sha_matches(command.sha, given):
        reply = (
            f"@{actor}, you approved `{command.sha[:12]}` but the PR head is now "
            f"`{given[:12]}`; approve that (`/approve {given[:12]}`) after a look at it."
        )
        return RefuseCommand(rule="approval.sha_bound", reply=reply)
    if now_sha is None and not command.sha:
        reply = (
            f"@{actor}, the PR head moved to `{head[:12]}` after you wrote this, so Bosun "
            "cannot tell which commit you approved; nothing was approved. Look at "
            f"`{head[:12]}` and approve it (`/approve {head[:12]}`)."
        )
        return RefuseCommand(rule="approval.head_moved", reply=reply)
    if not sha_matches(given, head):
        reply = (
            f"@{actor}, you approved `{given[:12]}`, but the PR head moved to `{head[:12]}` "
            "before your approval was processed; it does not count for the new commit. Look "
            f"at `{head[:12]}` and approve it (`/approve {head[:12]}`)."
        )
        return RefuseCommand(rule="approval.head_moved", reply=reply)
    if same_login(actor, run.requester) and not config.approval.allow_self_approval:
        reply = (
            f"@{actor}, you requested this run, so your approval does not count "
            f"(`approval.allow_self_approval` is off); {_approver_requirement(config)} "
            "must approve."
        )
        return RefuseCommand(rule="approval.allow_self_approval", reply=reply)
    unmatched = [g for g in command.paths if not any(matches(p, [g]) for p in run.changed_paths)]
    if unmatched:
        match = "matches" if len(unmatched) == 1 else "match"
        reply = (
            f"@{actor}, {listing(unmatched)} {match} no changed file; `/approve` alone "
            "approves the whole change, `/approve <path>…` keeps only the matching files."
        )
        return RefuseCommand(rule="approval.partial_paths", reply=reply)
    revert = partial_paths(run.changed_paths, command.paths)[1] if command.paths else ()
    return Approve(
        rule=rule,
        actor=actor,
        sha=head,
        paths=command.paths,
        revert=revert,
        general=rule != "approval.path_approvers",
    )


def _decide_state(command: Command, run: RunSnapshot, actor: str, rule: str) -> ReviewDecision:
    """``rule`` is the authorization rule; accepted decisions carry it."""
    verb, state = command.verb, run.state
    if verb == "steer":
        return _decide_steer(command, run, actor, rule)
    if verb == "reject":
        if state in REVIEWABLE:
            return Reject(rule=rule, reason=command.args)
        if state is S.MERGED:
            return _merged(actor, run, "there is nothing to reject.")
        hint = "use `/cancel` to stop it." if state in ACTIVE else "there is nothing to reject."
        return _state_refusal(actor, verb, run, hint)
    if verb == "retry":
        if state in RETRYABLE:
            return RetryRun(rule=rule, feedback=command.args)
        if state in ACTIVE and command.args:
            return FoldFeedback(rule=rule, feedback=command.args)
        if state in ACTIVE:
            hint = "add feedback (`/retry <feedback>`) to fold it into the next run, or `/cancel`."
        elif state is S.APPROVED:
            hint = "withdraw the approvals (`/approve cancel`) before a retry."
        else:
            hint = "start a new run from the issue (`/bosun run`)."
        return _state_refusal(actor, verb, run, hint)
    if verb == "cancel":
        if state in ACTIVE:
            return Cancel(rule=rule, reason=f"cancelled by @{actor}" + _note(command))
        if state in REVIEWABLE:
            hint = "`/cancel` works only before review; use `/reject <reason>` to turn it down."
        else:
            hint = "it has already ended."
        return _state_refusal(actor, verb, run, hint)
    if verb == "resume":
        if state is S.TIMED_OUT:
            return Resume(rule=rule)
        return _state_refusal(actor, verb, run, "only a timed-out run can be resumed.")
    if verb in {"hold", "unhold"} and state in TERMINAL:
        return _state_refusal(actor, verb, run, "it has already ended.")
    if verb == "hold":
        if run.on_hold:
            return RefuseCommand(rule="state.hold", reply=f"@{actor}, this run is already on hold.")
        return Hold(rule=rule)
    if verb == "unhold":
        if not run.on_hold:
            return RefuseCommand(rule="state.unhold", reply=f"@{actor}, this run is not on hold.")
        return Unhold(rule=rule)
    # budget
    if state in TERMINAL and state is not S.TIMED_OUT:
        return _state_refusal(actor, verb, run, "a budget only matters for a run that goes on.")
    amount = command.amount or 0.0
    new = None if run.budget_usd is None else round(run.budget_usd + amount, 2)
    return RaiseBudget(rule=rule, amount=amount, new_budget_usd=new)


def _decide_steer(command: Command, run: RunSnapshot, actor: str, rule: str) -> ReviewDecision:
    """A running (or preparing) agent gets the message at its next model request; a queued
    run gets it in its prompt; a finished one gets nothing, and the actor is told why."""
    state = run.state
    if state in ACTIVE:
        message = clean(command.args)
        if not message:
            reply = (
                f"@{actor}, nothing is left of your message once hidden content (HTML "
                "comments, invisible characters) is removed; nothing was sent to the agent."
            )
            return RefuseCommand(rule="steer.empty", reply=reply)
        return Steer(rule=rule, actor=actor, message=message, folded=state is S.QUEUED)
    if state is S.MERGED:
        return _merged(actor, run, "there is no agent left to steer.")
    if state in REVIEWABLE or state in RETRYABLE:
        hint = (
            "its agent has finished, so nothing was sent; `/retry <feedback>` runs it again "
            "with your message."
        )
    else:
        hint = "its agent has finished, so nothing was sent."
    return _state_refusal(actor, "steer", run, hint)


def _note(command: Command) -> str:
    return f": {command.args}" if command.args else ""


def decide_command(
    command: Command,
    run: RunSnapshot | None,
    actor: str,
    permission: str | None,
    config: RepoConfig,
    *,
    now_sha: str | None,
    actor_type: str = "User",
) -> ReviewDecision:
    """What one command does to ``run``, the run as it is now (read in the serialised step).

    ``permission`` is the actor's collaborator permission read at execution time (None when it
    could not be read); ``now_sha`` is the PR head when the command was given (for a button,
    the check run's ``head_sha``; for a review, the PR head it was submitted on; for a
    comment, ``head_when_written``), None when the head moved after the comment was written.
    An approval counts only if that head is still the run's head.
    """
    if run is None:
        return IgnoreCommand(rule="run.none", reason="there is no Bosun run here")
    auth = authorize(command, actor, actor_type, permission, run, config)
    if not auth.allowed:
        if auth.rule == "command.bots_ignored":
            return IgnoreCommand(rule=auth.rule, reason=auth.reason)
        return RefuseCommand(rule=auth.rule, reply=auth.reason)
    if command.verb == "status":
        return ReplyStatus(rule=auth.rule, text=status_text(run, config))
    if command.verb == "help":
        may = _approver_rule(actor, permission, run, config) is not None
        text = help_text(permission, same_login(actor, run.requester), may_approve=may)
        return ReplyHelp(rule=auth.rule, text=text)
    if command.verb == "approve":
        return _decide_approve(command, run, actor, config, auth.rule, now_sha)
    return _decide_state(command, run, actor, auth.rule)


# --- buttons and reviews ------------------------------------------------------------------


def button_command(identifier: str, *, head_sha: str | None = None) -> Command | None:
    """The command a check-run button (or ``rerequested``, the "Re-run" link) stands for.

    ``head_sha`` (the check run's) binds an Approve click to the commit the button was on.
    """
    verb = "retry" if identifier == "rerequested" else BUTTONS.get(identifier)
    if verb is None:
        return None
    sha = head_sha if verb == "approve" else None
    return Command(verb, "", f"[button {identifier}]", 0, sha=sha, source="button")


def decide_review(
    review: ReviewRef,
    run: RunSnapshot | None,
    permission: str | None,
    config: RepoConfig,
    *,
    now_sha: str | None,
    line_comments: Sequence[tuple[str, int | None, str]] = (),
) -> ReviewDecision:
    """A submitted GitHub review: ``approved`` counts as ``/approve`` by its author, bound to
    the review's commit; ``changes_requested`` is a ``/retry`` carrying the review's body and
    its ``line_comments`` (path, line, text); any other state is recorded only."""
    if review.state == "changes_requested":
        retry = review_retry(review.body, list(line_comments))
        return decide_command(
            retry,
            run,
            review.user.login,
            permission,
            config,
            now_sha=now_sha,
            actor_type=review.user.type,
        )
    if review.state != "approved":
        reason = f"a {review.state.replace('_', ' ')} review is recorded, not acted on"
        return IgnoreCommand(rule=f"review.{review.state}", reason=reason)
    sha = review.commit_id or None
    command = Command("approve", "", "[review approved]", 0, sha=sha, source="review")
    return decide_command(
        command,
        run,
        review.user.login,
        permission,
        config,
        now_sha=now_sha,
        actor_type=review.user.type,
    )
