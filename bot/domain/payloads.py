"""Webhook payloads in, typed events out: the edge where raw JSON stops.

``parse_event(name, payload)`` returns a :class:`ParsedEvent` for the events and actions Bosun
handles (SPEC §3.1), an :class:`IgnoredEvent` for everything else, and raises
:class:`EventParseError` for a payload that is not JSON or lacks what a handled event needs.

Bosun validates only the fields it routes on, with pydantic models that ignore the rest.
githubkit's full webhook models are stricter than what GitHub sends: with githubkit 0.16.1,
35 of the 99 api.github.com examples in ``@octokit/webhooks-examples`` for these events fail
validation on fields Bosun never reads (``performed_via_github_app``, ``app_slug``...), and a
strict parse would drop real deliveries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bot.errors import BosunError

HANDLED_ACTIONS: dict[str, frozenset[str] | None] = {
    "issues": frozenset({"labeled", "unlabeled", "edited", "closed", "assigned"}),
    "issue_comment": frozenset({"created"}),
    "pull_request": frozenset({"closed", "synchronize"}),
    "pull_request_review": frozenset({"submitted"}),
    "pull_request_review_comment": frozenset({"created"}),
    "check_run": frozenset({"requested_action", "rerequested", "completed"}),
    "check_suite": frozenset({"completed"}),
    "status": None,  # a commit status has no action
    "installation": None,  # every action keeps the installation table current
    "installation_repositories": frozenset({"added", "removed"}),
    "ping": None,
}


class EventParseError(BosunError, ValueError):
    """A delivery's payload is not JSON, or lacks a field its event needs."""


# --- what the rest of Bosun sees ----------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    login: str
    type: str  # "User", "Bot" or "Organization"
    id: int = 0

    @property
    def is_bot(self) -> bool:
        return self.type == "Bot" or self.login.endswith("[bot]")


@dataclass(frozen=True)
class RepositoryRef:
    id: int
    full_name: str
    owner: str
    name: str
    default_branch: str | None = None
    private: bool = False


@dataclass(frozen=True)
class IssueRef:
    number: int
    title: str
    body: str
    labels: tuple[str, ...]
    user: Actor
    state: str
    is_pull_request: bool


@dataclass(frozen=True)
class CommentRef:
    id: int
    body: str
    user: Actor
    created_at: datetime | None = None


@dataclass(frozen=True)
class PullRequestRef:
    number: int
    title: str
    head_ref: str
    head_sha: str
    base_ref: str
    merged: bool
    state: str
    user: Actor


@dataclass(frozen=True)
class ReviewRef:
    id: int
    state: str  # lowercase: "approved", "changes_requested", "commented", "dismissed"
    user: Actor
    commit_id: str
    body: str


@dataclass(frozen=True)
class CheckRunRef:
    id: int
    name: str
    head_sha: str
    external_id: str
    app_id: int | None
    requested_action: str | None  # the button's identifier, on ``requested_action``


@dataclass(frozen=True)
class ChecksChanged:
    """A commit's checks changed (``check_run.completed``, ``check_suite.completed``,
    ``status``): an approved run waiting on them may merge now. ``app_id`` is the App that
    reported them (None for a commit status)."""

    sha: str
    app_id: int | None
    name: str
    state: str


@dataclass(frozen=True)
class InstallationRef:
    id: int
    account: Actor | None
    repository_selection: str | None


@dataclass(frozen=True)
class ParsedEvent:
    """One handled delivery, reduced to what Bosun routes on."""

    event: str
    action: str | None
    installation_id: int | None
    sender: Actor | None
    repository: RepositoryRef | None = None
    issue: IssueRef | None = None
    comment: CommentRef | None = None
    label: str | None = None
    pull_request: PullRequestRef | None = None
    review: ReviewRef | None = None
    check_run: CheckRunRef | None = None
    checks_changed: ChecksChanged | None = None
    assignee: Actor | None = None
    installation: InstallationRef | None = None
    repositories_added: tuple[RepositoryRef, ...] = ()
    repositories_removed: tuple[RepositoryRef, ...] = ()

    @property
    def key(self) -> str:
        """``event.action`` (or just ``event``), e.g. ``issues.labeled``."""
        return _key(self.event, self.action)


@dataclass(frozen=True)
class IgnoredEvent:
    """A delivery Bosun records but does not act on, and why."""

    event: str
    action: str | None
    reason: str
    installation_id: int | None = None


# --- wire shapes (only the fields Bosun reads; everything else is ignored) ----------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _User(_Wire):
    login: str
    id: int = 0
    type: str = "User"


class _Owner(_Wire):
    login: str


class _Repo(_Wire):
    id: int
    name: str
    full_name: str
    owner: _Owner | None = None
    default_branch: str | None = None
    private: bool = False


class _Label(_Wire):
    name: str


class _Issue(_Wire):
    number: int
    title: str
    body: str | None = None
    labels: list[_Label] = []
    user: _User
    state: str = "open"
    pull_request: dict[str, Any] | None = None


class _Comment(_Wire):
    id: int
    body: str | None = None
    user: _User
    created_at: datetime | None = None


class _Branch(_Wire):
    ref: str
    sha: str


class _PullRequest(_Wire):
    number: int
    title: str = ""
    head: _Branch
    base: _Branch
    merged: bool | None = None
    state: str = "open"
    user: _User


class _Review(_Wire):
    id: int
    state: str
    user: _User
    commit_id: str = ""
    body: str | None = None


class _App(_Wire):
    id: int


class _CheckRun(_Wire):
    id: int
    name: str
    head_sha: str
    external_id: str | None = None
    app: _App | None = None


class _CheckSuite(_Wire):
    head_sha: str
    conclusion: str | None = None
    app: _App | None = None


class _RequestedAction(_Wire):
    identifier: str


class _Installation(_Wire):
    id: int
    account: _User | None = None
    repository_selection: str | None = None


class _Payload(_Wire):
    action: str | None = None
    installation: _Installation | None = None
    sender: _User | None = None
    repository: _Repo | None = None
    issue: _Issue | None = None
    comment: _Comment | None = None
    label: _Label | None = None
    pull_request: _PullRequest | None = None
    review: _Review | None = None
    check_run: _CheckRun | None = None
    check_suite: _CheckSuite | None = None
    sha: str | None = None  # status
    context: str | None = None  # status
    state: str | None = None  # status
    assignee: _User | None = None
    requested_action: _RequestedAction | None = None
    repositories_added: list[_Repo] = []
    repositories_removed: list[_Repo] = []


REQUIRED: dict[str, tuple[str, ...]] = {
    "issues": ("issue", "repository", "sender"),
    "issue_comment": ("issue", "comment", "repository", "sender"),
    "pull_request": ("pull_request", "repository", "sender"),
    "pull_request_review": ("review", "pull_request", "repository", "sender"),
    "pull_request_review_comment": ("comment", "pull_request", "repository", "sender"),
    "check_run": ("check_run", "repository", "sender"),
    "check_suite": ("check_suite", "repository", "sender"),
    "status": ("sha", "context", "state", "repository", "sender"),
    "installation": ("installation", "sender"),
    "installation_repositories": ("installation", "sender"),
    "ping": (),
}


# --- conversion ---------------------------------------------------------------------------


def _actor(user: _User | None) -> Actor | None:
    return Actor(login=user.login, type=user.type, id=user.id) if user else None


def _user(user: _User) -> Actor:
    return Actor(login=user.login, type=user.type, id=user.id)


def _repo(repo: _Repo | None) -> RepositoryRef | None:
    if repo is None:
        return None
    owner = repo.owner.login if repo.owner else repo.full_name.split("/", 1)[0]
    return RepositoryRef(
        id=repo.id,
        full_name=repo.full_name,
        owner=owner,
        name=repo.name,
        default_branch=repo.default_branch,
        private=repo.private,
    )


def _convert(event: str, wire: _Payload) -> ParsedEvent:
    issue = comment = pull = review = check = installation = None
    if wire.issue is not None:
        i = wire.issue
        issue = IssueRef(
            number=i.number,
            title=i.title,
            body=i.body or "",
            labels=tuple(label.name for label in i.labels),
            user=_user(i.user),
            state=i.state,
            is_pull_request=i.pull_request is not None,
        )
    if wire.comment is not None:
        c = wire.comment
        comment = CommentRef(
            id=c.id, body=c.body or "", user=_user(c.user), created_at=c.created_at
        )
    if wire.pull_request is not None:
        p = wire.pull_request
        pull = PullRequestRef(
            number=p.number,
            title=p.title,
            head_ref=p.head.ref,
            head_sha=p.head.sha,
            base_ref=p.base.ref,
            merged=bool(p.merged),
            state=p.state,
            user=_user(p.user),
        )
    if wire.review is not None:
        r = wire.review
        review = ReviewRef(
            id=r.id,
            state=r.state.lower(),
            user=_user(r.user),
            commit_id=r.commit_id,
            body=r.body or "",
        )
    if wire.check_run is not None:
        k = wire.check_run
        check = CheckRunRef(
            id=k.id,
            name=k.name,
            head_sha=k.head_sha,
            external_id=k.external_id or "",
            app_id=k.app.id if k.app else None,
            requested_action=wire.requested_action.identifier if wire.requested_action else None,
        )
    changed = None
    if event == "check_run" and wire.action == "completed" and wire.check_run is not None:
        k = wire.check_run
        app_id = k.app.id if k.app else None
        changed = ChecksChanged(k.head_sha, app_id, k.name, "completed")
    elif event == "check_suite" and wire.check_suite is not None:
        suite = wire.check_suite
        app_id = suite.app.id if suite.app else None
        changed = ChecksChanged(suite.head_sha, app_id, "", suite.conclusion or "")
    elif event == "status" and wire.sha and wire.context and wire.state:
        changed = ChecksChanged(wire.sha, None, wire.context, wire.state)
    if wire.installation is not None:
        n = wire.installation
        installation = InstallationRef(
            id=n.id, account=_actor(n.account), repository_selection=n.repository_selection
        )
    return ParsedEvent(
        event=event,
        action=wire.action,
        installation_id=wire.installation.id if wire.installation else None,
        sender=_actor(wire.sender),
        repository=_repo(wire.repository),
        issue=issue,
        comment=comment,
        label=wire.label.name if wire.label else None,
        pull_request=pull,
        review=review,
        check_run=check,
        checks_changed=changed,
        assignee=_actor(wire.assignee),
        installation=installation,
        repositories_added=tuple(r for r in map(_repo, wire.repositories_added) if r),
        repositories_removed=tuple(r for r in map(_repo, wire.repositories_removed) if r),
    )


def _load(payload: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(payload, dict):
        return payload
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventParseError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EventParseError(f"payload must be a JSON object, got {type(data).__name__}")
    return data


def _describe(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _key(event: str, action: str | None) -> str:
    return f"{event}.{action}" if action else event


def parse_event(
    event_name: str, payload: bytes | str | dict[str, Any]
) -> ParsedEvent | IgnoredEvent:
    """Parse one delivery (``X-GitHub-Event`` header plus body)."""
    data = _load(payload)
    action = data.get("action") if isinstance(data.get("action"), str) else None
    installation = data.get("installation")
    installation_id = installation.get("id") if isinstance(installation, dict) else None
    if not isinstance(installation_id, int):
        installation_id = None
    if event_name not in HANDLED_ACTIONS:
        return IgnoredEvent(event_name, action, "event not handled", installation_id)
    actions = HANDLED_ACTIONS[event_name]
    if actions is not None and action not in actions:
        reason = (
            "comment edits and deletes never re-run"
            if event_name == "issue_comment"
            else f"action {action!r} not handled"
        )
        return IgnoredEvent(event_name, action, reason, installation_id)
    try:
        wire = _Payload.model_validate(data)
    except ValidationError as exc:
        raise EventParseError(f"{_key(event_name, action)} payload: {_describe(exc)}") from exc
    missing = [key for key in REQUIRED[event_name] if getattr(wire, key) is None]
    if missing:
        raise EventParseError(f"{_key(event_name, action)} payload lacks {', '.join(missing)}")
    return _convert(event_name, wire)
