"""The repository port: every GitHub call the pipeline makes, behind one small interface.

``RepoPort`` is what domain code and jobs depend on; ``GitHubRepo`` implements it with
githubkit against GitHub (or GitHub Enterprise, or the test emulator) using installation
tokens scoped to the one repository. A token GitHub calls bad (401) is re-minted once.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from githubkit import GitHub, TokenAuthStrategy
from githubkit.exception import RequestFailed
from githubkit_schemas.latest.models import (
    CheckRun,
    ContentFile,
    FullRepository,
    GitCommit,
    Issue,
    IssueComment,
    PullRequest,
    PullRequestMergeResult,
    PullRequestSimple,
    RepositoryCollaboratorPermission,
)

from bot.domain.limits import fit_comment
from bot.domain.payloads import RepositoryRef
from bot.github.tokens import COLLABORATE, MERGE, WRITE_CONTENTS, GitHubApp
from bot.metrics.local import GITHUB_HOOKS

T = TypeVar("T")

PERMISSION_ORDER = ("none", "read", "triage", "write", "maintain", "admin")


def permission_at_least(permission: str | None, minimum: str) -> bool:
    if permission not in PERMISSION_ORDER:
        return False
    return PERMISSION_ORDER.index(permission) >= PERMISSION_ORDER.index(minimum)


@dataclass(frozen=True)
class PullInfo:
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
class MergeOutcome:
    merged: bool
    sha: str | None
    message: str
    status: int

    @property
    def head_moved(self) -> bool:
        """GitHub refused because the PR head is no longer the ``sha`` the merge named."""
        return self.status == 409


class RepoPort(Protocol):
    """What Bosun asks of one GitHub repository."""

    full_name: str

    async def file_text(self, path: str, ref: str) -> str | None: ...
    async def permission(self, login: str) -> str: ...
    async def get_issue(self, number: int) -> IssueInfo | None: ...
    async def describe(self) -> RepositoryRef: ...
    async def create_comment(self, number: int, body: str) -> int: ...
    async def update_comment(self, comment_id: int, body: str) -> None: ...
    async def list_comments(self, number: int) -> list[CommentInfo]: ...
    async def find_comment(self, number: int, marker: str) -> int | None: ...
    async def react(self, content: str, *, comment_id: int | None, issue: int | None) -> None: ...
    async def create_check_run(self, head_sha: str, fields: dict[str, Any]) -> int: ...
    async def update_check_run(self, check_run_id: int, fields: dict[str, Any]) -> None: ...
    async def find_pull(self, head_branch: str) -> PullInfo | None: ...
    async def get_pull(self, number: int) -> PullInfo: ...
    async def create_pull(
        self, *, title: str, body: str, head: str, base: str, draft: bool
    ) -> PullInfo: ...
    async def update_pull(self, number: int, *, title: str, body: str) -> PullInfo: ...
    async def merge_pull(self, number: int, *, sha: str, method: str) -> MergeOutcome: ...
    async def commit_tree(self, sha: str) -> str | None: ...
    async def comment_body(self, comment_id: int) -> str | None: ...
    async def git_auth_header(self) -> str: ...
    def clone_url(self) -> str: ...


def _pull(pr: PullRequest | PullRequestSimple) -> PullInfo:
    merged = bool(getattr(pr, "merged", False) or pr.merged_at)
    return PullInfo(
        number=pr.number,
        head_ref=pr.head.ref,
        head_sha=pr.head.sha,
        base_ref=pr.base.ref,
        state=pr.state,
        draft=bool(pr.draft),
        merged=merged,
        html_url=pr.html_url,
    )


class GitHubRepo:
    """``RepoPort`` over githubkit with installation tokens."""

    def __init__(self, app: GitHubApp, installation_id: int, full_name: str) -> None:
        self.app = app
        self.installation_id = installation_id
        self.full_name = full_name
        self.owner, self.name = full_name.split("/", 1)

    async def _client(self, permissions: dict[str, str]) -> GitHub[Any]:
        token = await self.app.token(self.installation_id, self.full_name, permissions)
        return GitHub(
            TokenAuthStrategy(token.value),
            base_url=self.app.settings.api_url,
            auto_retry=self.app.retry,
            http_cache=False,
            user_agent="Bosun",
            async_event_hooks=GITHUB_HOOKS,
            ssl_verify=self.app.ssl_context,
        )

    async def _call(
        self,
        action: Callable[[GitHub[Any]], Awaitable[T]],
        permissions: dict[str, str] = COLLABORATE,
    ) -> T:
        try:
            return await action(await self._client(permissions))
        except RequestFailed as exc:
            if exc.response.status_code != 401:
                raise
            self.app.forget(self.installation_id, self.full_name)  # expired or revoked
            return await action(await self._client(permissions))

    def _path(self, tail: str) -> str:
        return f"/repos/{self.owner}/{self.name}{tail}"

    async def file_text(self, path: str, ref: str) -> str | None:
        async def go(gh: GitHub[Any]) -> str | None:
            try:
                response = await gh.arequest(
                    "GET",
                    self._path(f"/contents/{path}"),
                    params={"ref": ref},
                    response_model=ContentFile,
                )
            except RequestFailed as exc:
                if exc.response.status_code == 404:
                    return None
                raise
            data = response.parsed_data
            return base64.b64decode(data.content).decode() if data.content else ""

        return await self._call(go)

    async def describe(self) -> RepositoryRef:
        """The repository as GitHub describes it (id, default branch, visibility)."""

        async def go(gh: GitHub[Any]) -> RepositoryRef:
            response = await gh.arequest("GET", self._path(""), response_model=FullRepository)
            repo = response.parsed_data
            return RepositoryRef(
                id=repo.id,
                full_name=repo.full_name,
                owner=repo.owner.login,
                name=repo.name,
                default_branch=repo.default_branch,
                private=repo.private,
            )

        return await self._call(go)

    async def get_issue(self, number: int) -> IssueInfo | None:
        async def go(gh: GitHub[Any]) -> IssueInfo | None:
            try:
                response = await gh.arequest(
                    "GET", self._path(f"/issues/{number}"), response_model=Issue
                )
            except RequestFailed as exc:
                if exc.response.status_code in (404, 410):
                    return None
                raise
            issue = response.parsed_data
            user = issue.user
            labels = tuple(
                label if isinstance(label, str) else (label.name or "") for label in issue.labels
            )
            return IssueInfo(
                number=issue.number,
                title=issue.title,
                body=issue.body or "",
                author=user.login if user else "",
                author_type=user.type if user else "User",
                labels=labels,
                state=issue.state,
                is_pull_request=bool(issue.pull_request),
            )

        return await self._call(go)

    async def permission(self, login: str) -> str:
        async def go(gh: GitHub[Any]) -> str:
            try:
                response = await gh.arequest(
                    "GET",
                    self._path(f"/collaborators/{login}/permission"),
                    response_model=RepositoryCollaboratorPermission,
                )
            except RequestFailed as exc:
                if exc.response.status_code == 404:
                    return "none"
                raise
            return response.parsed_data.permission

        return await self._call(go)

    async def create_comment(self, number: int, body: str) -> int:
        """Post a comment; a body over GitHub's limit is cut with a note, never refused."""

        async def go(gh: GitHub[Any]) -> int:
            response = await gh.arequest(
                "POST",
                self._path(f"/issues/{number}/comments"),
                json={"body": fit_comment(body)},
                response_model=IssueComment,
            )
            return response.parsed_data.id

        return await self._call(go)

    async def update_comment(self, comment_id: int, body: str) -> None:
        async def go(gh: GitHub[Any]) -> None:
            await gh.arequest(
                "PATCH",
                self._path(f"/issues/comments/{comment_id}"),
                json={"body": fit_comment(body)},
                response_model=IssueComment,
            )

        await self._call(go)

    async def list_comments(self, number: int) -> list[CommentInfo]:
        """Every comment on issue or PR ``number``, oldest first."""

        async def go(gh: GitHub[Any]) -> list[CommentInfo]:
            out: list[CommentInfo] = []
            page = 1
            while True:
                response = await gh.arequest(
                    "GET",
                    self._path(f"/issues/{number}/comments"),
                    params={"per_page": 100, "page": page},
                    response_model=list[IssueComment],
                )
                for c in response.parsed_data:
                    user = c.user
                    out.append(
                        CommentInfo(
                            id=c.id,
                            author=user.login if user else "ghost",
                            author_type=user.type if user else "User",
                            body=c.body or "",
                        )
                    )
                if len(response.parsed_data) < 100:
                    return out
                page += 1

        return await self._call(go)

    async def comment_body(self, comment_id: int) -> str | None:
        """The body of comment ``comment_id`` on an issue or PR, or None when it is gone."""

        async def go(gh: GitHub[Any]) -> str | None:
            try:
                response = await gh.arequest(
                    "GET",
                    self._path(f"/issues/comments/{comment_id}"),
                    response_model=IssueComment,
                )
            except RequestFailed as exc:
                if exc.response.status_code == 404:
                    return None
                raise
            return response.parsed_data.body or ""

        return await self._call(go)

    async def find_comment(self, number: int, marker: str) -> int | None:
        """The id of the App's own comment on ``number`` that carries ``marker``."""
        bot = self.app.settings.bot_login
        for comment in await self.list_comments(number):
            if comment.author == bot and marker in comment.body:
                return comment.id
        return None

    async def react(self, content: str, *, comment_id: int | None, issue: int | None) -> None:
        tail = (
            f"/issues/comments/{comment_id}/reactions"
            if comment_id
            else f"/issues/{issue}/reactions"
        )

        async def go(gh: GitHub[Any]) -> None:
            await gh.arequest("POST", self._path(tail), json={"content": content})

        await self._call(go)

    async def create_check_run(self, head_sha: str, fields: dict[str, Any]) -> int:
        async def go(gh: GitHub[Any]) -> int:
            response = await gh.arequest(
                "POST",
                self._path("/check-runs"),
                json={"head_sha": head_sha, **fields},
                response_model=CheckRun,
            )
            return response.parsed_data.id

        return await self._call(go)

    async def update_check_run(self, check_run_id: int, fields: dict[str, Any]) -> None:
        async def go(gh: GitHub[Any]) -> None:
            await gh.arequest(
                "PATCH",
                self._path(f"/check-runs/{check_run_id}"),
                json=fields,
                response_model=CheckRun,
            )

        await self._call(go)

    async def find_pull(self, head_branch: str) -> PullInfo | None:
        async def go(gh: GitHub[Any]) -> PullInfo | None:
            response = await gh.arequest(
                "GET",
                self._path("/pulls"),
                params={"head": f"{self.owner}:{head_branch}", "state": "open"},
                response_model=list[PullRequestSimple],
            )
            pulls = response.parsed_data
            return _pull(pulls[0]) if pulls else None

        return await self._call(go)

    async def get_pull(self, number: int) -> PullInfo:
        async def go(gh: GitHub[Any]) -> PullInfo:
            response = await gh.arequest(
                "GET", self._path(f"/pulls/{number}"), response_model=PullRequest
            )
            return _pull(response.parsed_data)

        return await self._call(go)

    async def create_pull(
        self, *, title: str, body: str, head: str, base: str, draft: bool
    ) -> PullInfo:
        async def go(gh: GitHub[Any]) -> PullInfo:
            response = await gh.arequest(
                "POST",
                self._path("/pulls"),
                json={"title": title, "body": body, "head": head, "base": base, "draft": draft},
                response_model=PullRequest,
            )
            return _pull(response.parsed_data)

        return await self._call(go)

    async def update_pull(self, number: int, *, title: str, body: str) -> PullInfo:
        async def go(gh: GitHub[Any]) -> PullInfo:
            response = await gh.arequest(
                "PATCH",
                self._path(f"/pulls/{number}"),
                json={"title": title, "body": body},
                response_model=PullRequest,
            )
            return _pull(response.parsed_data)

        return await self._call(go)

    async def merge_pull(self, number: int, *, sha: str, method: str) -> MergeOutcome:
        async def go(gh: GitHub[Any]) -> MergeOutcome:
            try:
                response = await gh.arequest(
                    "PUT",
                    self._path(f"/pulls/{number}/merge"),
                    json={"sha": sha, "merge_method": method},
                    response_model=PullRequestMergeResult,
                )
            except RequestFailed as exc:
                if exc.response.status_code in (405, 409, 422):
                    body = exc.response.raw_response.json()
                    message = body.get("message", "") if isinstance(body, dict) else ""
                    return MergeOutcome(False, None, message, exc.response.status_code)
                raise
            result = response.parsed_data
            return MergeOutcome(bool(result.merged), result.sha, result.message, 200)

        return await self._call(go, MERGE)

    async def commit_tree(self, sha: str) -> str | None:
        """The tree SHA of commit ``sha`` (Git data API), or None when GitHub has no such
        commit. Two commits with one tree hold exactly the same files."""

        async def go(gh: GitHub[Any]) -> str | None:
            try:
                response = await gh.arequest(
                    "GET", self._path(f"/git/commits/{sha}"), response_model=GitCommit
                )
            except RequestFailed as exc:
                if exc.response.status_code in (404, 409, 422):
                    return None
                raise
            return response.parsed_data.tree.sha

        return await self._call(go)

    async def git_auth_header(self) -> str:
        """An ``Authorization`` header value for git over HTTPS with contents:write, for
        pushes made by Bosun itself (never handed to a sandbox)."""
        token = await self.app.token(self.installation_id, self.full_name, WRITE_CONTENTS)
        basic = base64.b64encode(f"x-access-token:{token.value}".encode()).decode()
        return f"Authorization: Basic {basic}"

    def clone_url(self) -> str:
        return f"{self.app.settings.web_url.rstrip('/')}/{self.full_name}.git"
