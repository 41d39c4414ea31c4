"""scripts/bootstrap.sh: valid shell, idempotent (a second run is quick and changes nothing), a
check-only mode that tells what is missing, and a clear answer on systems without apt."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.services import IN_CI, missing

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "scripts/bootstrap.sh",
    "scripts/lib.sh",
    "scripts/make_base_image.sh",
    "scripts/build_service_image.sh",
    "sandboxes/images/build.sh",
    "sandboxes/images/fetch_debs.sh",
    ".ci/run",
    "scripts/run",
    "scripts/test",
]
# Lines bootstrap.sh prints only when it changes something.
ACTIONS = (
    "apt-get install",
    "starting",
    "creating",
    "requiring",
    "configuring",
    "making",
    "pip install uv",
    "docker build",
)


def bootstrap(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scripts/bootstrap.sh", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_bash_and_executable(script: str) -> None:
    path = ROOT / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if script != "scripts/lib.sh":
        assert os.access(path, os.X_OK), f"{script} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")


def test_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        missing("shellcheck", "apt-get install shellcheck (scripts/bootstrap.sh test does)")
    result = subprocess.run(
        ["shellcheck", "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_rejects_unknown_profile() -> None:
    result = bootstrap("production")
    assert result.returncode != 0
    assert "usage:" in result.stderr


def test_without_apt_says_what_to_install(tmp_path: Path) -> None:
    # A PATH with the basic tools but no apt-get/dpkg: a non-Debian system.
    for tool in ("bash", "dirname", "cat", "id", "sed", "date"):
        found = shutil.which(tool)
        assert found, tool
        (tmp_path / tool).symlink_to(found)
    result = subprocess.run(
        ["bash", "scripts/bootstrap.sh", "test"],
        cwd=ROOT,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    for needed in ("Docker Engine", "Python >= 3.11", "uv", "Redis", "PostgreSQL 15", "Chromium"):
        assert needed in result.stderr


def _check_only() -> subprocess.CompletedProcess[str]:
    result = bootstrap("test", BOSUN_BOOTSTRAP_CHECK="1")
    assert result.returncode in {0, 3}, result.stdout + result.stderr
    if result.returncode == 3:
        todo = [line for line in result.stdout.splitlines() if "missing:" in line]
        message = "; ".join(todo) + " (run scripts/bootstrap.sh test)"
        if IN_CI:
            pytest.fail(f"bootstrap left work undone: {message}", pytrace=False)
        missing("a bootstrapped machine", message)
    return result


def test_check_mode_finds_nothing_missing_after_bootstrap() -> None:
    result = _check_only()
    assert "==> missing:" not in result.stdout
    assert "ready" in result.stdout


@pytest.mark.timeout(120)
def test_second_run_is_quick_and_changes_nothing() -> None:
    _check_only()  # the machine is bootstrapped, so a real run must be a no-op
    start = time.monotonic()
    result = bootstrap("test")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60, f"second bootstrap took {elapsed:.0f} s"
    acted = [line for line in result.stdout.splitlines() if line.startswith("==> ")]
    assert not [line for line in acted if any(word in line for word in ACTIONS)], acted
    # Every step reports its wall time on stderr.
    timed = {line.split()[1] for line in result.stderr.splitlines() if line.startswith("timing:")}
    expected = {"packages", "docker", "redis-password", "redis", "postgres"}
    expected |= {"base-image", "agent-image", "python"}
    assert expected | {"total"} <= timed
    assert _check_only().returncode == 0


def test_context_hash_changes_with_the_build_context(tmp_path: Path) -> None:
    """The agent image is rebuilt exactly when its build context or base image changes."""
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(ROOT / "sandboxes/images/agent", first)
    shutil.copytree(ROOT / "sandboxes/images/agent", second)

    def tree_hash(path: Path, *extra: str) -> str:
        return subprocess.run(
            ["bash", "-c", 'source scripts/lib.sh && tree_hash "$@"', "-", str(path), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert tree_hash(first, "base1") == tree_hash(second, "base1")  # location does not matter
    assert tree_hash(first, "base1") != tree_hash(first, "base2")  # a new base image rebuilds
    with (second / "Dockerfile").open("a") as dockerfile:
        dockerfile.write("\n# changed\n")
    assert tree_hash(first, "base1") != tree_hash(second, "base1")
