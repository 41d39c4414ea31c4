"""The forge port on a git repository of the worker's host (a "local repository").

What lives on GitHub lives here in Bosun's own database and in the repository:

* an issue is a local task (``tasks`` with ``issue_number``, numbered per repository);
* a pull request is the run's branch in the repository; its number is the task's, so the
  review loop finds the run by either, as on GitHub;
* the status comment and the check run are the run itself (the API, the CLI and the
  dashboard read it from the database): creating them stores nothing; other replies of the
  review loop become ``log`` events of the task's newest run, so a refusal is never silent;
* a merge is computed in Bosun's scratch repository and moves the default branch's ref with a
  compare-and-swap (``sandboxes.localrepo.LocalRepository.merge_into``).

Nobody but an API caller reaches a local repository, so ``permission`` answers ``admin``: what
a caller may do was decided by the scope of its token before the command got here.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import Repository, Run, Task
from bot.db.runlog import append_event
from bot.domain.payloads import RepositoryRef
from bot.domain.repoconfig import CONFIG_PATH, LOCAL_CONFIG_PATH, RepoConfig
from bot.domain.status import STATUS_MARKER, CheckRunUpdate
from bot.forge.port import (
    ChecksReport,
    CommentInfo,
    Conflict,
    ForgeError,
    ForgeRefused,
    HeadMoved,
    IssueInfo,
    Merged,
    MergeOutcome,
    NotMergeable,
    PullInfo,
    ReviewLineComment,
)
from sandboxes.errors import WorkspaceError
from sandboxes.git import GitIdentity
from sandboxes.localrepo import LocalRepoError, LocalRepository, MergeRefused
from sandboxes.revert import scratch_clone
from sandboxes.workspace import WorkspaceManager

log = structlog.get_logger(__name__)

LOCAL_CHECK_RUN = 0
"""The check run id a local run records: there is none (GitHub's ids are never 0)."""


class LocalForge:
    """``Forge`` over a local git repository and Bosun's database."""

    forge_name = "The local repository"
    merge_setting = "merge.local"
    config_paths: tuple[str, ...] = (CONFIG_PATH, LOCAL_CONFIG_PATH)

    def __init__(
        self,
        repository: Repository,
        *,
        sessions: async_sessionmaker[AsyncSession],
        workspaces: WorkspaceManager,
        identity: GitIdentity,
        public_url: str,
    ) -> None:
        assert repository.local_path is not None
        self.repository_id = repository.id
        self.full_name = repository.full_name
        self.default_branch = repository.default_branch
        self.repo = LocalRepository(Path(repository.local_path))
        self.sessions = sessions
        self.workspaces = workspaces
        self.identity = identity
        self.public_url = public_url.rstrip("/")

    async def _open(self) -> LocalRepository:
        try:
            return await self.repo.open()
        except LocalRepoError as exc:
            raise ForgeRefused(f"the local repository {self.full_name}: {exc}") from exc

    # -- files, people, the repository ---------------------------------------------------

    async def file_text(self, path: str, ref: str) -> str | None:
        repo = await self._open()
        data = await repo.read_file(ref, path)
        return data.decode("utf-8", "replace") if data is not None else None

    async def permission(self, login: str) -> str:
        return "admin"

    async def describe(self) -> RepositoryRef:
        owner, name = self.full_name.split("/", 1)
        return RepositoryRef(
            id=0,
            full_name=self.full_name,
            owner=owner,
            name=name,
            default_branch=self.default_branch,
            private=True,
        )

    async def _task(self, session: AsyncSession, number: int) -> Task | None:
        return (
            await session.execute(
                select(Task).where(
                    Task.repository_id == self.repository_id, Task.issue_number == number
                )
            )
        ).scalar_one_or_none()

    async def get_issue(self, number: int) -> IssueInfo | None:
        async with self.sessions() as session:
            task = await self._task(session, number)
        if task is None:
            return None
        return IssueInfo(
            number=number,
            title=task.title,
            body=task.body,
            author=task.author,
            author_type="User",
            labels=tuple(str(label) for label in task.labels or ()),
            state=task.state,
            is_pull_request=False,
        )

    # -- comments: the run is the status; replies are its log --------------------------------

    async def create_comment(self, number: int, body: str) -> int:
        if STATUS_MARKER not in body:
            await self._log(number, body)
        return number

    async def update_comment(self, comment_id: int, body: str) -> None:
        return None

    async def list_comments(self, number: int) -> list[CommentInfo]:
        return []

    async def find_comment(self, number: int, marker: str) -> int | None:
        return number if marker == STATUS_MARKER else None

    async def comment_body(self, comment_id: int) -> str | None:
        return None

    async def react(self, content: str, *, comment_id: int | None, issue: int | None) -> None:
        return None

    async def _log(self, number: int, text: str) -> None:
        """A reply of the review loop: a ``log`` line of the task's newest run."""
        async with self.sessions.begin() as session:
            run_id = (
                await session.execute(
                    select(Run.id)
                    .join(Task, Task.id == Run.task_id)
                    .where(Task.repository_id == self.repository_id, Task.issue_number == number)
                    .order_by(Run.created_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if run_id is not None:
                await append_event(session, run_id, "log", {"stream": "bosun", "line": text[:4000]})

    async def create_check_run(self, head_sha: str, update: CheckRunUpdate) -> int:
        return LOCAL_CHECK_RUN

    async def update_check_run(self, check_run_id: int, update: CheckRunUpdate) -> None:
        return None

    # -- the run's branch as its pull request -----------------------------------------------

    async def _pull(self, task: Task, branch: str, merged: bool = False) -> PullInfo:
        repo = await self._open()
        head = await repo.branch_head(branch)
        number = task.issue_number or 0
        return PullInfo(
            number=number,
            head_ref=branch,
            head_sha=head or "",
            base_ref=self.default_branch,
            state="open" if head is not None and not merged else "closed",
            draft=False,
            merged=merged,
            html_url=f"{self.public_url}/tasks/{task.id}",
        )

    async def _task_of_branch(self, session: AsyncSession, branch: str) -> Task | None:
        row = (
            await session.execute(
                select(Task)
                .join(Run, Run.task_id == Task.id)
                .where(Run.repository_id == self.repository_id, Run.branch == branch)
                .order_by(Run.created_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        return row

    async def find_pull(self, head_branch: str) -> PullInfo | None:
        async with self.sessions() as session:
            task = await self._task_of_branch(session, head_branch)
        if task is None or task.pr_number is None:
            return None
        return await self._pull(task, head_branch)

    async def get_pull(self, number: int) -> PullInfo:
        async with self.sessions() as session:
            task = await self._task(session, number)
            merged = False
            if task is not None:
                merged = (
                    await session.execute(
                        select(Run.id)
                        .where(Run.task_id == task.id, Run.merged_sha.is_not(None))
                        .limit(1)
                    )
                ).first() is not None
        if task is None or not task.branch:
            raise ForgeRefused(f"{self.full_name} has no branch for task #{number}")
        return await self._pull(task, task.branch, merged)

    async def create_pull(
        self, *, title: str, body: str, head: str, base: str, draft: bool
    ) -> PullInfo:
        async with self.sessions() as session:
            task = await self._task_of_branch(session, head)
        if task is None:
            raise ForgeRefused(f"no task of {self.full_name} has a run on `{head}`")
        return await self._pull(task, head)

    async def update_pull(self, number: int, *, title: str, body: str) -> PullInfo:
        return await self.get_pull(number)

    async def close_pull(self, number: int, *, delete_branch: bool) -> None:
        """A rejected or cancelled run: its branch is deleted when asked (only if no work
        tree has it checked out); the default branch is never touched."""
        if not delete_branch:
            return
        async with self.sessions() as session:
            task = await self._task(session, number)
        if task is None or not task.branch:
            return
        repo = await self._open()
        if await repo.delete_branch(task.branch):
            log.info("local_branch_deleted", branch=task.branch)

    def merge_method(self, config: RepoConfig) -> str | None:
        return None if config.merge.local == "off" else config.merge.local

    async def merge_pull(self, number: int, *, sha: str, method: str) -> MergeOutcome:
        """Merge the task's branch at ``sha`` into the default branch (a merge commit, or a
        fast-forward when ``method`` is ``fast_forward`` and the default branch has not
        moved)."""
        async with self.sessions() as session:
            task = await self._task(session, number)
        if task is None or not task.branch:
            return NotMergeable(f"task #{number} has no branch to merge")
        repo = await self._open()
        message = "\n".join(
            [
                f"Merge {task.branch}: {task.title}".strip(),
                "",
                f"Bosun-Task: {self.full_name}#{number}",
            ]
        )
        try:
            async with scratch_clone(self.workspaces, self.full_name, repo, None) as scratch:
                done = await repo.merge_into(
                    scratch.path,
                    branch=task.branch,
                    head_sha=sha,
                    into=self.default_branch,
                    fast_forward=method == "fast_forward",
                    message=message,
                    identity=self.identity,
                )
        except MergeRefused as exc:
            if exc.kind == "head_moved":
                return HeadMoved(str(exc), head=exc.head)
            if exc.kind == "conflict":
                return Conflict(str(exc), paths=exc.paths)
            return NotMergeable(str(exc))
        except WorkspaceError as exc:
            raise ForgeError(f"merging in {self.full_name} failed: {exc}") from exc
        how = "fast-forwarded" if done.fast_forward else "merged"
        return Merged(done.sha, f"{how} `{task.branch}` into `{self.default_branch}`")

    async def review_comments(self, number: int, review_id: int) -> list[ReviewLineComment]:
        return []  # reviews happen in the dashboard and the CLI: no line comments

    async def checks(self, sha: str, base_branch: str) -> ChecksReport:
        return ChecksReport()  # no CI reports here: an approval merges at once

    # -- git ------------------------------------------------------------------------------

    async def commit_tree(self, sha: str) -> str | None:
        repo = await self._open()
        return await repo.tree_of(sha)

    async def branch_head(self, branch: str) -> str | None:
        repo = await self._open()
        return await repo.branch_head(branch)

    async def git_auth_header(self) -> str | None:
        return None

    def clone_url(self) -> LocalRepository:
        return self.repo
