"""Diff sizes from real git (issue 7, SPEC §7): every changed file carries its byte size, an
oversized diff is refused from those sizes without being read or scanned, and the secret scan
of a large allowed diff runs off the event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.domain.repoconfig import parse_repo_config
from jobs.run.diffcheck import evaluate_diff
from sandboxes.git import GitIdentity, git_env
from sandboxes.workspace import Workspace, WorkspaceManager

ROOT = Path("/tmp/bosun-sandbox-tests")
GH = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"  # assembled: this file holds no token


def sh(*argv: str, cwd: Path | None = None) -> None:
    env = git_env(env={"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "d@x",
                       "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "d@x"})  # fmt: skip
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def root() -> Iterator[Path]:
    ROOT.mkdir(mode=0o755, exist_ok=True)
    path = ROOT / f"sz-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def workspace(root: Path) -> Workspace:
    """A run's workspace on a repository holding a 3 kB text file and a 2 kB binary."""
    dev = root / "dev"
    sh("git", "init", "--quiet", "--initial-branch=main", str(dev))
    (dev / "data.txt").write_text("row\n" * 750)
    (dev / "logo.png").write_bytes(b"\x89PNG\0" + b"\1" * 1995)
    (dev / "gone.txt").write_text("bye\n")
    sh("git", "add", "-A", cwd=dev)
    sh("git", "commit", "--quiet", "-m", "initial", cwd=dev)
    manager = WorkspaceManager(root / "work", identity=GitIdentity("b", "b@x"))
    return await manager.prepare(
        run_id="r1", repo="o/r", remote_url=str(dev), branch="bosun/1-x", base_ref="main"
    )


async def test_changes_carry_the_byte_size_of_both_sides(root: Path) -> None:
    ws = await workspace(root)
    (ws.path / "data.txt").write_text("row\n" * 1000)
    (ws.path / "logo.png").write_bytes(b"\x89PNG\0" + b"\2" * 995)
    (ws.path / "gone.txt").unlink()
    (ws.path / "blob.bin").write_bytes(b"\0" * 12_345)
    sh("git", "mv", "data.txt", "table.txt", cwd=ws.path)  # a rename that also grows
    changes = await ws.changes()
    sizes = {f.path: (f.status, f.old_size, f.size, f.grown_bytes) for f in changes.files}
    assert sizes == {
        "table.txt": ("R", 3000, 4000, 1000),
        "logo.png": ("M", 2000, 1000, 0),
        "gone.txt": ("D", 4, None, 0),
        "blob.bin": ("A", None, 12_345, 12_345),
    }
    assert changes.grown_bytes == 13_345
    assert changes.diff_bytes == len(changes.diff.encode())
    assert "Binary files /dev/null and b/blob.bin differ" in changes.diff
    assert not (ws.path / ".git" / "bosun-scratch.diff").exists()


async def test_an_oversized_diff_is_neither_read_nor_scanned(root: Path) -> None:
    ws = await workspace(root)
    (ws.path / "flood.bin").write_bytes(b"\0" * 3_000_000)
    (ws.path / "leak.py").write_text(f'TOKEN = "{GH}"\n')
    changes = await ws.changes(max_diff_bytes=1_000_000)
    assert changes.diff == "" and changes.diff_bytes is None and changes.diff_omitted
    config = parse_repo_config("limits:\n  max_file_bytes: 1000000\n  max_diff_bytes: 1000000\n")
    verdict = await evaluate_diff(changes, config)
    assert not verdict.allowed
    assert [(d["rule"], d["path"]) for d in verdict.decisions] == [
        ("limits.max_file_bytes", "flood.bin"),
        ("limits.max_diff_bytes", None),
    ]
    assert "flood.bin (limits.max_file_bytes): binary file of 3.0 MB" in verdict.summary
    assert GH[:8] not in verdict.summary  # refused on size: the token was never scanned for

    # text that adds little but makes a large diff is read only up to the limit
    (ws.path / "flood.bin").unlink()
    (ws.path / "data.txt").write_text("ROW\n" * 750)  # same size, every line changed
    changes = await ws.changes(max_diff_bytes=5000)
    assert changes.grown_bytes < 5000 < (changes.diff_bytes or 0) and changes.diff == ""
    verdict = await evaluate_diff(changes, parse_repo_config("limits:\n  max_diff_bytes: 5000\n"))
    assert [d["rule"] for d in verdict.decisions] == ["limits.max_diff_bytes"]


async def test_scanning_a_large_allowed_diff_leaves_the_event_loop_free(root: Path) -> None:
    ws = await workspace(root)
    lines = [f"value_{i} = compute({i}, 'some text to scan on this line')\n" for i in range(60_000)]
    (ws.path / "big.py").write_text("".join(lines) + f'TOKEN = "{GH}"\n')
    for part in range(1, 4):  # enough text that the scan takes a while even when it is quick
        (ws.path / f"big{part}.py").write_text("".join(lines))
    changes = await ws.changes(max_diff_bytes=20_000_000)
    assert changes.diff_bytes is not None and changes.diff_bytes > 12_000_000
    config = parse_repo_config("limits:\n  max_diff_lines: 300000\n")
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    verdict = await evaluate_diff(changes, config)
    took = time.monotonic() - started
    ticking.cancel()
    assert [(d["rule"], d["path"]) for d in verdict.decisions] == [
        ("secrets.github_token", "big.py")
    ]
    assert took > 0.5, "the scan was too quick to show anything; make the diff larger"
    assert len(gaps) > took / 0.1  # the loop kept turning while the scan ran
    assert max(gaps) < 0.25, max(gaps)


async def test_names_that_differ_in_a_byte_that_is_not_utf8_keep_their_own_counts(
    root: Path,
) -> None:
    """Decoded with ``errors="replace"``, ``x\\xfe`` and ``x\\xff`` were one key: the long
    file and the big one were judged by their small twins' line count and size."""
    ws = await workspace(root)
    (ws.path / os.fsdecode(b"notes\xfe.txt")).write_text("line\n" * 300)
    (ws.path / os.fsdecode(b"notes\xff.txt")).write_text("one\n")
    (ws.path / os.fsdecode(b"model\xfe.bin")).write_bytes(b"\0" * 9000)
    (ws.path / os.fsdecode(b"model\xff.bin")).write_bytes(b"\0tiny")
    changes = await ws.changes()
    counts = {f.path: (f.added, f.size, f.binary) for f in changes.files}
    assert counts == {
        os.fsdecode(b"notes\xfe.txt"): (300, 1500, False),
        os.fsdecode(b"notes\xff.txt"): (1, 4, False),
        os.fsdecode(b"model\xfe.bin"): (None, 9000, True),
        os.fsdecode(b"model\xff.bin"): (None, 5, True),
    }
    config = parse_repo_config("limits:\n  max_diff_lines: 100\n  max_file_bytes: 5000\n")
    verdict = await evaluate_diff(changes, config)
    assert [(d["rule"], d["path"]) for d in verdict.decisions] == [
        ("limits.max_diff_lines", None),
        ("limits.max_file_bytes", '"model\\376.bin"'),  # recorded as git quotes it
    ]
    assert '`"model\\376.bin"` (limits.max_file_bytes)' in verdict.summary
    assert "301 lines added or removed; the limit is 100 (limits.max_diff_lines)" in verdict.summary


async def test_a_token_in_a_binary_file_is_found(root: Path) -> None:
    """git shows a file with a NUL byte as "Binary files differ": its added content is read
    from the scratch repository's objects and scanned."""
    ws = await workspace(root)
    (ws.path / "deploy.json").write_bytes(b'{"token": "' + GH.encode() + b'"}\n\0')
    (ws.path / "logo.png").write_bytes(b"\x89PNG\0" + b"\1" * 1995 + b"\nkey " + GH.encode())
    changes = await ws.changes(max_diff_bytes=1_000_000)
    assert "Binary files /dev/null and b/deploy.json differ" in changes.diff
    assert {b.path: b.old is None for b in changes.binaries} == {
        "deploy.json": True,
        "logo.png": False,
    }
    verdict = await evaluate_diff(changes, parse_repo_config(""))
    assert not verdict.allowed
    assert [(d["rule"], d["path"]) for d in verdict.decisions] == [
        ("secrets.github_token", "deploy.json"),
        ("secrets.github_token", "logo.png"),
    ]
    assert "logo.png (secrets.github_token): line 2 adds what looks like a GitHub token" in (
        verdict.summary
    )
    assert GH not in verdict.summary
    # the content to scan counts against limits.max_diff_bytes like the diff itself: past it,
    # nothing is read and the change is refused on size
    small = await ws.changes(max_diff_bytes=2000)
    assert small.binaries == () and (small.scan_bytes or 0) > 2000
    verdict = await evaluate_diff(small, parse_repo_config("limits:\n  max_diff_bytes: 2000\n"))
    assert [d["rule"] for d in verdict.decisions] == ["limits.max_diff_bytes"]
