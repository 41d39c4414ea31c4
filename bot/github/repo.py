"""The forge port on GitHub: every GitHub call the pipeline makes about one repository.

``GitHubRepo`` implements ``bot.forge.port.Forge`` with githubkit against GitHub (or GitHub
Enterprise, or the test emulator) using installation tokens scoped to the one repository. A
token GitHub calls bad (401) is re-minted once. HTTP stays here: a failed call raises a
``ForgeError`` (``ForgeUnavailable`` for what may pass: no answer, 5xx, rate limits), a merge
answers with a ``MergeOutcome`` value, and check runs are ``CheckRunUpdate`` values.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from githubkit import GitHub, TokenAuthStrategy
from githubkit.exception import GitHubException, RequestFailed
from githubkit_schemas.latest.models import (
    CheckRun,
    CombinedCommitStatus,
    ContentFile,
    FullRepository,
    GitCommit,
    Issue,
    IssueComment,
    PullRequest,
    PullRequestMergeResult,
    PullRequestSimple,
    RepositoryCollaboratorPermission,
    ReviewComment,
)
from githubkit_schemas.latest.models import (
    ReposOwnerRepoCommitsRefCheckRunsGetResponse200 as CheckRunsForRef,
)

from bot.domain.limits import fit_comment
from bot.domain.payloads import RepositoryRef
from bot.domain.repoconfig import CONFIG_PATH, RepoConfig
from bot.domain.status import CheckRunUpdate
from bot.forge.port import (
    CheckResult,
    ChecksReport,
    CommentInfo,
    Conflict,
    ForgeError,
    ForgeRefused,
    ForgeUnavailable,
    HeadMoved,
    IssueInfo,
    Merged,
    MergeOutcome,
    NotMergeable,
    PullInfo,
    ReviewLineComment,
)
from bot.github.tokens import (
    COLLABORATE,
    MERGE,
    READ_CHECK_RUNS,
    READ_CHECKS,
    WRITE_CONTENTS,
    GitHubApp,
)
from bot.metrics.local import GITHUB_HOOKS
from sandboxes.git import run_git

T = TypeVar("T")

PERMISSION_ORDER = ("none", "read", "triage", "write", "maintain", "admin")


def permission_at_least(permission: str | None, minimum: str) -> bool:
    if permission not in PERMISSION_ORDER:
        return False
    return PERMISSION_ORDER.index(permission) >= PERMISSION_ORDER.index(minimum)


TRANSIENT = frozenset({429, 500, 502, 503, 504})


def forge_error(exc: GitHubException) -> ForgeError:
    """A githubkit failure in Bosun's terms: may trying again help, and GitHub's status."""
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        try:
            body = exc.response.raw_response.json()
        except ValueError:
            body = None
        message = body.get("message", "") if isinstance(body, dict) else ""
        text = f"GitHub answered {status}" + (f": {message}" if message else "")
        limited = status == 403 and "rate limit" in message.lower()
        kind = ForgeUnavailable if status in TRANSIENT or limited else ForgeRefused
        return kind(text, status=status)
    return ForgeUnavailable(f"GitHub did not answer ({type(exc).__name__}: {exc})")


PASSING = frozenset({"success", "neutral", "skipped"})
"""Check-run conclusions that let a change merge (as branch protection counts them)."""


def _check_result(run: CheckRun) -> CheckResult:
    if run.status != "completed":
        state: Literal["pending", "success", "failure"] = "pending"
        detail = str(run.status)
    else:
        detail = str(run.conclusion or "completed")
        state = "success" if detail in PASSING else "failure"
    app = run.app
    return CheckResult(
        name=run.name,
        state=state,
        detail=detail,
        url=run.details_url or run.html_url or None,
        app_id=app.id if app is not None else None,
    )


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
    """``Forge`` over githubkit with installation tokens."""

    forge_name = "GitHub"
    merge_setting = "merge.auto_merge"
    config_paths: tuple[str, ...] = (CONFIG_PATH,)

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
            try:
                return await action(await self._client(permissions))
            except RequestFailed as exc:
                if exc.response.status_code != 401:
                    raise
                self.app.forget(self.installation_id, self.full_name)  # expired or revoked
                return await action(await self._client(permissions))
        except GitHubException as exc:
            raise forge_error(exc) from exc

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
            path = self._path(f"/issues/{number}/comments")
            comments = await _every_page(gh, path, list[IssueComment], list, max_pages=100)
            return [
                CommentInfo(
                    id=c.id,
                    author=c.user.login if c.user else "ghost",
                    author_type=c.user.type if c.user else "User",
                    body=c.body or "",
                )
                for c in comments
            ]

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

    async def create_check_run(self, head_sha: str, update: CheckRunUpdate) -> int:
        async def go(gh: GitHub[Any]) -> int:
            response = await gh.arequest(
                "POST",
                self._path("/check-runs"),
                json={"head_sha": head_sha, **update.fields()},
                response_model=CheckRun,
            )
            return response.parsed_data.id

        return await self._call(go)

    async def update_check_run(self, check_run_id: int, update: CheckRunUpdate) -> None:
        async def go(gh: GitHub[Any]) -> None:
            await gh.arequest(
                "PATCH",
                self._path(f"/check-runs/{check_run_id}"),
                json=update.fields(),
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
                status = exc.response.status_code
                if status not in (405, 409, 422):
                    raise
                body = exc.response.raw_response.json()
                message = body.get("message", "") if isinstance(body, dict) else ""
                if status == 409:  # the head is no longer ``sha``
                    return HeadMoved(message, status=status)
                if status == 405:  # not mergeable: GitHub names no paths
                    return Conflict(message, status=status)
                return NotMergeable(message, status=status)
            result = response.parsed_data
            if not result.merged:
                return NotMergeable(result.message, status=200)
            return Merged(result.sha, result.message)

        return await self._call(go, MERGE)

    def merge_method(self, config: RepoConfig) -> str | None:
        return config.merge.method if config.merge.auto_merge else None

    async def close_pull(self, number: int, *, delete_branch: bool) -> None:
        """GitHub keeps a rejected pull request open for people to close (as before)."""

    async def branch_head(self, branch: str) -> str | None:
        """The branch's head as git sees it (``ls-remote`` with the installation's token)."""
        result = await run_git(
            ["ls-remote", self.clone_url(), f"refs/heads/{branch}"],
            auth_header=await self.git_auth_header(),
            timeout=30,
        )
        sha = result.stdout.decode().split("\t", 1)[0].strip()
        return sha if len(sha) >= 40 else None

    async def review_comments(self, number: int, review_id: int) -> list[ReviewLineComment]:
        async def go(gh: GitHub[Any]) -> list[ReviewLineComment]:
            path = self._path(f"/pulls/{number}/reviews/{review_id}/comments")
            comments = await _every_page(gh, path, list[ReviewComment], list, max_pages=10)
            return [
                ReviewLineComment(
                    path=c.path, line=c.line if isinstance(c.line, int) else None, body=c.body
                )
                for c in comments
            ]

        return await self._call(go)

    async def checks(self, sha: str, base_branch: str) -> ChecksReport:
        """The base branch's required contexts (from ``GET /branches/{branch}``, whose
        ``protection`` summary needs no administration permission, and from its rulesets:
        ``GET /rules/branches/{branch}``), the latest check run of each name on ``sha`` and
        its commit statuses.

        An installation that has not accepted the App's Commit statuses permission yet (it was
        added for this) gets a 422 for a token asking for it: then the check runs alone are
        read, and the report says the statuses could not be."""

        async def go(gh: GitHub[Any], statuses: bool = True) -> ChecksReport:
            branch = await gh.arequest(
                "GET", self._path(f"/branches/{quote(base_branch, safe='')}")
            )
            data = branch.json()
            required: list[str] = []
            apps: list[tuple[str, int]] = []
            policy = ((data.get("protection") or {}).get("required_status_checks")) or {}
            if data.get("protected") and policy.get("enforcement_level", "off") != "off":
                required += [str(c) for c in policy.get("contexts") or []]
                for check in policy.get("checks") or []:
                    required.append(str(check.get("context")))
                    if isinstance(check.get("app_id"), int):
                        apps.append((str(check["context"]), check["app_id"]))
            for context, app_id in await self._ruleset_checks(gh, base_branch):
                required.append(context)
                if app_id is not None:
                    apps.append((context, app_id))
            runs = await _every_page(
                gh,
                self._path(f"/commits/{sha}/check-runs"),
                CheckRunsForRef,
                lambda found: found.check_runs,
                params={"filter": "latest"},
                max_pages=10,
            )
            results = [_check_result(run) for run in runs]
            if not statuses:
                return ChecksReport(
                    required=tuple(dict.fromkeys(required)),
                    results=tuple(results),
                    required_apps=tuple(apps),
                    statuses_readable=False,
                )
            combined = await gh.arequest(
                "GET",
                self._path(f"/commits/{sha}/status"),
                params={"per_page": 100},
                response_model=CombinedCommitStatus,
            )
            for status in combined.parsed_data.statuses:
                state = {"success": "success", "pending": "pending"}.get(status.state, "failure")
                results.append(
                    CheckResult(
                        name=status.context,
                        state=state,  # type: ignore[arg-type]
                        detail=status.state,
                        url=status.target_url or None,
                    )
                )
            return ChecksReport(
                required=tuple(dict.fromkeys(required)),
                results=tuple(results),
                required_apps=tuple(apps),
            )

        try:
            return await self._call(go, READ_CHECKS)
        except ForgeRefused as exc:
            if exc.status != 422:
                raise
            return await self._call(partial(go, statuses=False), READ_CHECK_RUNS)

    async def _ruleset_checks(self, gh: GitHub[Any], branch: str) -> list[tuple[str, int | None]]:
        """The status checks the repository's (and its organisation's) rulesets require on
        ``branch``: (context, the App they must come from). A forge without rulesets (an
        older GitHub Enterprise Server) answers 404: none."""
        try:
            response = await gh.arequest(
                "GET", self._path(f"/rules/branches/{quote(branch, safe='')}")
            )
        except RequestFailed as exc:
            if exc.response.status_code == 404:
                return []
            raise
        found: list[tuple[str, int | None]] = []
        for rule in response.json() or []:
            if not isinstance(rule, dict) or rule.get("type") != "required_status_checks":
                continue
            for check in (rule.get("parameters") or {}).get("required_status_checks") or []:
                if isinstance(check, dict) and isinstance(check.get("context"), str):
                    app = check.get("integration_id")
                    found.append((check["context"], app if isinstance(app, int) else None))
        return found

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
        try:
            token = await self.app.token(self.installation_id, self.full_name, WRITE_CONTENTS)
        except GitHubException as exc:
            raise forge_error(exc) from exc
        basic = base64.b64encode(f"x-access-token:{token.value}".encode()).decode()
        return f"Authorization: Basic {basic}"

    def clone_url(self) -> str:
        return f"{self.app.settings.web_url.rstrip('/')}/{self.full_name}.git"


async def _every_page(
    gh: GitHub[Any],
    path: str,
    model: Any,
    items: Callable[[Any], Sequence[T]],
    *,
    params: dict[str, str] | None = None,
    max_pages: int,
) -> list[T]:
    """Every item of a list GitHub pages (100 a page), page after page until a short one, at
    most ``max_pages`` pages; ``items`` takes a page's items out of its parsed answer."""
    out: list[T] = []
    for page in range(1, max_pages + 1):
        response = await gh.arequest(
            "GET", path, params={**(params or {}), "per_page": 100, "page": page},
            response_model=model,
        )  # fmt: skip
        found = items(response.parsed_data)
        out.extend(found)
        if len(found) < 100:
            break
    return out
