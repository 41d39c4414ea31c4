"""Reading the agent's work tree as data (sandboxes/treewalk.py, sandboxes/scratch.py): the tree
the host records is exactly what git itself would record for a benign tree, and for a hostile
one it reads nothing outside the tree, runs nothing, and reads as the workspace's owner."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes.errors import UnreadableWorkspace
from sandboxes.git import GitIdentity, git_env
from sandboxes.scratch import quote_path
from sandboxes.treewalk import is_dot_git
from sandboxes.userns import host_ids
from sandboxes.workspace import Workspace, WorkspaceManager

TEST_ROOT = Path("/tmp/bosun-treewalk-tests")
BOT = GitIdentity("bosun[bot]", "bosun@example.invalid")
OWNER = host_ids(1000, 1000, remapped=Path("/etc/subuid").exists() and os.geteuid() == 0)
DEV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "d@x", "GIT_COMMITTER_NAME": "Dev",
       "GIT_COMMITTER_EMAIL": "d@x"}  # fmt: skip


def git(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *argv], cwd=cwd, env=git_env(env={**DEV, **(env or {})}),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout


def as_agent(root: Path) -> None:
    """Give everything under ``root`` (but ``.git``'s objects) to the sandbox user, as if the
    agent had written it."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(Path(dirpath) / name, *OWNER)


@pytest.fixture
def root() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"tw-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def subdir(root: Path, name: str) -> Path:
    (root / name).mkdir()
    return root / name


def make_remote(root: Path, files: dict[str, str], extra: list[list[str]] | None = None) -> Path:
    remote = root / "remote.git"
    dev = root / "dev"
    git("init", "--bare", "--quiet", "--initial-branch=main", str(remote), cwd=root)
    git("init", "--quiet", "--initial-branch=main", str(dev), cwd=root)
    for name, text in files.items():
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).write_text(text)
    git("add", "-A", cwd=dev)
    for argv in extra or []:
        git(*argv, cwd=dev)
    git("commit", "--quiet", "-m", "initial", cwd=dev)
    git("push", "--quiet", str(remote), "main", cwd=dev)
    return remote


async def workspace(root: Path, remote: Path, run_id: str = "run-1") -> Workspace:
    manager = WorkspaceManager(root / "work", identity=BOT)
    return await manager.prepare(
        run_id=run_id, repo="acme/widgets", remote_url=str(remote), branch="bosun/1-x",
        base_ref="main", owner=OWNER,
    )  # fmt: skip


def tree_of_git_add(ws: Workspace, root: Path) -> str:
    """What ``git add -A`` would record for the same files (on a copy, in the test only)."""
    copy = root / "copy"
    shutil.copytree(ws.path, copy, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(copy):
        here = Path(dirpath)
        for name in list(dirnames) + filenames:
            if here != copy and name == ".git":  # git would record a gitlink; Bosun the files
                target = here / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
                if name in dirnames:
                    dirnames.remove(name)
    index = {"GIT_INDEX_FILE": str(root / "copy.index")}
    git("read-tree", ws.start_sha, cwd=copy, env=index)
    git("add", "-A", cwd=copy, env=index)
    return git("write-tree", cwd=copy, env=index).strip()


GITIGNORE = "*.log\nbuild/\n!keep.log\n/anchored.txt\ndocs/*.tmp\n"
BASE = {
    ".gitignore": GITIGNORE,
    "sub/.gitignore": "*.gen\n!important.gen\n",
    "README.md": "hello\n",
    "old.txt": "one\ntwo\n",
    "gone.txt": "bye\n",
    "script.sh": "#!/bin/sh\necho hi\n",
}


async def test_the_recorded_tree_is_the_one_git_would_record(root: Path) -> None:
    remote = make_remote(
        root,
        {**BASE, "build/tracked.txt": "tracked in an ignored folder\n"},
        extra=[["add", "-f", "build/tracked.txt"], ["update-index", "--add", "--chmod=+x",
               "script.sh"]],
    )  # fmt: skip
    ws = await workspace(root, remote)
    p = ws.path
    (p / "build" / "tracked.txt").write_text("changed\n")
    (p / "build" / "new.txt").write_text("ignored\n")
    for name in ("x.log", "keep.log", "anchored.txt", "sub/anchored.txt", "sub/a.gen",
                 "sub/important.gen", "docs/a.tmp", "docs/deep/a.tmp"):  # fmt: skip
        (p / name).parent.mkdir(parents=True, exist_ok=True)
        (p / name).write_text(name + "\n")
    (p / "script.sh").chmod(0o644)
    (p / "tool.py").write_text("#!/usr/bin/env python3\n")
    (p / "tool.py").chmod(0o755)
    (p / "gone.txt").unlink()
    (p / "old.txt").rename(p / "renamed.txt")
    (p / "link").symlink_to("README.md")
    (p / "escape").symlink_to("/etc/passwd")
    (p / "empty-folder").mkdir()
    for odd in ("with space.txt", 'quote"back\\slash.txt', "new\nline.txt", "ünïcode.txt"):
        (p / odd).write_text(odd + "\n")
    (p / os.fsdecode(b"latin-\xe9.txt")).write_text("bytes\n")
    (p / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    as_agent(p)

    changes = await ws.changes()
    assert changes.tree == tree_of_git_add(ws, root)
    by_path = {c.path: c.status for c in changes.files}
    assert by_path["build/tracked.txt"] == "M" and "build/new.txt" not in by_path
    assert "keep.log" in by_path and "x.log" not in by_path
    assert "sub/anchored.txt" in by_path and "anchored.txt" not in by_path
    assert "sub/important.gen" in by_path and "sub/a.gen" not in by_path
    assert "docs/deep/a.tmp" in by_path and "docs/a.tmp" not in by_path
    assert by_path["renamed.txt"] == "R" and by_path["gone.txt"] == "D"
    assert by_path["script.sh"] == "M"  # the mode changed
    assert git("cat-file", "-p", f"{changes.tree}:escape", cwd=ws.scratch.path) == "/etc/passwd"
    assert "root:" not in changes.diff  # the link is recorded, never what it points at


async def test_nested_repositories_are_left_out_but_their_files_kept(root: Path) -> None:
    ws = await workspace(root, make_remote(root, BASE))
    marker = root / "pwned"
    nested = ws.path / "vendor" / "lib"
    nested.mkdir(parents=True)
    git("init", "--quiet", str(nested), cwd=root)
    with (nested / ".git" / "config").open("a") as config:
        config.write(f'[filter "x"]\n\tclean = touch {marker}\n\tsmudge = touch {marker}\n')
        config.write(f"[core]\n\tfsmonitor = touch {marker}\n")
    (nested / ".gitattributes").write_text("* filter=x\n")
    (nested / "code.py").write_text("print('vendored')\n")
    (ws.path / "other").mkdir()
    (ws.path / "other" / ".git").write_text(f"gitdir: {root}\n")  # a gitfile pointing out
    (ws.path / "other" / "a.txt").write_text("a\n")
    (ws.path / "case").mkdir()
    (ws.path / "case" / ".GIT").mkdir()
    (ws.path / "case" / ".GIT" / "config").write_text("[core]\n")
    as_agent(ws.path)
    changes = await ws.changes()
    paths = {c.path for c in changes.files}
    assert {"vendor/lib/code.py", "vendor/lib/.gitattributes", "other/a.txt"} <= paths
    assert not any(is_dot_git(part) for path in paths for part in path.split("/")), paths
    assert {(n.kind, n.path) for n in changes.notes} == {
        ("nested_git", "vendor/lib/.git"),
        ("nested_git", "other/.git"),
        ("nested_git", "case/.GIT"),
    }
    assert not marker.exists()


async def test_a_submodule_is_kept_as_the_base_has_it(root: Path) -> None:
    (root / "inner-src").mkdir()
    inner = make_remote(root / "inner-src", {"lib.txt": "lib\n"})
    commit = git("rev-parse", "main", cwd=inner).strip()
    remote = make_remote(
        root,
        {**BASE, ".gitmodules": '[submodule "lib"]\n\tpath = lib\n\turl = ../inner\n'},
        extra=[["update-index", "--add", "--cacheinfo", f"160000,{commit},lib"]],
    )
    clean = await workspace(root, remote, "run-clean")
    as_agent(clean.path)
    assert (await clean.changes()).empty  # an uninitialised submodule is no change
    ws = await workspace(root, remote, "run-writes")
    (ws.path / "lib").mkdir(exist_ok=True)
    (ws.path / "lib" / "planted.txt").write_text("x\n")
    as_agent(ws.path)
    changes = await ws.changes()
    assert changes.empty
    assert [(n.kind, n.path) for n in changes.notes] == [("submodule", "lib")]
    listing = git("ls-tree", changes.tree, "lib", cwd=ws.scratch.path)
    assert listing.startswith(f"160000 commit {commit}")


async def test_special_files_are_skipped_without_blocking(root: Path) -> None:
    ws = await workspace(root, make_remote(root, BASE))
    os.mkfifo(ws.path / "pipe")
    (ws.path / "real.txt").write_text("real\n")
    as_agent(ws.path)
    changes = await ws.changes()
    assert [c.path for c in changes.files] == ["real.txt"]
    assert [(n.kind, n.path) for n in changes.notes] == [("special_file", "pipe")]


async def test_the_walk_reads_as_the_workspace_owner_not_as_root(root: Path) -> None:
    """A file only root may read stops the walk: the kernel, not only the code, keeps the
    host's reader to what the sandbox user could read."""
    if os.geteuid() != 0 or OWNER[0] == 0:
        pytest.skip("needs a root worker and a non-root sandbox owner")
    ws = await workspace(root, make_remote(root, BASE))
    secret = ws.path / "root-only.txt"
    secret.write_text("host secret\n")
    as_agent(ws.path)
    os.lchown(secret, 0, 0)
    secret.chmod(0o600)
    with pytest.raises(UnreadableWorkspace) as failure:
        await ws.changes()
    assert "host secret" not in str(failure.value)
    assert "Permission" in failure.value.detail or "EACCES" in failure.value.detail


async def test_the_agents_top_level_git_is_never_read(root: Path) -> None:
    ws = await workspace(root, make_remote(root, BASE))
    host_file = root / "host-file.txt"
    host_file.write_text("line one of a host file\n")
    before = host_file.stat()
    shutil.rmtree(ws.path / ".git")
    (ws.path / ".git").symlink_to(host_file)
    (ws.path / "work.txt").write_text("work\n")
    as_agent(ws.path)
    changes = await ws.changes()
    assert [c.path for c in changes.files] == ["work.txt"]
    assert "host file" not in changes.diff
    assert host_file.read_text() == "line one of a host file\n"
    assert host_file.stat().st_mtime_ns == before.st_mtime_ns


async def test_cleanup_never_follows_a_planted_symlink(root: Path) -> None:
    ws = await workspace(root, make_remote(root, BASE))
    victim = root / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep\n")
    (ws.path / "to-victim").symlink_to(victim)
    (ws.path / ".git" / "objects-link").symlink_to(victim)
    as_agent(ws.path)
    manager = WorkspaceManager(root / "work", identity=BOT)
    await manager.cleanup(ws.run_id)
    assert not ws.run_dir.exists()
    assert (victim / "keep.txt").read_text() == "keep\n"


def test_names_git_takes_for_dot_git() -> None:
    for name in (".git", ".GIT", ".Git.", ".git ", "git~1", ".g\u200cit"):
        assert is_dot_git(name), name
    for name in (".gitignore", ".github", "git", ".git2", "a.git"):
        assert not is_dot_git(name), name


def test_paths_are_quoted_for_fast_import() -> None:
    assert quote_path(b"plain/path.txt") == b'"plain/path.txt"'
    assert quote_path(b'a"b\\c\nd\xe9') == b'"a\\"b\\\\c\\012d\\351"'


async def test_limits_bound_what_reading_costs_the_host(root: Path) -> None:
    """A file over the size limit is noted and never read (a 1 TiB sparse file costs
    nothing); too many new files, too deep a tree or too long a path end the read with a
    reason in Bosun's words; a `.gitignore` that backtracks for ever is cut off."""
    from sandboxes.treewalk import WalkLimits

    ws = await workspace(root, make_remote(root, BASE))
    with (ws.path / "huge.bin").open("wb") as handle:
        handle.truncate(1 << 40)
    (ws.path / "small.txt").write_text("ok\n")
    as_agent(ws.path)
    changes = await ws.changes(limits=WalkLimits(max_file_bytes=1000))
    assert [c.path for c in changes.files] == ["small.txt"]
    assert [(n.kind, n.path, n.size) for n in changes.notes] == [("oversized", "huge.bin", 1 << 40)]

    many = await workspace(root, make_remote(subdir(root, "m"), BASE), "run-many")
    for index in range(30):
        (many.path / f"f{index}").write_text("x")
    as_agent(many.path)
    with pytest.raises(UnreadableWorkspace) as failure:
        await many.changes(limits=WalkLimits(max_new_files=20))
    assert "more than 20 new files" in str(failure.value)

    deep = await workspace(root, make_remote(subdir(root, "d"), BASE), "run-deep")
    folder = deep.path
    for _ in range(12):
        folder = folder / "d"
    folder.mkdir(parents=True)
    (folder / "leaf.txt").write_text("x")
    as_agent(deep.path)
    with pytest.raises(UnreadableWorkspace) as failure:
        await deep.changes(limits=WalkLimits(max_depth=10))
    assert "deeper than 10" in str(failure.value)
    with pytest.raises(UnreadableWorkspace) as failure:
        await deep.changes(limits=WalkLimits(max_path_bytes=20))
    assert "longer than 20 bytes" in str(failure.value)

    hostile = await workspace(root, make_remote(subdir(root, "h"), BASE), "run-regex")
    (hostile.path / ".gitignore").write_text("*a" * 14 + "*b\n")
    (hostile.path / ("a" * 120)).write_text("x")
    as_agent(hostile.path)
    with pytest.raises(UnreadableWorkspace) as failure:
        await hostile.changes()
    assert "too costly to match" in str(failure.value)
