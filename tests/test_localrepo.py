"""A local repository as Bosun's host-side git treats it (real git, no fakes): validation with
actionable errors, branches written without touching the user's working tree, index or HEAD,
merges that refuse when the default branch moved under the reviewed files, and hooks, filters
and config of the repository never run on the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandboxes.errors import PushRejected
from sandboxes.git import GitIdentity, run_git
from sandboxes.localrepo import (
    CheckedOut,
    LocalRepoError,
    LocalRepository,
    MergeRefused,
    inspect_default_branch,
)

BOT = GitIdentity("bosun[bot]", "bot@example.invalid")


def git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "User",
        "GIT_AUTHOR_EMAIL": "user@example.invalid",
        "GIT_COMMITTER_NAME": "User",
        "GIT_COMMITTER_EMAIL": "user@example.invalid",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def make_repo(path: Path) -> Path:
    """A working copy on ``main`` with two commits."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# Demo\n")
    (path / "app.py").write_text("print('hello')\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "first")
    (path / "notes.txt").write_text("notes\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "second")
    return path


def snapshot(path: Path) -> dict[str, object]:
    """What the user sees: HEAD, the index, the status and every file's bytes."""
    files = {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(path).parts
    }
    return {
        "head": git(path, "rev-parse", "HEAD"),
        "symbolic": git(path, "symbolic-ref", "HEAD"),
        "index": (path / ".git" / "index").read_bytes(),
        "status": git(path, "status", "--porcelain=v2", "--untracked-files=all"),
        "files": files,
    }


async def commit_in(scratch: Path, parent: str, files: dict[str, str], message: str) -> str:
    """A commit of Bosun's own (in its bare ``scratch``) changing ``files`` on ``parent``."""
    env = {"GIT_INDEX_FILE": str(scratch / "tmp.index")}
    await run_git(["read-tree", parent], cwd=scratch, env=env)
    for name, text in files.items():
        blob = (
            await run_git(["hash-object", "-w", "--stdin"], cwd=scratch, stdin=text.encode())
        ).text.strip()
        await run_git(
            ["update-index", "--add", "--cacheinfo", f"100644,{blob},{name}"], cwd=scratch, env=env
        )
    tree = (await run_git(["write-tree"], cwd=scratch, env=env)).text.strip()
    ident = {
        "GIT_AUTHOR_NAME": BOT.name,
        "GIT_AUTHOR_EMAIL": BOT.email,
        "GIT_COMMITTER_NAME": BOT.name,
        "GIT_COMMITTER_EMAIL": BOT.email,
    }
    made = await run_git(["commit-tree", tree, "-p", parent, "-m", message], cwd=scratch, env=ident)
    return made.text.strip()


async def mirror_of(repo: LocalRepository, tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror.git"
    await repo.export_to(mirror)
    return mirror


# -- validation ----------------------------------------------------------------------------


def owned_by(path: Path, uid: int) -> Path:
    """``path`` and everything in it given to ``uid`` (the tests run as root)."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(Path(root) / name, uid, uid)
    os.lchown(path, uid, uid)
    return path


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda p: p / "absent", "not_found", "does not exist"),
        (lambda p: (p / "plain").mkdir() or p / "plain", "not_a_repository", "not a git repo"),
        (lambda p: make_repo(p / "w") / ".git", "git_dir", "give the working copy's folder"),
        (
            lambda p: (make_repo(p / "w2") / "sub").mkdir() or p / "w2" / "sub",
            "not_a_repository",
            "give its top folder",
        ),
        (lambda p: (p / "f").write_text("x") and p / "f", "not_a_repository", "not a folder"),
        (lambda p: owned_by(make_repo(p / "o"), 4321), "owner", "belongs to uid 4321"),
        (lambda p: owned_by(make_repo(p / "g") / ".git", 4321).parent, "owner", "uid 4321"),
    ],
)
async def test_what_is_not_a_usable_repository_is_named_with_the_fix(
    tmp_path: Path, make: object, code: str, words: str
) -> None:
    assert callable(make)
    path = make(tmp_path)
    with pytest.raises(LocalRepoError) as caught:
        await LocalRepository(path).open()
    assert caught.value.code == code and words in str(caught.value)


async def test_a_folder_inside_another_repository_is_not_taken_for_it(tmp_path: Path) -> None:
    """A plain folder in a repository's tree (say, a home folder kept in git) is refused,
    not silently resolved to the enclosing repository."""
    outer = make_repo(tmp_path / "outer")
    (outer / "project").mkdir()
    with pytest.raises(LocalRepoError, match="give its top folder"):
        await LocalRepository(outer / "project").open()


async def test_default_branch_must_exist_and_be_clean_where_checked_out(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "r")
    repo = await LocalRepository(path).open()
    assert not repo.bare
    with pytest.raises(LocalRepoError, match="no branch `trunk`; its branches: main") as caught:
        await inspect_default_branch(repo, "trunk")
    assert caught.value.code == "branch_missing"
    (path / "app.py").write_text("print('edited')\n")
    with pytest.raises(LocalRepoError, match=r"uncommitted changes \(app.py\)") as caught:
        await inspect_default_branch(repo, "main")
    assert caught.value.code == "dirty"
    git(path, "switch", "-q", "-c", "feature")  # main no longer checked out: usable
    await inspect_default_branch(repo, "main")


async def test_a_bare_repository_is_usable(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "w")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(tmp_path / "b.git"))
    repo = await LocalRepository(tmp_path / "b.git").open()
    assert repo.bare and await repo.checkouts() == []
    await inspect_default_branch(repo, "main")


# -- branches without touching the user's checkout -------------------------------------------


async def test_a_branch_is_written_without_touching_the_users_checkout(tmp_path: Path) -> None:
    """A dirty work tree on a checked-out feature branch, a staged change and an untracked
    file: writing Bosun's branch (and merging it into main) changes none of it."""
    path = make_repo(tmp_path / "r")
    git(path, "switch", "-q", "-c", "feature")
    (path / "app.py").write_text("print('work in progress')\n")
    (path / "staged.txt").write_text("staged\n")
    git(path, "add", "staged.txt")
    (path / "untracked.txt").write_text("mine\n")
    before = snapshot(path)

    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"hello.py": "print('hi')\n"}, "Add hello")
    await repo.push_from(mirror, change, "bosun/1-add-hello", force=False)
    assert git(path, "rev-parse", "bosun/1-add-hello").strip() == change
    done = await repo.merge_into(
        mirror,
        branch="bosun/1-add-hello",
        head_sha=change,
        into="main",
        fast_forward=False,
        message="Merge bosun/1-add-hello",
        identity=BOT,
    )
    assert done.work_tree is None and not done.fast_forward
    assert git(path, "rev-parse", "main").strip() == done.sha
    assert git(path, "show", "main:hello.py") == "print('hi')\n"
    parents = git(path, "rev-list", "--parents", "-n1", "main").split()[1:]
    assert parents == [main, change]
    assert snapshot(path) == before


async def test_a_checked_out_branch_is_never_moved(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "r")
    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"x.py": "x\n"}, "x")
    before = snapshot(path)
    with pytest.raises(CheckedOut, match="checked out in"):
        await repo.push_from(mirror, change, "main", force=False)
    assert snapshot(path) == before


async def test_a_push_that_is_not_a_fast_forward_is_refused(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "r")
    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    one = await commit_in(mirror, main, {"a.py": "1\n"}, "one")
    other = await commit_in(mirror, main, {"a.py": "2\n"}, "other")
    await repo.push_from(mirror, one, "bosun/2-a", force=False)
    with pytest.raises(PushRejected, match="non-fast-forward"):
        await repo.push_from(mirror, other, "bosun/2-a", force=False)
    assert git(path, "rev-parse", "bosun/2-a").strip() == one
    assert await repo.delete_branch("bosun/2-a", expected=one)
    assert await repo.branch_head("bosun/2-a") is None


async def test_hooks_and_filters_of_the_repository_never_run(tmp_path: Path) -> None:
    """Hooks (receive-side ones included: nothing is pushed *into* the repository), a
    core.hooksPath, an fsmonitor and filter drivers in its config: none runs, through
    export, branch writes and a merge that updates the checked-out main."""
    path = make_repo(tmp_path / "r")
    marker = tmp_path / "ran"
    script = f'#!/bin/sh\necho "$0" >> {marker}\ncat\n'
    evil = tmp_path / "evil.sh"
    evil.write_text(script)
    evil.chmod(0o755)
    (path / ".gitattributes").write_text("*.txt filter=x\n")
    git(path, "add", ".gitattributes")
    git(path, "commit", "-qm", "attributes")
    hooks = path / ".git" / "hooks"
    for name in ("pre-receive", "post-receive", "update", "reference-transaction",
                 "post-checkout", "post-merge", "pre-push", "post-update"):  # fmt: skip
        (hooks / name).write_text(script)
        (hooks / name).chmod(0o755)
    git(path, "config", "core.fsmonitor", str(evil))
    git(path, "config", "filter.x.clean", str(evil))
    git(path, "config", "filter.x.smudge", str(evil))
    git(path, "config", "filter.x.process", str(evil))
    git(path, "config", "filter.x.required", "true")
    assert not marker.exists()

    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "-c", "core.fsmonitor=false", "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"new.txt": "agent text\n"}, "Add new.txt")
    await repo.push_from(mirror, change, "bosun/3-new", force=False)
    done = await repo.merge_into(
        mirror, branch="bosun/3-new", head_sha=change, into="main", fast_forward=True,
        message="m", identity=BOT,
    )  # fmt: skip
    assert done.fast_forward and done.work_tree == path
    assert (path / "new.txt").read_text() == "agent text\n"  # written as data, unfiltered
    assert not marker.exists(), marker.read_text()


def _marker_script(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A program that leaves a marker file when run (and fails); the script and the marker."""
    marker = tmp_path / f"ran-{name}"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    script.chmod(0o755)
    return script, marker


@pytest.mark.parametrize("where", ["export", "push"])
@pytest.mark.parametrize("how", ["insteadOf", "pushInsteadOf-ssh", "included"])
async def test_the_repositorys_config_cannot_redirect_bosuns_transfers(
    tmp_path: Path, where: str, how: str
) -> None:
    """A config that rewrites the path Bosun pushes to (export into Bosun's mirror) or fetches
    from (a run's branch out of Bosun's repository) — to another repository whose hooks would
    run without Bosun's config, or to ssh with a core.sshCommand — is refused with a message
    naming the setting, and nothing runs."""
    path = make_repo(tmp_path / "r")
    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"x.txt": "x\n"}, "x")
    target = mirror
    evil_hook, hook_ran = _marker_script(tmp_path, "hook")
    ssh, ssh_ran = _marker_script(tmp_path, "ssh")
    evil = tmp_path / "evil.git"
    git(tmp_path, "init", "-q", "--bare", str(evil))
    for hook in ("pre-receive", "update", "post-receive", "post-update"):
        (evil / "hooks" / hook).write_text(evil_hook.read_text())
        (evil / "hooks" / hook).chmod(0o755)
    (evil / "hooks" / "pre-upload-pack").write_text(evil_hook.read_text())
    if how == "insteadOf":
        git(path, "config", f"url.{evil}.insteadOf", str(target))
    elif how == "pushInsteadOf-ssh":
        git(path, "config", "core.sshCommand", str(ssh))
        git(path, "config", "url.ssh://example.invalid/x.insteadOf", str(target))
        git(path, "config", "url.ssh://example.invalid/y.pushInsteadOf", str(target))
    else:
        included = tmp_path / "included.cfg"
        included.write_text(f'[url "{evil}"]\n\tinsteadOf = {tmp_path}\n')
        git(path, "config", "include.path", str(included))
    with pytest.raises(LocalRepoError, match="rewrites the path Bosun moves commits") as caught:
        if where == "export":
            await repo.export_to(target)
        else:
            await repo.push_from(mirror, change, "bosun/9-x", force=False)
    assert caught.value.code == "config" and "git config --unset-all url." in str(caught.value)
    assert not hook_ran.exists() and not ssh_ran.exists()
    assert await repo.branch_head("bosun/9-x") is None


async def test_git_in_the_repository_speaks_to_local_paths_only(tmp_path: Path) -> None:
    """Whatever its config allows, git run in a user's repository refuses ssh (so its
    core.sshCommand never runs), http and remote helpers; and an alternate's
    core.alternateRefsCommand does not run when Bosun moves commits."""
    path = make_repo(tmp_path / "r")
    ssh, ssh_ran = _marker_script(tmp_path, "ssh")
    alt, alt_ran = _marker_script(tmp_path, "alt")
    git(path, "config", "core.sshCommand", str(ssh))
    git(path, "config", "protocol.allow", "always")
    git(path, "config", "protocol.ssh.allow", "always")
    git(path, "config", "core.alternateRefsCommand", str(alt))
    other = make_repo(tmp_path / "other")
    (path / ".git" / "objects" / "info" / "alternates").write_text(f"{other}/.git/objects\n")
    repo = await LocalRepository(path).open()
    for url in ("ssh://example.invalid/x.git", "https://example.invalid/x.git", "testgit::x"):
        result = await repo.git("ls-remote", url, check=False)
        assert result.returncode != 0 and "not allowed" in result.text + result.stderr, url
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"y.txt": "y\n"}, "y")
    assert await repo.push_from(mirror, change, "bosun/8-y", force=False) == change
    assert not ssh_ran.exists() and not alt_ran.exists()


async def test_merging_into_a_checked_out_main_follows_only_when_it_is_clean(
    tmp_path: Path,
) -> None:
    path = make_repo(tmp_path / "r")
    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"feature.py": "x = 1\n"}, "feature")
    await repo.push_from(mirror, change, "bosun/4-feature", force=False)
    (path / "notes.txt").write_text("my uncommitted notes\n")
    before = snapshot(path)
    with pytest.raises(MergeRefused, match="uncommitted changes") as caught:
        await repo.merge_into(
            mirror, branch="bosun/4-feature", head_sha=change, into="main",
            fast_forward=False, message="m", identity=BOT,
        )  # fmt: skip
    assert caught.value.kind == "dirty" and caught.value.paths == ("notes.txt",)
    assert snapshot(path) == before
    git(path, "checkout", "--", "notes.txt")
    done = await repo.merge_into(
        mirror, branch="bosun/4-feature", head_sha=change, into="main",
        fast_forward=False, message="m", identity=BOT,
    )  # fmt: skip
    assert done.work_tree == path
    assert (path / "feature.py").read_text() == "x = 1\n"
    assert git(path, "status", "--porcelain") == ""  # index and tree follow HEAD
    assert git(path, "rev-parse", "HEAD").strip() == done.sha


async def test_a_merge_refuses_when_main_changed_the_reviewed_files(tmp_path: Path) -> None:
    path = make_repo(tmp_path / "r")
    git(path, "switch", "-q", "-c", "elsewhere")
    repo = await LocalRepository(path).open()
    mirror = await mirror_of(repo, tmp_path)
    main = git(path, "rev-parse", "main").strip()
    change = await commit_in(mirror, main, {"app.py": "print('agent')\n"}, "agent")
    await repo.push_from(mirror, change, "bosun/5-app", force=False)
    # Meanwhile main moves: once on another file (fine), once on the reviewed one.
    git(path, "switch", "-q", "main")
    (path / "README.md").write_text("# Demo, renamed\n")
    git(path, "commit", "-qam", "readme")
    git(path, "switch", "-q", "elsewhere")
    await repo.export_to(mirror)
    done = await repo.merge_into(
        mirror, branch="bosun/5-app", head_sha=change, into="main", fast_forward=True,
        message="m", identity=BOT,
    )  # fmt: skip
    assert not done.fast_forward  # main moved: a merge commit instead
    second = await commit_in(mirror, done.sha, {"app.py": "print('agent again')\n"}, "more")
    await repo.push_from(mirror, second, "bosun/5-app", force=True)
    git(path, "switch", "-q", "main")
    (path / "app.py").write_text("print('human')\n")
    git(path, "commit", "-qam", "human edit")
    git(path, "switch", "-q", "elsewhere")
    await repo.export_to(mirror)
    main_before = git(path, "rev-parse", "main")
    with pytest.raises(MergeRefused) as caught:
        await repo.merge_into(
            mirror, branch="bosun/5-app", head_sha=second, into="main", fast_forward=False,
            message="m", identity=BOT,
        )  # fmt: skip
    assert caught.value.kind == "conflict" and caught.value.paths == ("app.py",)
    assert git(path, "rev-parse", "main") == main_before
    with pytest.raises(MergeRefused) as moved:
        await repo.merge_into(
            mirror, branch="bosun/5-app", head_sha=change, into="main", fast_forward=False,
            message="m", identity=BOT,
        )  # fmt: skip
    assert moved.value.kind == "head_moved" and moved.value.head == second
