"""Host-side git with real git: mirrors, per-run clones, diffs, commits, pushes (accepted and
rejected), hardening against a planted hook, and git working inside a real sandbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker.errors
import pytest

from sandboxes.base import open_sandbox
from sandboxes.docker import DockerBackend
from sandboxes.errors import PushRejected
from sandboxes.git import GitIdentity, Redactor, basic_auth_header, git_env
from sandboxes.spec import SandboxSpec
from sandboxes.userns import host_ids
from sandboxes.workspace import WorkspaceManager
from tests.services import docker_client, missing

AGENT_IMAGE = "bosun-agent:latest"
TEST_ROOT = Path("/tmp/bosun-sandbox-tests")
BOT = GitIdentity("bosun[bot]", "bosun@example.invalid")
OWNER = host_ids(1000, 1000, remapped=Path("/etc/subuid").exists() and os.geteuid() == 0)


def sh(*argv: str, cwd: Path | None = None) -> str:
    env = git_env(env={"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "d@x",
                       "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "d@x"})  # fmt: skip
    done = subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout


@pytest.fixture
def root() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"wk-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def upstream(root: Path) -> tuple[Path, Path]:
    """A bare 'remote' (writable by the sandbox owner) and a developer clone that pushes to it."""
    remote = root / "remote.git"
    dev = root / "dev"
    sh("git", "init", "--bare", "--quiet", "--initial-branch=main", str(remote))
    sh("git", "init", "--quiet", "--initial-branch=main", str(dev))
    (dev / "README.md").write_text("hello\n")
    (dev / "old.txt").write_text("one\ntwo\nthree\n")
    (dev / "gone.txt").write_text("bye\n")
    sh("git", "add", "-A", cwd=dev)
    sh("git", "commit", "--quiet", "-m", "initial", cwd=dev)
    sh("git", "push", "--quiet", str(remote), "main", cwd=dev)
    for dirpath, dirnames, filenames in os.walk(remote):
        for name in [*dirnames, *filenames, "."]:
            os.lchown(Path(dirpath) / name, *OWNER)  # host-side git pushes as the sandbox owner
    return remote, dev


@pytest.fixture
def manager(root: Path) -> WorkspaceManager:
    return WorkspaceManager(root / "work", identity=BOT)


async def prepare(manager: WorkspaceManager, remote: Path, run_id: str, **kw: object):  # type: ignore[no-untyped-def]
    return await manager.prepare(
        run_id=run_id, repo="acme/widgets", remote_url=str(remote),
        branch=kw.pop("branch", f"bosun/1-{run_id}"), base_ref="main", owner=OWNER, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_mirror_is_created_then_fetched_incrementally(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, dev = upstream
    mirror = await manager.mirrors.update("acme/widgets", str(remote))
    assert mirror == manager.root / "mirrors" / "acme__widgets.git"
    first = sh("git", "rev-parse", "main", cwd=mirror).strip()
    (dev / "new.txt").write_text("new\n")
    sh("git", "add", "-A", cwd=dev)
    sh("git", "commit", "--quiet", "-m", "second", cwd=dev)
    sh("git", "push", "--quiet", str(remote), "main", cwd=dev)
    await manager.mirrors.update("acme/widgets", str(remote))
    second = sh("git", "rev-parse", "main", cwd=mirror).strip()
    assert second != first
    assert sh("git", "rev-parse", "main~1", cwd=mirror).strip() == first


async def test_runs_get_distinct_self_contained_clones(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, _ = upstream
    one = await prepare(manager, remote, "run-a")
    two = await prepare(manager, remote, "run-b")
    assert one.path != two.path
    assert not (one.path / ".git" / "objects" / "info" / "alternates").exists()
    assert one.base_sha == two.base_sha
    (one.path / "README.md").write_text("changed in a\n")
    assert (two.path / "README.md").read_text() == "hello\n"
    assert sh("git", "branch", "--show-current", cwd=one.path).strip() == "bosun/1-run-a"
    assert sh("git", "remote", "get-url", "origin", cwd=one.path).strip() == str(remote)
    assert os.stat(one.path / "README.md").st_uid == OWNER[0]


async def test_changes_report_add_modify_delete_and_untracked(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, _ = upstream
    ws = await prepare(manager, remote, "run-diff")
    (ws.path / "old.txt").write_text("one\nTWO\nthree\nfour\n")
    (ws.path / "gone.txt").unlink()
    (ws.path / "src").mkdir()
    (ws.path / "src" / "new.py").write_text("print('hi')\n")
    (ws.path / "logo.bin").write_bytes(b"\x00\x01\x02binary")
    changes = await ws.changes()
    by_path = {change.path: change for change in changes.files}
    assert {p: (c.status, c.added, c.removed) for p, c in by_path.items()} == {
        "old.txt": ("M", 2, 1),
        "gone.txt": ("D", 0, 1),
        "src/new.py": ("A", 1, 0),
        "logo.bin": ("A", None, None),
    }
    assert by_path["logo.bin"].binary
    assert "+print('hi')" in changes.diff and "-bye" in changes.diff
    assert sorted(changes.paths) == ["gone.txt", "logo.bin", "old.txt", "src/new.py"]
    assert (changes.lines_added, changes.lines_removed) == (3, 2)
    status = sh("git", "status", "--porcelain", cwd=ws.path)
    assert "?? src/" in status  # the agent's own index was not touched


async def test_commit_and_push_then_a_rejected_push_is_typed(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, _ = upstream
    ws = await prepare(manager, remote, "run-push")
    unchanged = await ws.changes()
    assert unchanged.empty
    assert await ws.commit(unchanged.tree, "nothing", author=BOT, committer=BOT) is None
    (ws.path / "feature.txt").write_text("feature\n")
    sha = await ws.commit(
        (await ws.changes()).tree,
        "Add feature\n\nCloses #1",
        author=GitIdentity("Requester", "req@example.invalid"),
        committer=BOT,
        trailers=[("Bosun-Run", "run-push"), ("Requested-by", "octocat")],
    )
    assert sha is not None
    assert await ws.push(sha, str(remote)) == sha
    assert sh("git", "rev-parse", "refs/heads/bosun/1-run-push", cwd=remote).strip() == sha
    message = sh("git", "log", "-1", "--format=%an%n%cn%n%B", sha, cwd=remote)
    assert message.startswith("Requester\nbosun[bot]\nAdd feature")
    assert "Bosun-Run: run-push\nRequested-by: octocat" in message
    assert os.stat(ws.path / ".git" / "index").st_uid == OWNER[0]

    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'no pushes today' >&2\nexit 1\n")
    hook.chmod(0o755)
    again = await prepare(
        manager, remote, "run-push-2", branch="bosun/1-run-push", continue_branch=True
    )
    assert again.start_sha == sha
    (again.path / "more.txt").write_text("more\n")
    more = await again.commit((await again.changes()).tree, "More", author=BOT, committer=BOT)
    assert more is not None
    header = basic_auth_header("ghs_secrettoken123456")
    with pytest.raises(PushRejected) as info:
        await again.push(more, str(remote), auth_header=header)
    assert "no pushes today" in info.value.stderr
    assert "pre-receive hook declined" in str(info.value)
    assert "ghs_secrettoken123456" not in str(info.value) + " ".join(info.value.argv)


async def test_continue_branch_resumes_from_the_pushed_head(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, _ = upstream
    first = await prepare(manager, remote, "run-1", branch="bosun/7-fix")
    (first.path / "step1.txt").write_text("1\n")
    pushed = await first.commit((await first.changes()).tree, "step 1", author=BOT, committer=BOT)
    assert pushed is not None
    await first.push(pushed, str(remote))
    retry = await prepare(manager, remote, "run-2", branch="bosun/7-fix", continue_branch=True)
    assert retry.start_sha == pushed
    assert retry.base_sha == first.base_sha
    assert (retry.path / "step1.txt").read_text() == "1\n"
    assert [c.path for c in (await retry.changes()).files] == ["step1.txt"]


async def test_planted_hooks_and_config_never_run_on_the_host(
    manager: WorkspaceManager, upstream: tuple[Path, Path], root: Path
) -> None:
    remote, _ = upstream
    ws = await prepare(manager, remote, "run-evil")
    marker = root / "pwned"
    hook = ws.path / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    with (ws.path / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\thooksPath = .git/hooks\n\tfsmonitor = touch {marker}\n")
    (ws.path / "x.txt").write_text("x\n")
    changes = await ws.changes()
    assert await ws.commit(changes.tree, "x", author=BOT, committer=BOT)
    assert not marker.exists()


async def test_cleanup_removes_everything(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, _ = upstream
    ws = await prepare(manager, remote, "run-gone")
    (ws.path / "ro").mkdir()
    (ws.path / "ro" / "f").write_text("f")
    for written in (ws.path / "ro", ws.path / "ro" / "f"):  # as the agent would own them
        os.lchown(written, *OWNER)
    (ws.path / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    (ws.path / "locked").mkdir()
    os.lchown(ws.path / "locked", *OWNER)
    (ws.path / "locked").chmod(0)
    await manager.cleanup("run-gone")
    assert not ws.run_dir.exists()
    assert (manager.root / "mirrors" / "acme__widgets.git").is_dir()


def test_redactor_hides_tokens_in_every_form() -> None:
    header = basic_auth_header("ghs_abcdef123456")
    redact = Redactor([header])
    text = f"fatal: {header} https://x-access-token:ghs_abcdef123456@github.com/a/b"
    assert "ghs_abcdef123456" not in redact(text)
    assert header.split()[-1] not in redact(text)


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[DockerBackend]:
    client = docker_client()
    try:
        client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        missing(AGENT_IMAGE, "build it with sandboxes/images/build.sh")
    finally:
        client.close()
    backend = DockerBackend()
    yield backend
    await backend.close()


@pytest.mark.docker
async def test_git_works_inside_the_sandbox(
    backend: DockerBackend, manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, _ = upstream
    ws = await prepare(manager, remote, "run-box")
    spec = SandboxSpec(run_id="run-box", image=AGENT_IMAGE, workspace=ws.path)
    assert await backend.host_ids(spec) == OWNER
    async with open_sandbox(backend, spec) as box:
        status = (await backend.exec(box, ["git", "status", "--short", "--branch"])).check()
        assert status.text().startswith("## bosun/1-run-box")
        (await backend.exec(box, ["sh", "-c", "echo agent > agent.txt"])).check()
        (await backend.exec(box, ["git", "add", "agent.txt"])).check()
        (await backend.exec(box, ["git", "commit", "-q", "-m", "agent work"])).check()
        log = (await backend.exec(box, ["git", "log", "--format=%an %s", "-2"])).check()
        assert log.text() == "bosun[bot] agent work\nDev initial\n"
    changes = await ws.changes()
    assert [c.path for c in changes.files] == ["agent.txt"]
    sha = await ws.commit(changes.tree, "Bosun's commit", author=BOT, committer=BOT)
    assert sha is not None
    await ws.push(sha, str(remote))
    # The agent's own commits stay in the sandbox: the branch gets one commit of its tree.
    subject = sh("git", "log", "-1", "--format=%s", "bosun/1-run-box", cwd=remote)
    assert subject == "Bosun's commit\n"
    assert sh("git", "show", "bosun/1-run-box:agent.txt", cwd=remote) == "agent\n"


def push_commit(dev: Path, remote: Path, name: str, branch: str = "main") -> str:
    (dev / name).write_text(f"{name}\n")
    sh("git", "add", "-A", cwd=dev)
    sh("git", "commit", "--quiet", "-m", name, cwd=dev)
    sh("git", "push", "--quiet", str(remote), f"HEAD:{branch}", cwd=dev)
    return sh("git", "rev-parse", "HEAD", cwd=dev).strip()


async def test_a_new_run_fetches_only_its_base_branch(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    remote, dev = upstream
    await prepare(manager, remote, "run-a")  # creates the mirror: every branch
    mirror = manager.mirrors.path_for("acme/widgets")
    head = push_commit(dev, remote, "main.txt")
    other = push_commit(dev, remote, "other.txt", branch="other")
    timings: dict[str, float] = {}
    run = await prepare(manager, remote, "run-b", timings=timings)
    assert run.base_sha == head  # the base branch is as new as the remote's
    assert sh("git", "branch", "--list", "other", cwd=mirror).strip() == ""  # not fetched
    assert {"mirror_fetch", "checkout"} <= set(timings)
    # A continued run (retry, resume) fetches every branch: its own may be anywhere.
    continued = await prepare(manager, remote, "run-c", branch="other", continue_branch=True)
    assert continued.start_sha == other


async def test_a_prefetch_stands_for_the_runs_fetch_once(
    manager: WorkspaceManager, upstream: tuple[Path, Path]
) -> None:
    """Started when the run's trigger arrived, a prefetch is what the run's prepare uses (a
    push after it is not seen); it is taken once, and one that failed is fetched again."""
    remote, dev = upstream
    await prepare(manager, remote, "run-a")
    prefetched = push_commit(dev, remote, "one.txt")

    async def no_token() -> str | None:
        return None

    manager.mirrors.prefetch("delivery-1", "acme/widgets", str(remote), no_token, ("main",))
    await asyncio.sleep(0)
    run = await prepare(manager, remote, "run-b", prefetch_key="delivery-1")
    assert run.base_sha == prefetched
    later = push_commit(dev, remote, "two.txt")
    # The trigger had arrived before this push: the run's base is what the prefetch saw.
    manager.mirrors.prefetch("delivery-2", "acme/widgets", str(remote), no_token, ("main",))
    await asyncio.sleep(0.5)  # done before the push below
    newest = push_commit(dev, remote, "three.txt")
    run = await prepare(manager, remote, "run-c", prefetch_key="delivery-2")
    assert run.base_sha == later
    # Taken once: the same key again fetches, as does a prefetch that failed.
    run = await prepare(manager, remote, "run-d", prefetch_key="delivery-2")
    assert run.base_sha == newest
    manager.mirrors.prefetch("delivery-3", "acme/widgets", "/nonexistent.git", no_token, ("main",))
    run = await prepare(manager, remote, "run-e", prefetch_key="delivery-3")
    assert run.base_sha == newest
