"""In-memory state of the emulated GitHub: one App, its installations, repositories, users,
issues and pull requests, comments, reviews, check runs, tokens and webhook deliveries.

Git data itself lives in bare repositories under the data directory (see ``gitrepo``).
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


class Ids:
    """Realistic-looking, distinct id sequences per kind of object."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._starts = {
            "user": 1_000_001,
            "repo": 500_000_001,
            "installation": 40_000_001,
            "app": 900_001,
            "issue": 2_000_000_001,
            "pull": 1_500_000_001,
            "comment": 1_800_000_001,
            "review": 1_900_000_001,
            "review_comment": 1_600_000_001,
            "check_run": 20_000_000_001,
            "check_suite": 21_000_000_001,
            "label": 6_000_000_001,
            "reaction": 250_000_001,
            "delivery": 90_000_000_001,
            "hook": 400_000_001,
        }

    def next(self, kind: str) -> int:
        counter = self._counters.get(kind)
        if counter is None:
            # A random offset per emulator: clients that cache by App or installation id (as
            # githubkit does, process-wide) never mix up two emulators' credentials.
            start = self._starts.get(kind, 1) + secrets.randbelow(10**5) * 1000
            counter = self._counters[kind] = itertools.count(start)
        return next(counter)


@dataclass
class User:
    id: int
    login: str
    type: str = "User"  # "User", "Bot" or "Organization"


@dataclass
class App:
    id: int
    slug: str
    name: str
    owner: User
    private_key_pem: str
    public_key_pem: str
    webhook_url: str
    webhook_secret: str
    hook_id: int
    bot: User
    created: float = field(default_factory=time.time)
    permissions: dict[str, str] = field(
        default_factory=lambda: {
            "checks": "write",
            "contents": "write",
            "issues": "write",
            "metadata": "read",
            "pull_requests": "write",
            "members": "read",
            "statuses": "read",
        }
    )
    events: list[str] = field(
        default_factory=lambda: [
            "check_run",
            "check_suite",
            "issue_comment",
            "issues",
            "pull_request",
            "pull_request_review",
            "pull_request_review_comment",
            "push",
            "status",
        ]
    )


@dataclass
class Installation:
    id: int
    account: User
    repo_ids: list[int]
    created: float = field(default_factory=time.time)


@dataclass
class Repo:
    id: int
    owner: User
    name: str
    default_branch: str
    path: Path  # the bare repository
    installation_id: int
    created: float = field(default_factory=time.time)
    pushed: float = field(default_factory=time.time)
    collaborators: dict[str, str] = field(default_factory=dict)  # login -> permission
    labels: dict[str, int] = field(default_factory=dict)  # name -> label id
    next_number: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"


@dataclass
class Comment:
    id: int
    repo_id: int
    number: int
    user: User
    body: str
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    reactions: list[Reaction] = field(default_factory=list)
    via_app: bool = False


@dataclass
class Reaction:
    id: int
    user: User
    content: str
    created: float = field(default_factory=time.time)


@dataclass
class Review:
    id: int
    user: User
    state: str
    body: str
    commit_id: str
    submitted: float = field(default_factory=time.time)


@dataclass
class ReviewComment:
    id: int
    review_id: int
    user: User
    body: str
    path: str
    line: int
    commit_id: str
    created: float = field(default_factory=time.time)


@dataclass
class Issue:
    """An issue, or the issue half of a pull request (``pull`` is set then)."""

    id: int
    repo_id: int
    number: int
    title: str
    body: str | None
    user: User
    labels: list[str] = field(default_factory=list)
    state: str = "open"
    state_reason: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    closed: float | None = None
    comment_ids: list[int] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)
    pull: Pull | None = None
    assignees: list[User] = field(default_factory=list)


@dataclass
class Pull:
    id: int
    head: str  # branch name
    base: str
    head_sha: str
    base_sha: str
    draft: bool = False
    merged: bool = False
    merged_at: float | None = None
    merged_by: User | None = None
    merge_commit_sha: str | None = None
    maintainer_can_modify: bool = False
    reviews: list[Review] = field(default_factory=list)
    review_comments: list[ReviewComment] = field(default_factory=list)


@dataclass
class CheckRun:
    id: int
    suite_id: int
    repo_id: int
    name: str
    head_sha: str
    status: str = "queued"
    conclusion: str | None = None
    started: float = field(default_factory=time.time)
    completed: float | None = None
    details_url: str | None = None
    external_id: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every create/update body
    app_slug: str | None = None  # another App's check run (a CI), by its slug; None: the App


@dataclass
class CommitStatus:
    """One commit status (``POST /repos/{o}/{r}/statuses/{sha}``): the latest per context
    counts."""

    id: int
    repo_id: int
    sha: str
    context: str
    state: str  # error, failure, pending, success
    creator: User
    description: str | None = None
    target_url: str | None = None
    created: float = field(default_factory=time.time)


@dataclass
class Token:
    token: str
    installation_id: int
    expires: float
    repo_ids: list[int] | None  # None: every repository of the installation
    permissions: dict[str, str]

    def valid(self) -> bool:
        return time.time() < self.expires


@dataclass
class Attempt:
    id: int
    delivered: float
    status_code: int
    duration: float
    redelivery: bool
    response_body: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Delivery:
    guid: str
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)


class Store:
    """All state behind one re-entrant lock (the webhook sender runs on its own thread)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock = threading.RLock()
        self.ids = Ids()
        self.base_url = ""
        self.app: App | None = None
        self.users: dict[str, User] = {}
        self.installations: dict[int, Installation] = {}
        self.repos: dict[int, Repo] = {}
        self.issues: dict[tuple[int, int], Issue] = {}  # (repo id, number)
        self.comments: dict[int, Comment] = {}
        self.check_runs: dict[int, CheckRun] = {}
        self.statuses: list[CommitStatus] = []
        self.protections: dict[tuple[int, str], list[str]] = {}  # (repo, branch) -> contexts
        self.protection_apps: dict[tuple[int, str], dict[str, str]] = {}  # context -> App slug
        # Rulesets' required status checks: (repo, branch) -> [(context, App slug or None)]
        self.rulesets: dict[tuple[int, str], list[tuple[str, str | None]]] = {}
        self.ci_apps: dict[str, App] = {}  # other Apps that report check runs, by slug
        self.tokens: dict[str, Token] = {}
        self.token_lifetime = 3600.0
        self.deliveries: list[Delivery] = []
        self.request_log: list[dict[str, Any]] = []
        self.manifest_codes: dict[str, dict[str, Any]] = {}

    def user(self, login: str, type_: str = "User") -> User:
        with self.lock:
            found = self.users.get(login.lower())
            if found is None:
                found = User(self.ids.next("user"), login, type_)
                self.users[login.lower()] = found
            return found

    def repo(self, owner: str, name: str) -> Repo | None:
        wanted = f"{owner}/{name}".lower()
        return next((r for r in self.repos.values() if r.full_name.lower() == wanted), None)

    def issue(self, repo: Repo, number: int) -> Issue | None:
        return self.issues.get((repo.id, number))

    def pulls(self, repo: Repo) -> list[Issue]:
        return [i for (rid, _), i in sorted(self.issues.items()) if rid == repo.id and i.pull]

    def permission(self, repo: Repo, login: str) -> str:
        if login.lower() == repo.owner.login.lower():
            return "admin"
        return repo.collaborators.get(login.lower(), "none")
