"""The partial approval's revert commit and the merge-conflict paths, on real git repositories
(a bare "remote" on disk, the mirror cache and a scratch clone as the worker uses them)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bot.domain.policy import matches
from sandboxes.git import GitIdentity
from sandboxes.revert import (
    BranchMoved,
    NothingApproved,
    conflicting_paths,
    revert_unapproved,
    scratch_clone,
)
from sandboxes.workspace import WorkspaceManager

BOSUN = GitIdentity("bosun[bot]", "1+bosun[bot]@users.noreply.github.com")
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Alice",
    "GIT_AUTHOR_EMAIL": "alice@example.com",
    "GIT_COMMITTER_NAME": "Alice",
    "GIT_COMMITTER_EMAIL": "alice@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def write(root: Path, files: dict[str, str | None]) -> None:
    for path, content in files.items():
        target = root / path
        if content is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


class Remote:
    """A bare repository with ``main`` and a PR branch, edited through a working clone."""

    def __init__(self, tmp: Path) -> None:
        self.bare = tmp / "remote.git"
        self.work = tmp / "work"
        git(tmp, "init", "--quiet", "--bare", "-b", "main", str(self.bare))
        git(tmp, "clone", "--quiet", str(self.bare), str(self.work))
        write(
            self.work,
            {
                "README.md": "# Project\n",
                "old.txt": "to be deleted\n",
                "a.txt": "renamed later\n" * 5,
                "run.sh": "echo hi\n",
                "src/app.py": "print('app')\n",
            },
        )
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", "base")
        git(self.work, "push", "--quiet", "origin", "HEAD:main")
        self.base = git(self.work, "rev-parse", "HEAD")

    def commit(self, branch: str, files: dict[str, str | None], message: str = "change") -> str:
        git(self.work, "checkout", "--quiet", "-B", branch, f"origin/{branch}")
        write(self.work, files)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.work, "push", "--quiet", "origin", f"HEAD:{branch}")
        return git(self.work, "rev-parse", "HEAD")

    def branch(self, name: str) -> str:
        git(self.work, "push", "--quiet", "origin", f"{self.base}:refs/heads/{name}")
        git(self.work, "fetch", "--quiet", "origin")
        return self.base

    def files_changed(self, old: str, new: str) -> list[str]:
        return sorted(git(self.bare, "diff", "--name-only", "--no-renames", old, new).split("\n"))


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


@pytest.fixture
def workspaces(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "worker", identity=BOSUN)


def keep_only(globs: list[str]):  # type: ignore[no-untyped-def]
    def split(paths: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        keep = tuple(p for p in paths if matches(p, globs))
        return keep, tuple(p for p in paths if p not in keep)

    return split


def message(keep: tuple[str, ...], revert: tuple[str, ...]) -> str:
    return f"Keep only {', '.join(keep)}\n\nReverted: {', '.join(revert)}\n"


async def test_revert_keeps_exactly_the_approved_files(
    remote: Remote, workspaces: WorkspaceManager
) -> None:
    remote.branch("bosun/1")
    git(remote.work, "checkout", "--quiet", "-B", "bosun/1", "origin/bosun/1")
    git(remote.work, "mv", "a.txt", "b.txt")
    (remote.work / "run.sh").chmod(0o755)
    head = remote.commit(
        "bosun/1",
        {
            "README.md": "# Project\n\nEdited by the agent.\n",
            "old.txt": None,
            "src/feature.py": "def feature():\n    return 42\n",
            "docs/with space & $(x).md": "odd name\n",
        },
    )
    changed = remote.files_changed(remote.base, head)
    assert len(changed) == 7
    pushed_before: list[str] = []

    async def before_push(commit: str) -> None:
        assert git(remote.bare, "rev-parse", "bosun/1") == head  # not pushed yet
        pushed_before.append(commit)

    async with scratch_clone(workspaces, "octo/hello", str(remote.bare), "") as clone:
        revert = await revert_unapproved(
            clone,
            branch="bosun/1",
            base_branch="main",
            approved_sha=head,
            split=keep_only(["src/**", "b.txt"]),
            message=message,
            identity=BOSUN,
            before_push=before_push,
        )
    assert revert.commit is not None and pushed_before == [revert.commit]
    assert git(remote.bare, "rev-parse", "bosun/1") == revert.commit
    assert git(remote.bare, "rev-parse", f"{revert.commit}^") == head
    assert sorted(revert.kept) == ["b.txt", "src/feature.py"]
    assert sorted(revert.reverted) == sorted(set(changed) - {"b.txt", "src/feature.py"})
    assert remote.files_changed(remote.base, revert.commit) == ["b.txt", "src/feature.py"]
    # Reverted files are exactly as at the base, modes included; added files are gone.
    for path in ("README.md", "old.txt", "a.txt", "run.sh"):
        assert git(remote.bare, "rev-parse", f"{revert.commit}:{path}") == git(
            remote.bare, "rev-parse", f"{remote.base}:{path}"
        )
    assert git(remote.bare, "ls-tree", revert.commit, "run.sh").startswith("100644 ")
    tree = git(remote.bare, "ls-tree", "-r", "--name-only", revert.commit).split("\n")
    assert "docs/with space & $(x).md" not in tree
    log = git(remote.bare, "log", "-1", "--format=%an <%ae>%n%B", revert.commit)
    assert log.startswith(str(BOSUN)) and "Keep only b.txt, src/feature.py" in log
    assert not list((workspaces.root / "review").iterdir())  # the scratch clone is gone


async def test_nothing_to_revert_pushes_nothing(
    remote: Remote, workspaces: WorkspaceManager
) -> None:
    remote.branch("bosun/2")
    head = remote.commit("bosun/2", {"src/feature.py": "x = 1\n"})

    async def before_push(commit: str) -> None:
        raise AssertionError("nothing should be pushed")

    async with scratch_clone(workspaces, "octo/hello", str(remote.bare), "") as clone:
        revert = await revert_unapproved(
            clone,
            branch="bosun/2",
            base_branch="main",
            approved_sha=head,
            split=keep_only(["src/**"]),
            message=message,
            identity=BOSUN,
            before_push=before_push,
        )
        assert revert.commit is None and revert.kept == ("src/feature.py",)
        with pytest.raises(NothingApproved):
            await revert_unapproved(
                clone,
                branch="bosun/2",
                base_branch="main",
                approved_sha=head,
                split=keep_only(["docs/**"]),
                message=message,
                identity=BOSUN,
                before_push=before_push,
            )
    assert git(remote.bare, "rev-parse", "bosun/2") == head


async def test_a_branch_that_moved_is_never_overwritten(
    remote: Remote, workspaces: WorkspaceManager
) -> None:
    remote.branch("bosun/3")
    approved = remote.commit("bosun/3", {"src/feature.py": "x = 1\n", "README.md": "changed\n"})
    newer = remote.commit("bosun/3", {"README.md": "changed again\n"})

    async def nothing(commit: str) -> None:
        return None

    args = {"branch": "bosun/3", "base_branch": "main", "split": keep_only(["src/**"])}
    async with scratch_clone(workspaces, "octo/hello", str(remote.bare), "") as clone:
        with pytest.raises(BranchMoved, match="not the approved"):
            await revert_unapproved(
                clone,
                approved_sha=approved,
                message=message,
                identity=BOSUN,
                before_push=nothing,
                **args,  # type: ignore[arg-type]
            )
    assert git(remote.bare, "rev-parse", "bosun/3") == newer

    async def someone_pushes(commit: str) -> None:  # between Bosun's commit and its push
        remote.commit("bosun/3", {"README.md": "a human was faster\n"})

    async with scratch_clone(workspaces, "octo/hello", str(remote.bare), "") as clone:
        with pytest.raises(BranchMoved, match="refused"):
            await revert_unapproved(
                clone,
                approved_sha=newer,
                message=message,
                identity=BOSUN,
                before_push=someone_pushes,
                **args,  # type: ignore[arg-type]
            )
    head = git(remote.bare, "rev-parse", "bosun/3")
    assert git(remote.bare, "show", f"{head}:README.md") == "a human was faster"


async def test_conflicting_paths_come_from_git_merge_tree(
    remote: Remote, workspaces: WorkspaceManager
) -> None:
    remote.branch("bosun/4")
    head = remote.commit(
        "bosun/4", {"README.md": "# Project\nagent line\n", "src/app.py": "print('agent')\n"}
    )
    async with scratch_clone(workspaces, "octo/hello", str(remote.bare), "") as clone:
        assert await conflicting_paths(clone, "main", head) == []
    remote.commit("main", {"README.md": "# Project\nmain line\n", "run.sh": "echo main\n"})
    async with scratch_clone(workspaces, "octo/hello", str(remote.bare), "") as clone:
        assert await conflicting_paths(clone, "main", head) == ["README.md"]
        assert await conflicting_paths(clone, "absent", head) == []
