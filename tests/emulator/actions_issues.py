"""State changes on issues, labels, comments and reactions, each announced by a webhook."""

from __future__ import annotations

import time
from typing import Any

from . import payloads as wh
from .context import Context
from .http import HttpError, validation_failed
from .render import REACTIONS
from .state import Comment, Issue, Reaction, Repo, User


def _issue_event(ctx: Context, r: Repo, i: Issue, action: str, sender: User, **extra: Any) -> None:
    """``issues.<action>``, or ``pull_request.<action>`` when the issue is a pull request."""
    s = ctx.store
    if i.pull is not None:
        payload = wh.envelope(
            s, r, sender, action=action, number=i.number, pull_request=wh.pull(s, r, i), **extra
        )
        ctx.hooks.emit("pull_request", payload)
    else:
        payload = wh.envelope(s, r, sender, action=action, issue=wh.issue(s, r, i), **extra)
        ctx.hooks.emit("issues", payload)


def open_issue(
    ctx: Context, r: Repo, title: str, body: str | None, user: User, labels: list[str] | None = None
) -> Issue:
    if not title:
        raise validation_failed("Issue", "title", "missing_field", "title is missing")
    s = ctx.store
    with s.lock:
        number = r.next_number
        r.next_number += 1
        issue = Issue(s.ids.next("issue"), r.id, number, title, body, user)
        s.issues[(r.id, number)] = issue
    ctx.hooks.emit("issues", wh.envelope(s, r, user, action="opened", issue=wh.issue(s, r, issue)))
    if labels:
        add_labels(ctx, r, issue, labels, user)
    return issue


def edit_issue(ctx: Context, r: Repo, i: Issue, changes: dict[str, Any], sender: User) -> None:
    """Apply ``title``/``body``/``state``/``state_reason`` changes with GitHub's events."""
    edited: dict[str, Any] = {}
    for key in ("title", "body"):
        if key in changes and changes[key] != getattr(i, key):
            edited[key] = {"from": getattr(i, key)}
            setattr(i, key, changes[key])
    if edited:
        i.updated = time.time()
        _issue_event(ctx, r, i, "edited", sender, changes=edited)
    state = changes.get("state")
    if state not in (None, "open", "closed"):
        raise validation_failed("Issue", "state", "invalid", f"{state} is not a valid state")
    if state and state != i.state:
        i.state = state
        i.updated = time.time()
        if state == "closed":
            i.closed = time.time()
            i.state_reason = changes.get("state_reason") or (None if i.pull else "completed")
            _issue_event(ctx, r, i, "closed", sender)
        else:
            i.closed = None
            i.state_reason = "reopened" if not i.pull else None
            _issue_event(ctx, r, i, "reopened", sender)


def add_labels(ctx: Context, r: Repo, i: Issue, labels: list[str], sender: User) -> None:
    s = ctx.store
    for name in labels:
        if name in i.labels:
            continue
        i.labels.append(name)
        i.updated = time.time()
        _issue_event(ctx, r, i, "labeled", sender, label=wh.label(s, r, name))


def assign(ctx: Context, r: Repo, i: Issue, logins: list[str], sender: User) -> None:
    """Add assignees (an App's bot user too, as GitHub lets Copilot be assigned); one
    ``issues.assigned`` per new assignee."""
    s = ctx.store
    for login in logins:
        found = s.user(login, "Bot" if login.endswith("[bot]") else "User")
        if any(u.id == found.id for u in i.assignees):
            continue
        i.assignees.append(found)
        i.updated = time.time()
        _issue_event(ctx, r, i, "assigned", sender, assignee=wh.user(s, found))


def remove_label(ctx: Context, r: Repo, i: Issue, name: str, sender: User) -> None:
    if name not in i.labels:
        raise HttpError(404, "Label does not exist")
    i.labels.remove(name)
    i.updated = time.time()
    _issue_event(ctx, r, i, "unlabeled", sender, label=wh.label(ctx.store, r, name))


BODY_MAX = 65_536
"""Characters GitHub accepts in a comment or review body (more: 422 "Body is too long")."""
COMMENTS_DOCS = "https://docs.github.com/rest/issues/comments"


def body_too_long(resource: str, body: str | None, docs: str) -> None:
    """GitHub's refusal of a body over ``BODY_MAX`` characters, as it answers it."""
    if body is not None and len(body) > BODY_MAX:
        error = {
            "resource": resource,
            "code": "unprocessable",
            "field": "data",
            "message": f"Body is too long (maximum is {BODY_MAX} characters)",
        }
        raise HttpError(422, "Validation Failed", errors=[error], docs=docs)


def add_comment(
    ctx: Context, r: Repo, i: Issue, body: str, user: User, via_app: bool = False
) -> Comment:
    if not body:
        raise validation_failed("IssueComment", "body", "missing_field", "body is missing")
    body_too_long("IssueComment", body, f"{COMMENTS_DOCS}#create-an-issue-comment")
    s = ctx.store
    with s.lock:
        comment = Comment(s.ids.next("comment"), r.id, i.number, user, body, via_app=via_app)
        s.comments[comment.id] = comment
        i.comment_ids.append(comment.id)
        i.updated = time.time()
    payload = wh.envelope(
        s, r, user, action="created", issue=wh.issue(s, r, i), comment=wh.comment(s, r, comment)
    )
    ctx.hooks.emit("issue_comment", payload)
    return comment


def edit_comment(ctx: Context, r: Repo, c: Comment, body: str, sender: User) -> None:
    if not body:
        raise validation_failed("IssueComment", "body", "missing_field", "body is missing")
    body_too_long("IssueComment", body, f"{COMMENTS_DOCS}#update-an-issue-comment")
    s = ctx.store
    previous = c.body
    c.body = body
    c.updated = time.time()
    i = s.issues[(r.id, c.number)]
    payload = wh.envelope(
        s,
        r,
        sender,
        action="edited",
        changes={"body": {"from": previous}},
        issue=wh.issue(s, r, i),
        comment=wh.comment(s, r, c),
    )
    ctx.hooks.emit("issue_comment", payload)


def delete_comment(ctx: Context, r: Repo, c: Comment, sender: User) -> None:
    s = ctx.store
    i = s.issues[(r.id, c.number)]
    comment = wh.comment(s, r, c)
    with s.lock:
        del s.comments[c.id]
        i.comment_ids.remove(c.id)
    payload = wh.envelope(s, r, sender, action="deleted", issue=wh.issue(s, r, i), comment=comment)
    ctx.hooks.emit("issue_comment", payload)


def react(ctx: Context, target: Issue | Comment, content: str, user: User) -> tuple[Reaction, bool]:
    """Add a reaction; the existing one (and ``False``) when this user already gave it."""
    if content not in REACTIONS:
        raise validation_failed(
            "Reaction", "content", "invalid", f"content must be one of {', '.join(REACTIONS)}"
        )
    for existing in target.reactions:
        if existing.user.id == user.id and existing.content == content:
            return existing, False
    reaction = Reaction(ctx.store.ids.next("reaction"), user, content)
    target.reactions.append(reaction)
    return reaction, True
