"""Host-side git for the review loop: the revert commit of a partial approval and the paths a
merge conflicts on. Never inside a sandbox, never with a shell: git with argv lists in a
scratch bare clone of the repository's mirror, authenticated per command with the
installation token's header (as the pipeline's push is).

A partial approval (``/approve <path>…``) keeps the approved files and restores every other
changed file to its content at the PR base (the merge base of the base branch and the head),
deleting files the change added, in one new commit on top of the approved head. That commit is
pushed to the PR branch before the merge, so the merged PR holds exactly the approved changes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sandboxes.errors import GitError, PushRejected, WorkspaceError
from sandboxes.git import GitIdentity, run_git
from sandboxes.localrepo import GitRemote, LocalRepository
from sandboxes.workspace import WorkspaceManager

NULL_SHA = "0" * 40


class BranchMoved(WorkspaceError):
    """The PR branch is no longer at the approved commit; nothing was pushed."""


class NothingApproved(WorkspaceError):
    """The approved globs match none of the files the PR changes; nothing was pushed."""


@dataclass(frozen=True)
class Revert:
    """What a partial approval did to the PR branch."""

    approved_sha: str
    commit: str | None
    """The revert commit pushed on top of ``approved_sha``; None when nothing was reverted."""
    base_sha: str
    kept: tuple[str, ...]
    reverted: tuple[str, ...]


@dataclass(frozen=True)
class Scratch:
    """A bare clone of one repository's mirror, for one operation."""

    path: Path
    remote_url: GitRemote
    auth_header: str | None

    async def git(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        remote: bool = False,
    ) -> str:
        # Paths are never globs here; a push keeps ``push`` first (its refusals are parsed).
        argv = list(args) if remote else ["--literal-pathspecs", *args]
        result = await run_git(
            argv,
            cwd=self.path,
            stdin=stdin,
            env=env,
            check=check,
            auth_header=self.auth_header if remote else None,
        )
        return result.text

    async def resolve(self, ref: str) -> str | None:
        result = await run_git(
            ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=self.path, check=False
        )
        return result.text.strip() if result.returncode == 0 else None


@asynccontextmanager
async def scratch_clone(
    workspaces: WorkspaceManager, repo: str, remote_url: GitRemote, auth_header: str | None
) -> AsyncIterator[Scratch]:
    """Fetch the mirror of ``repo`` and yield a bare local clone of it (hardlinked objects),
    deleted afterwards."""
    parent = workspaces.root / "review"
    await asyncio.to_thread(parent.mkdir, parents=True, exist_ok=True)
    path = Path(
        await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{uuid.uuid4().hex[:8]}-", dir=parent)
    )
    try:
        async with workspaces.mirrors.locked(repo) as mirror:
            await workspaces.mirrors.update_locked(mirror, remote_url, auth_header=auth_header)
            await run_git(["clone", "--quiet", "--local", "--bare", str(mirror), str(path)])
        yield Scratch(path, remote_url, auth_header)
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def changed_paths(scratch: Scratch, base: str, head: str) -> list[str]:
    """Every path that differs between ``base`` and ``head`` (renames as delete + add)."""
    text = await scratch.git("diff", "--name-only", "-z", "--no-renames", base, head)
    return [p for p in text.split("\0") if p]


async def _index_entries(scratch: Scratch, commit: str, paths: Sequence[str]) -> bytes:
    """``update-index -z --index-info`` lines that set each path as it is in ``commit``
    (mode 0 removes a path that ``commit`` does not have)."""
    lines: list[bytes] = []
    for path in paths:
        listing = await scratch.git("ls-tree", "-z", commit, "--", path)
        entry = next((e for e in listing.split("\0") if e and e.split("\t", 1)[1] == path), None)
        if entry is None or entry.split()[1] not in ("blob", "commit"):
            lines.append(f"0 {NULL_SHA}\t{path}".encode() + b"\0")
        else:
            mode, _kind, sha = entry.split("\t", 1)[0].split()
            lines.append(f"{mode} {sha}\t{path}".encode() + b"\0")
    return b"".join(lines)


async def revert_unapproved(
    scratch: Scratch,
    *,
    branch: str,
    base_branch: str,
    approved_sha: str,
    split: Callable[[list[str]], tuple[tuple[str, ...], tuple[str, ...]]],
    message: Callable[[tuple[str, ...], tuple[str, ...]], str],
    identity: GitIdentity,
    before_push: Callable[[str], Awaitable[None]],
) -> Revert:
    """Commit the revert of the files ``split`` leaves out on top of ``approved_sha`` and push
    it to ``branch``.

    ``split(changed_paths) -> (keep, revert)`` decides (``bot.domain.review.approval_status``);
    ``before_push(new_sha)`` runs between the commit and the push, so the caller can record
    the new head before GitHub announces it. Raises ``BranchMoved`` when the branch is not at
    ``approved_sha`` or moves before the push lands.
    """
    head = await scratch.resolve(f"refs/heads/{branch}")
    if head != approved_sha:
        raise BranchMoved(
            f"`{branch}` is at `{(head or 'nothing')[:12]}`, not the approved `{approved_sha[:12]}`"
        )
    base_head = await scratch.resolve(f"refs/heads/{base_branch}")
    if base_head is None:
        raise GitError(
            f"the base branch {base_branch!r} does not exist",
            argv=["git", "rev-parse", base_branch],
            returncode=1,
            stderr="",
        )
    base = (await scratch.git("merge-base", base_head, head)).strip()
    keep, revert = split(await changed_paths(scratch, base, head))
    if not keep:
        raise NothingApproved("the approved paths match none of the files the PR changes")
    if not revert:
        return Revert(approved_sha, None, base, keep, ())
    index = scratch.path / f"bosun-{uuid.uuid4().hex[:8]}.index"
    env = {
        "GIT_INDEX_FILE": str(index),
        "GIT_AUTHOR_NAME": identity.name,
        "GIT_AUTHOR_EMAIL": identity.email,
        "GIT_COMMITTER_NAME": identity.name,
        "GIT_COMMITTER_EMAIL": identity.email,
    }
    await scratch.git("read-tree", head, env=env)
    entries = await _index_entries(scratch, base, revert)
    await scratch.git("update-index", "-z", "--index-info", stdin=entries, env=env)
    tree = (await scratch.git("write-tree", env=env)).strip()
    text = message(keep, revert).encode()
    commit = await scratch.git("commit-tree", tree, "-p", head, "-F", "-", stdin=text, env=env)
    commit = commit.strip()
    left = await changed_paths(scratch, base, commit)
    if sorted(left) != sorted(keep):  # the commit must hold exactly the approved files
        raise GitError(
            f"the revert commit changes {sorted(left)}, expected {sorted(keep)}",
            argv=["git", "diff", base, commit],
            returncode=1,
            stderr="",
        )
    await before_push(commit)
    try:
        if isinstance(scratch.remote_url, LocalRepository):
            await scratch.remote_url.push_from(scratch.path, commit, branch, force=False)
        else:
            await scratch.git(
                "push",
                "--porcelain",
                "--no-verify",
                scratch.remote_url,
                f"{commit}:refs/heads/{branch}",
                remote=True,
            )
    except PushRejected as exc:
        raise BranchMoved(f"the push of the revert commit was refused: {exc}") from exc
    return Revert(approved_sha, commit, base, keep, revert)


async def conflicting_paths(scratch: Scratch, base_branch: str, head: str) -> list[str]:
    """The paths a merge of ``head`` into ``base_branch`` conflicts on (``git merge-tree``),
    empty when it merges cleanly or a side is missing."""
    base = await scratch.resolve(f"refs/heads/{base_branch}")
    if base is None or await scratch.resolve(head) is None:
        return []
    text = await scratch.git(
        "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", base, head, check=False
    )
    fields = [f for f in text.split("\0") if f]
    return list(dict.fromkeys(fields[1:]))  # the first field is the (partial) tree
