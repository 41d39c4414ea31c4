"""The forge port: what jobs ask of the place a repository lives, in Bosun's terms.

Two implementations: ``bot.github.repo.GitHubRepo`` (GitHub, GitHub Enterprise, the test
emulator) and ``bot.forge.local.LocalForge`` (a git repository on the worker's host). Jobs get
theirs from ``JobContext.forge(repository)`` and never ask which one it is.

The port keeps HTTP at the edge: a call that fails raises a ``ForgeError`` (``ForgeUnavailable``
when trying again later may help), a merge answers with what happened (``Merged``,
``HeadMoved``, ``Conflict``, ``NotMergeable``), and check runs are ``CheckRunUpdate`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.domain.payloads import RepositoryRef
from bot.domain.repoconfig import RepoConfig
from bot.domain.review.checks import CheckResult as CheckResult  # reported in domain terms
from bot.domain.review.checks import ChecksReport as ChecksReport
from bot.domain.status import CheckRunUpdate
from bot.errors import BosunError
from sandboxes.localrepo import GitRemote


class ForgeError(BosunError):
    """A forge call failed. ``status`` is the HTTP status when the forge speaks HTTP."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ForgeUnavailable(ForgeError):
    """The forge did not answer (network, timeouts, 5xx, rate limits after retries): the
    same call may succeed later, so a job retries."""


class ForgeRefused(ForgeError):
    """The forge answered and refused (a 4xx other than the ones a method turns into a
    value, a repository that is gone): trying again will not help."""


@dataclass(frozen=True)
class PullInfo:
    """A change under review: a pull request on GitHub, the run's branch locally."""

    number: int
    head_ref: str
    head_sha: str
    base_ref: str
    state: str
    draft: bool
    merged: bool
    html_url: str


@dataclass(frozen=True)
class IssueInfo:
    number: int
    title: str
    body: str
    author: str
    author_type: str
    labels: tuple[str, ...]
    state: str
    is_pull_request: bool


@dataclass(frozen=True)
class CommentInfo:
    id: int
    author: str
    author_type: str
    body: str


@dataclass(frozen=True)
class Merged:
    """The change is on the base branch; ``sha`` is the merge commit (None when the answer
    was lost and the merge was confirmed by reading the change again)."""

    sha: str | None
    message: str = "merged"


@dataclass(frozen=True)
class HeadMoved:
    """Nothing merged: the change's head is no longer the commit the merge named."""

    message: str
    head: str | None = None
    status: int | None = None
    """The forge's own answer code, kept in the manifest (GitHub: 409)."""


@dataclass(frozen=True)
class Conflict:
    """Nothing merged: the base branch changed the same files. ``paths`` may be empty when
    the forge does not say which (GitHub); the caller then computes them."""

    message: str
    paths: tuple[str, ...] = ()
    status: int | None = None


@dataclass(frozen=True)
class NotMergeable:
    """Nothing merged, for another reason the forge gives (branch protection, a checked-out
    branch with uncommitted changes, a closed pull request)."""

    message: str
    status: int | None = None


MergeOutcome = Merged | HeadMoved | Conflict | NotMergeable


@dataclass(frozen=True)
class ReviewLineComment:
    """One comment a review left on a line of the change."""

    path: str
    line: int | None
    body: str


class Forge(Protocol):
    """What Bosun asks of one repository's forge."""

    full_name: str
    forge_name: str
    """The forge's name at the start of a sentence: "GitHub", "The local repository"."""
    merge_setting: str
    """The setting that turns merging on approval off (named when it is)."""
    config_paths: tuple[str, ...]
    """Where the repository's config is read from, the first that exists."""

    async def file_text(self, path: str, ref: str) -> str | None: ...
    async def permission(self, login: str) -> str: ...
    async def get_issue(self, number: int) -> IssueInfo | None: ...
    async def describe(self) -> RepositoryRef: ...
    async def create_comment(self, number: int, body: str) -> int: ...
    async def update_comment(self, comment_id: int, body: str) -> None: ...
    async def list_comments(self, number: int) -> list[CommentInfo]: ...
    async def find_comment(self, number: int, marker: str) -> int | None: ...
    async def react(self, content: str, *, comment_id: int | None, issue: int | None) -> None: ...
    async def create_check_run(self, head_sha: str, update: CheckRunUpdate) -> int: ...
    async def update_check_run(self, check_run_id: int, update: CheckRunUpdate) -> None: ...
    async def find_pull(self, head_branch: str) -> PullInfo | None: ...
    async def get_pull(self, number: int) -> PullInfo: ...
    async def create_pull(
        self, *, title: str, body: str, head: str, base: str, draft: bool
    ) -> PullInfo: ...
    async def update_pull(self, number: int, *, title: str, body: str) -> PullInfo: ...
    async def merge_pull(self, number: int, *, sha: str, method: str) -> MergeOutcome: ...
    def merge_method(self, config: RepoConfig) -> str | None:
        """How an approved change is merged here, or None when approval merges nothing
        (left to people)."""
        ...

    async def close_pull(self, number: int, *, delete_branch: bool) -> None:
        """A rejected or cancelled change: forget it (and delete its branch if asked)."""
        ...

    async def review_comments(self, number: int, review_id: int) -> list[ReviewLineComment]:
        """The line comments of review ``review_id`` on change ``number``, oldest first."""
        ...

    async def checks(self, sha: str, base_branch: str) -> ChecksReport:
        """The checks ``base_branch`` requires and those reported on commit ``sha`` (a forge
        without checks reports none: nothing to wait for)."""
        ...

    async def commit_tree(self, sha: str) -> str | None: ...
    async def comment_body(self, comment_id: int) -> str | None: ...
    async def branch_head(self, branch: str) -> str | None:
        """The commit ``branch`` points at now, or None when it does not exist."""
        ...

    async def git_auth_header(self) -> str | None: ...
    def clone_url(self) -> GitRemote:
        """Where host-side git fetches from and pushes to (``sandboxes``)."""
        ...


def merge_reason(outcome: MergeOutcome) -> str:
    """A short name for what a merge did, for the manifest."""
    return {
        Merged: "merged",
        HeadMoved: "head_moved",
        Conflict: "conflict",
        NotMergeable: "not_mergeable",
    }[type(outcome)]
