"""A git repository on the host that Bosun works on instead of a GitHub repository.

The user's repository is data, as the agent's workspace is (docs/security.md): its hooks, its
filters and what its ``.git/config`` would make git run must never run on the host, and the
user's checked-out work trees, index and ``HEAD`` are never touched by a run. So:

* No git transport ever starts a process *inside* it: a ``git push`` into it would run its
  ``pre-receive``/``post-receive`` hooks in a ``receive-pack`` that does not see Bosun's
  config. Objects move the other way round: git processes that Bosun starts *in* the user's
  repository, with Bosun's config on top of the repository's (``sandboxes.git.git_env``: hooks
  off, fsmonitor off, ``ext::`` refused), push its branches into Bosun's own mirror
  (``export_to``) and fetch Bosun's commits out of Bosun's own repositories (``import_commit``),
  whose ``receive-pack``/``upload-pack`` run in repositories Bosun owns.
* Refs are moved with ``update-ref`` naming the old value (compare-and-swap): a branch the user
  moved meanwhile is never overwritten, and a branch checked out in a work tree is never moved
  by a run (``CheckedOut``), as ``git push`` refuses to by default.
* Merging into the default branch is computed in Bosun's scratch repository
  (``merge-tree --write-tree``, ``commit-tree``); only the resulting ref moves. When that
  branch is checked out in a clean work tree, the work tree follows (``read-tree -u -m``, what
  git's own ``receive.denyCurrentBranch=updateInstead`` does), with every filter driver the
  repository configures switched off; with uncommitted changes there, nothing moves.
* Git discovery stops at the path given (``GIT_CEILING_DIRECTORIES``), so a folder inside some
  other repository is not mistaken for one.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandboxes.errors import GitError, PushRejected, WorkspaceError
from sandboxes.git import GitIdentity, GitResult, run_git

NULL_SHA = "0" * 40


_NO_COMMANDS: tuple[tuple[str, str], ...] = (
    # A fetch or push that reads objects of the repository's alternates would run this
    # command from its config; ``true`` advertises nothing, which only costs negotiation.
    ("core.alternateRefsCommand", "true"),
    ("push.gpgSign", "false"),
)
"""Config on top of ``sandboxes.git.git_env``'s for every git run in a user's repository: the
keys that name a program git would run for the commands Bosun uses there."""


class LocalRepoError(WorkspaceError):
    """The local repository cannot be used as asked; the message says how to fix it.
    ``code`` names the problem for API answers (``not_found``, ``unreadable``,
    ``not_a_repository``, ``git_dir``, ``branch_missing``, ``dirty``, ``config``, ``owner``)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class CheckedOut(PushRejected):
    """The branch is checked out in one of the repository's work trees: a run never moves it."""


@dataclass(frozen=True)
class Checkout:
    """A work tree of the repository and what it has checked out."""

    path: Path
    branch: str | None
    """``refs/heads/…``, or None when ``HEAD`` is detached."""
    head: str | None


@dataclass(frozen=True)
class Merge:
    """What ``merge_into`` did."""

    sha: str
    """The new tip of the base branch."""
    fast_forward: bool
    base_sha: str
    """The base branch's tip before the merge."""
    work_tree: Path | None = None
    """The work tree that followed the merge (the base branch was checked out there)."""


class MergeRefused(WorkspaceError):
    """A merge that did not happen; ``kind`` is ``head_moved``, ``conflict`` or ``dirty``."""

    def __init__(
        self, message: str, *, kind: str, paths: Sequence[str] = (), head: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.paths = tuple(paths)
        self.head = head


@dataclass
class LocalRepository:
    """A git repository at ``path``: a work tree's top folder, or a bare repository."""

    path: Path
    _git_dir: Path | None = field(default=None, repr=False)
    _bare: bool = field(default=False, repr=False)

    def __str__(self) -> str:
        return str(self.path)

    # -- opening -------------------------------------------------------------------------

    async def open(self) -> LocalRepository:
        """Check that ``path`` is a repository Bosun can use; raises ``LocalRepoError``."""
        if self._git_dir is not None:
            return self
        path = self.path
        if not path.is_absolute():
            raise LocalRepoError(f"{path} is not an absolute path", code="not_found")
        await asyncio.to_thread(_check_folder, path)
        ceiling = {"GIT_CEILING_DIRECTORIES": str(path.parent)}
        found = await run_git(
            [
                "rev-parse",
                "--path-format=absolute",
                "--git-common-dir",
                "--is-bare-repository",
                "--is-inside-git-dir",
            ],
            cwd=path,
            env=ceiling,
            check=False,
        )
        lines = found.text.splitlines()
        if found.returncode != 0 or len(lines) < 3:
            if "dubious ownership" in found.stderr or "Permission denied" in found.stderr:
                raise LocalRepoError(
                    f"{path} cannot be read by the user Bosun runs as: {found.stderr.strip()}",
                    code="unreadable",
                )
            enclosing = await run_git(["rev-parse", "--show-toplevel"], cwd=path, check=False)
            if enclosing.returncode == 0 and enclosing.text.strip():
                raise LocalRepoError(
                    f"{path} is inside the working copy {enclosing.text.strip()}; give its top "
                    "folder instead",
                    code="not_a_repository",
                )
            raise LocalRepoError(
                f"{path} is not a git repository (run `git init` there first, or give the "
                "folder that holds `.git`)",
                code="not_a_repository",
            )
        common, bare, inside = Path(lines[0]), lines[1] == "true", lines[2] == "true"
        if not bare and inside:
            raise LocalRepoError(
                f"{path} is the `.git` folder of a working copy; give the working copy's "
                f"folder ({common.parent}) instead",
                code="git_dir",
            )
        if bare:
            if not await asyncio.to_thread(_same, common, path):
                raise LocalRepoError(
                    f"{path} is inside the bare repository {common}; give that folder instead",
                    code="not_a_repository",
                )
        else:
            top = await run_git(
                ["rev-parse", "--show-toplevel"], cwd=path, env=ceiling, check=False
            )
            if top.returncode != 0 or not await asyncio.to_thread(
                _same, Path(top.text.strip()), path
            ):
                raise LocalRepoError(
                    f"{path} is inside the working copy {top.text.strip()}; give its top "
                    "folder instead",
                    code="not_a_repository",
                )
        for folder in {common, path}:
            owner = (await asyncio.to_thread(os.stat, folder)).st_uid
            if owner != os.geteuid():
                # git's own rule (safe.directory): a repository's config, hooks and linked work
                # trees are its owner's to write, so working in it would hand that owner
                # whatever Bosun's user may do.
                raise LocalRepoError(
                    f"{folder} belongs to uid {owner}, and Bosun runs as uid {os.geteuid()}: "
                    "Bosun works only in repositories owned by the user it runs as (a "
                    "repository's config and linked work trees are its owner's to write). Run "
                    "Bosun as that user, or give Bosun a clone it owns",
                    code="owner",
                )
        if not await asyncio.to_thread(os.access, common, os.R_OK | os.W_OK | os.X_OK):
            raise LocalRepoError(
                f"{common} is not writable by the user Bosun runs as (uid {os.geteuid()}): "
                "Bosun writes its branches there",
                code="unreadable",
            )
        self._git_dir, self._bare = common, bare
        return self

    @property
    def git_dir(self) -> Path:
        if self._git_dir is None:
            raise WorkspaceError("LocalRepository.open() was not awaited")
        return self._git_dir

    @property
    def bare(self) -> bool:
        return self._bare

    async def git(
        self,
        *args: str,
        work_tree: Path | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        extra: Sequence[tuple[str, str]] = (),
        check: bool = True,
    ) -> GitResult:
        """``git`` in the repository with Bosun's config on top of the repository's."""
        await self.open()
        argv = [f"--git-dir={self.git_dir}"]
        if work_tree is not None:
            argv.append(f"--work-tree={work_tree}")
        for key, value in (*_NO_COMMANDS, *extra):
            argv += ["-c", f"{key}={value}"]
        return await run_git(
            [*argv, *args],
            cwd=work_tree or self.git_dir,
            stdin=stdin,
            env={
                "GIT_CEILING_DIRECTORIES": str(self.git_dir.parent),
                # Only local paths, whatever the repository's config says (it overrides every
                # protocol.*.allow): no ssh (core.sshCommand), no remote helper, no http.
                "GIT_ALLOW_PROTOCOL": "file",
                **(env or {}),
            },
            check=check,
        )

    async def _refuse_rewrites(self, target: Path) -> None:
        """Raise ``LocalRepoError`` when the repository's config would make git use another
        repository than ``target`` (``url.<base>.insteadOf``/``pushInsteadOf`` matching its
        path): the receiving side of a local transport runs that repository's hooks without
        Bosun's config, so a rewrite could run anyone's hooks as Bosun's user."""
        found = await self.git(
            "config", "-z", "--get-regexp", r"^url\..*\.(insteadof|pushinsteadof)$", check=False
        )
        for entry in found.text.split("\0"):
            key, _, value = entry.partition("\n")
            if key and str(target).startswith(value):
                raise LocalRepoError(
                    f"{self.path}'s git config rewrites the path Bosun moves commits through "
                    f"({key} = {value or '(empty)'}); Bosun never lets a repository's config "
                    f"redirect it. Remove the setting: git config --unset-all {key}",
                    code="config",
                )

    # -- reading --------------------------------------------------------------------------

    async def branch_head(self, branch: str) -> str | None:
        result = await self.git(
            "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", check=False
        )
        return result.text.strip() if result.returncode == 0 else None

    async def read_file(self, ref: str, path: str, limit: int = 1_000_000) -> bytes | None:
        """``path`` at ``ref`` (a blob read as bytes: no filter, no textconv), or None."""
        kind = await self.git("cat-file", "-t", f"{ref}:{path}", check=False)
        if kind.returncode != 0 or kind.text.strip() != "blob":
            return None
        size = await self.git("cat-file", "-s", f"{ref}:{path}")
        if int(size.text.strip() or 0) > limit:
            return None
        return (await self.git("cat-file", "blob", f"{ref}:{path}")).stdout

    async def tree_of(self, sha: str) -> str | None:
        result = await self.git("rev-parse", "--verify", "--quiet", f"{sha}^{{tree}}", check=False)
        return result.text.strip() if result.returncode == 0 else None

    async def is_ancestor(self, older: str, newer: str) -> bool:
        result = await self.git("merge-base", "--is-ancestor", older, newer, check=False)
        return result.returncode == 0

    async def checkouts(self) -> list[Checkout]:
        """The repository's work trees (none for a bare repository without linked ones)."""
        listing = await self.git("worktree", "list", "--porcelain")
        out: list[Checkout] = []
        path: Path | None = None
        branch: str | None = None
        head: str | None = None
        bare = False
        for line in [*listing.text.splitlines(), ""]:
            if line.startswith("worktree "):
                path = Path(line[len("worktree ") :])
            elif line.startswith("HEAD "):
                head = line[len("HEAD ") :]
            elif line.startswith("branch "):
                branch = line[len("branch ") :]
            elif line == "bare":
                bare = True
            elif not line:
                if path is not None and not bare:
                    out.append(Checkout(path, branch, head))
                path, branch, head, bare = None, None, None, False
        return out

    async def checked_out(self, branch: str) -> Checkout | None:
        for checkout in await self.checkouts():
            if checkout.branch == f"refs/heads/{branch}":
                return checkout
        return None

    async def _no_filters(self) -> list[tuple[str, str]]:
        """Config that switches off every filter driver the repository's config defines."""
        found = await self.git("config", "--name-only", "--get-regexp", r"^filter\.", check=False)
        names = {
            line.split(".", 1)[1].rsplit(".", 1)[0]
            for line in found.text.splitlines()
            if line.count(".") >= 2
        }
        out: list[tuple[str, str]] = []
        for name in sorted(names):
            out += [(f"filter.{name}.{key}", "") for key in ("clean", "smudge", "process")]
            out.append((f"filter.{name}.required", "false"))
        return out

    async def dirty(self, checkout: Checkout) -> list[str]:
        """Tracked paths with uncommitted changes (staged or not) in ``checkout``; read with
        the repository's filters off and nothing written (not even the index's stat cache),
        so a file only touched may count as changed."""
        if checkout.head is None:
            return []
        extra = await self._no_filters()
        staged = await self.git(
            "diff-index", "--cached", "--name-only", "-z", checkout.head,
            work_tree=checkout.path, env=self._index_env(checkout), extra=extra,
        )  # fmt: skip
        unstaged = await self.git(
            "diff-files", "--name-only", "-z",
            work_tree=checkout.path, env=self._index_env(checkout), extra=extra,
        )  # fmt: skip
        paths = [p for p in (staged.text + unstaged.text).split("\0") if p]
        return list(dict.fromkeys(paths))

    def _index_env(self, checkout: Checkout) -> dict[str, str]:
        """The index of ``checkout`` (a linked work tree has its own)."""
        dot_git = checkout.path / ".git"
        if dot_git.is_dir():
            return {"GIT_INDEX_FILE": str(dot_git / "index")}
        text = dot_git.read_text() if dot_git.is_file() else ""
        if text.startswith("gitdir: "):
            return {"GIT_INDEX_FILE": str(Path(text[8:].strip()) / "index")}
        return {}

    # -- moving objects and refs ------------------------------------------------------------

    async def export_to(self, mirror: Path) -> None:
        """Make Bosun's bare ``mirror`` hold this repository's branches and tags (creating it
        when missing): pushed from here into the mirror, whose ``receive-pack`` is Bosun's."""
        if not await asyncio.to_thread((mirror / "HEAD").exists):
            await run_git(["init", "--bare", "--quiet", str(mirror)])
        await self._refuse_rewrites(mirror)
        await self.git(
            "push", "--porcelain", "--no-verify", "--force", "--prune", "--quiet",
            str(mirror), "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*",
        )  # fmt: skip
        head = await self.git("symbolic-ref", "--quiet", "HEAD", check=False)
        if head.returncode == 0 and head.text.strip().startswith("refs/heads/"):
            await run_git(["symbolic-ref", "HEAD", head.text.strip()], cwd=mirror)

    async def import_commit(
        self,
        source: Path,
        sha: str,
        branch: str,
        *,
        expected: str | None,
        message: str,
    ) -> None:
        """Point ``refs/heads/<branch>`` at ``sha`` (a commit of Bosun's repository
        ``source``) if it still points at ``expected`` (None: if it does not exist). Raises
        ``CheckedOut`` when a work tree has the branch checked out and ``PushRejected`` when
        the branch moved."""
        if (checkout := await self.checked_out(branch)) is not None:
            raise CheckedOut(
                f"`{branch}` is checked out in {checkout.path}; Bosun never moves a checked-out "
                "branch. Check out another branch there and try again.",
                argv=["git", "update-ref", f"refs/heads/{branch}"],
                returncode=1,
                stderr="",
            )
        await self.fetch_objects(source, sha)
        await self._move(branch, sha, expected, message)

    async def fetch_objects(self, source: Path, sha: str) -> None:
        """Copy commit ``sha`` and what it needs from ``source`` (Bosun's) into this
        repository, creating no ref and no ``FETCH_HEAD``."""
        if await self.tree_of(sha) is not None:
            return
        await self._refuse_rewrites(source)
        ref = f"refs/bosun-export/{uuid.uuid4().hex}"
        await run_git(["update-ref", ref, sha], cwd=source)
        try:
            await self.git(
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc",
                "--no-recurse-submodules", str(source), ref,
            )  # fmt: skip
        finally:
            await run_git(["update-ref", "-d", ref], cwd=source, check=False)

    async def _move(self, branch: str, sha: str, expected: str | None, message: str) -> None:
        result = await self.git(
            "update-ref", "-m", message, f"refs/heads/{branch}", sha, expected or NULL_SHA,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            now = await self.branch_head(branch)
            raise PushRejected(
                f"[rejected] `{branch}` moved (now at {(now or 'nothing')[:12]}, expected "
                f"{(expected or 'nothing')[:12]}): {result.stderr.strip()[-300:]}",
                argv=["git", "update-ref", f"refs/heads/{branch}"],
                returncode=result.returncode,
                stderr=result.stderr,
            )

    async def push_from(self, source: Path, sha: str, branch: str, *, force: bool) -> str:
        """``git push`` semantics, done from this side: ``branch`` becomes ``sha`` if it is
        new or (unless ``force``) ``sha`` descends from it."""
        current = await self.branch_head(branch)
        if current == sha:
            return sha
        await self.fetch_objects(source, sha)
        if current is not None and not force and not await self.is_ancestor(current, sha):
            raise PushRejected(
                f"[rejected] `{branch}` (non-fast-forward: it is at {current[:12]}, which "
                f"{sha[:12]} does not contain)",
                argv=["git", "update-ref", f"refs/heads/{branch}"],
                returncode=1,
                stderr="",
            )
        await self.import_commit(source, sha, branch, expected=current, message="bosun: push")
        return sha

    async def delete_branch(self, branch: str, *, expected: str | None = None) -> bool:
        """Delete ``branch`` (only if it is still at ``expected`` when given, and is not
        checked out); returns whether it was deleted."""
        current = await self.branch_head(branch)
        if current is None or (expected is not None and current != expected):
            return False
        if await self.checked_out(branch) is not None:
            return False
        result = await self.git(
            "update-ref", "-m", "bosun: delete", "-d", f"refs/heads/{branch}", current, check=False
        )
        return result.returncode == 0

    # -- merging --------------------------------------------------------------------------

    async def merge_into(
        self,
        scratch: Path,
        *,
        branch: str,
        head_sha: str,
        into: str,
        fast_forward: bool,
        message: str,
        identity: GitIdentity,
    ) -> Merge:
        """Merge ``branch`` (which must still be at ``head_sha``) into ``into``.

        ``scratch`` is a bare repository of Bosun's holding this repository's commits (a
        clone of the mirror ``export_to`` just updated). The merge is refused (``MergeRefused``)
        when the branch moved, when ``into`` changed any path the branch changes since they
        parted (the reviewed diff would no longer be what lands; those paths are named), or
        when ``into`` is checked out with uncommitted changes. ``fast_forward``: move ``into``
        to the head when it has not moved, instead of a merge commit."""
        now = await self.branch_head(branch)
        if now != head_sha:
            raise MergeRefused(
                f"`{branch}` moved from the reviewed {head_sha[:12]} to {(now or 'nothing')[:12]}",
                kind="head_moved",
                head=now,
            )
        base = await self.branch_head(into)
        if base is None:
            raise MergeRefused(f"the branch `{into}` does not exist any more", kind="missing")

        async def scratch_git(
            *args: str, stdin: bytes | None = None, check: bool = True
        ) -> GitResult:
            env = {
                "GIT_AUTHOR_NAME": identity.name,
                "GIT_AUTHOR_EMAIL": identity.email,
                "GIT_COMMITTER_NAME": identity.name,
                "GIT_COMMITTER_EMAIL": identity.email,
            }
            return await run_git(
                ["--literal-pathspecs", *args], cwd=scratch, stdin=stdin, env=env, check=check
            )

        async def changed(old: str, new: str) -> set[str]:
            text = (await scratch_git("diff", "--name-only", "-z", "--no-renames", old, new)).text
            return {p for p in text.split("\0") if p}

        parted = (await scratch_git("merge-base", base, head_sha)).text.strip()
        overlap = sorted(await changed(parted, base) & await changed(parted, head_sha))
        if overlap:
            raise MergeRefused(
                f"`{into}` changed {len(overlap)} of the reviewed file(s) since the run "
                "branched off",
                kind="conflict",
                paths=overlap,
            )
        checkout = await self.checked_out(into)
        if checkout is not None and (uncommitted := await self.dirty(checkout)):
            more = " …" if len(uncommitted) > 5 else ""
            raise MergeRefused(
                f"`{into}` is checked out in {checkout.path} with uncommitted changes "
                f"({', '.join(uncommitted[:5])}{more}); commit or stash them (or check out "
                "another branch there), then approve again",
                kind="dirty",
                paths=uncommitted,
            )
        if fast_forward and parted == base:
            new, ff = head_sha, True
        else:
            merged = await scratch_git(
                "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z",
                base, head_sha, check=False,
            )  # fmt: skip
            fields = [f for f in merged.text.split("\0") if f]
            if merged.returncode != 0 or not fields:
                raise MergeRefused(
                    f"merging into `{into}` conflicts", kind="conflict", paths=fields[1:]
                )
            made = await scratch_git(
                "commit-tree", fields[0], "-p", base, "-p", head_sha, "-F", "-",
                stdin=message.encode(),
            )  # fmt: skip
            new = made.text.strip()
            ff = False
        await self.fetch_objects(scratch, new)
        await self._move(into, new, base, f"bosun: merge {branch}")
        if checkout is not None:
            await self._follow(checkout, base, new)
        return Merge(new, ff, base, checkout.path if checkout else None)

    async def _follow(self, checkout: Checkout, old: str, new: str) -> None:
        """The checked-out (clean) work tree follows its branch from ``old`` to ``new``:
        git's two-tree ``read-tree -u -m``, no filter, no hook."""
        extra = await self._no_filters()
        await self.git(
            "read-tree", "-u", "-m", old, new,
            work_tree=checkout.path, env=self._index_env(checkout), extra=extra,
        )  # fmt: skip


def _check_folder(path: Path) -> None:
    if not path.is_absolute():
        raise LocalRepoError(f"{path} is not an absolute path", code="not_found")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise LocalRepoError(f"{path} does not exist", code="not_found") from None
    except PermissionError:
        raise LocalRepoError(
            f"{path} cannot be read by the user Bosun runs as (uid {os.geteuid()}); give that "
            "user read access to it",
            code="unreadable",
        ) from None
    if not os.path.isdir(path):
        raise LocalRepoError(f"{path} is not a folder", code="not_a_repository")
    if not os.access(path, os.R_OK | os.X_OK):
        raise LocalRepoError(
            f"{path} cannot be read by the user Bosun runs as (uid {os.geteuid()}; the folder "
            f"belongs to uid {info.st_uid}); give that user read access to it",
            code="unreadable",
        )


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


GitRemote = str | LocalRepository
"""Where host-side git fetches and pushes: a URL (GitHub), or a local repository."""


async def inspect_default_branch(repo: LocalRepository, branch: str) -> None:
    """What ``bosun repos add`` checks beyond ``open``: the default branch exists, and when
    a work tree has it checked out, that work tree has no uncommitted changes (an approval
    merges there)."""
    await repo.open()
    if await repo.branch_head(branch) is None:
        found = await repo.git("for-each-ref", "--format=%(refname:short)", "refs/heads/")
        names = found.text.split()
        hint = f"; its branches: {', '.join(names[:10])}" if names else " (it has no commit yet)"
        raise LocalRepoError(
            f"{repo.path} has no branch `{branch}`{hint}. Pass --default-branch, or commit "
            "something first",
            code="branch_missing",
        )
    checkout = await repo.checked_out(branch)
    if checkout is not None and (changed := await repo.dirty(checkout)):
        raise LocalRepoError(
            f"`{branch}` is checked out in {checkout.path} with uncommitted changes "
            f"({', '.join(changed[:5])}); approvals merge into `{branch}`, so commit or stash "
            "them (or check out another branch there) first",
            code="dirty",
        )


__all__ = [
    "CheckedOut",
    "Checkout",
    "GitError",
    "GitRemote",
    "LocalRepoError",
    "LocalRepository",
    "Merge",
    "MergeRefused",
    "inspect_default_branch",
]
