"""The workspace disk quota (issue 7, SPEC §6): what counts as used, and one call when the
workspace grows past its limit. The pipeline's use of it is tested end to end in
``test_security_limits.py::test_disk_flood_fills_tmp_and_the_workspace_quota_stops_the_agent``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sandboxes.quota import MAX_DEPTH, MIN_CHARGE, Unmeasurable, WorkspaceQuota, disk_usage

MIB = 1 << 20


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(os.urandom(size))
        handle.flush()
        os.fsync(handle.fileno())


def test_usage_counts_blocks_once_and_never_follows_links(tmp_path: Path) -> None:
    write(tmp_path / "a" / "b" / "data.bin", 2 * MIB)
    used = disk_usage(tmp_path)
    assert 2 * MIB <= used < 2 * MIB + 64 * 1024
    os.link(tmp_path / "a" / "b" / "data.bin", tmp_path / "again.bin")  # a hard link is free
    os.symlink("/usr", tmp_path / "usr")  # a symlink counts as itself, not what it points to
    assert disk_usage(tmp_path) - used == MIN_CHARGE
    with (tmp_path / "sparse.bin").open("wb") as handle:  # 1 GiB apparent, nothing allocated
        handle.truncate(1 << 30)
    assert disk_usage(tmp_path) - used == 2 * MIN_CHARGE
    assert disk_usage(tmp_path / "missing") == 0


def test_empty_files_count_what_they_cost_the_host(tmp_path: Path) -> None:
    """An empty file takes an inode and a directory entry: 2,000 of them count 8 MB."""
    before = disk_usage(tmp_path)
    for index in range(2000):
        (tmp_path / f"e{index}").touch()
    assert disk_usage(tmp_path) - before >= 2000 * MIN_CHARGE


def test_folders_too_deep_to_measure_fail_closed(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(MAX_DEPTH + 5):  # deeper than any path a name could spell
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    try:
        disk_usage(tmp_path)
    except Unmeasurable as exc:
        assert "deeper than" in str(exc)
    else:
        raise AssertionError("a tree deeper than MAX_DEPTH was measured")


async def test_growth_past_the_limit_is_reported_once(tmp_path: Path) -> None:
    write(tmp_path / "repo.bin", 3 * MIB)  # already there: the limit is on growth
    calls: list[int] = []

    async def exceeded(grown: int) -> None:
        calls.append(grown)

    async with WorkspaceQuota(tmp_path, 2 * MIB, exceeded, interval=0.05) as quota:
        await asyncio.sleep(0.2)
        assert calls == [] and quota.exceeded is None
        write(tmp_path / "flood" / "1.bin", MIB)
        await asyncio.sleep(0.2)
        assert calls == []
        write(tmp_path / "flood" / "2.bin", 2 * MIB)
        for _ in range(40):
            if calls:
                break
            await asyncio.sleep(0.05)
        write(tmp_path / "flood" / "3.bin", MIB)
        await asyncio.sleep(0.2)
    assert len(calls) == 1 and 3 * MIB <= calls[0] < 4 * MIB
    assert quota.exceeded == calls[0]
    assert quota.reason().startswith("the workspace grew past 2 MB (disk limit")
