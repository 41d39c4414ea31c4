"""The documented unprivileged worker (docs/security.md): a user that is not root, in the docker
group, with the ambient capabilities CAP_CHOWN, CAP_DAC_READ_SEARCH, CAP_SETUID, CAP_SETGID and
CAP_KILL, can do everything a worker does on the host with a run's workspace when the engine
remaps user namespaces: prepare it for the remapped owner, read the agent's work as that owner
(holding no capability then), kill the owner's processes, clean up. Each capability in the set
is needed: without it, the step that uses it fails."""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import docker_client, missing

WORKER_UID = 10001  # the service image's `bosun` user
OWNER = (101000, 101000)  # the sandbox user (uid 1000) as the engine's remapping shows it
CAPABILITIES = ("chown", "dac_read_search", "setuid", "setgid", "kill")
ROOT = Path(__file__).resolve().parent.parent


def sh(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def upstream() -> Iterator[Path]:
    """A folder the worker user owns, with a repository to clone (not under pytest's tmp_path:
    the sandbox's uid must be able to reach the workspace, as Docker's bind mount needs)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        missing("root and setpriv", "run the tests as root (util-linux provides setpriv)")
    root = Path(tempfile.mkdtemp(prefix="bosun-unprivileged-", dir="/tmp"))
    try:
        root.chmod(0o755)
        sh("git", "init", "--quiet", "--bare", "-b", "main", str(root / "remote.git"))
        dev = root / "dev"
        sh("git", "init", "--quiet", "-b", "main", str(dev))
        (dev / "README.md").write_text("hello\n")
        sh("git", "add", "-A", cwd=dev)
        sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=dev)
        sh("git", "push", "--quiet", str(root / "remote.git"), "main", cwd=dev)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames, "."]:
                os.lchown(Path(dirpath) / name, WORKER_UID, WORKER_UID)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_flow(root: Path, capabilities: tuple[str, ...]) -> dict[str, Any]:
    docker_gid = grp.getgrnam("docker").gr_gid
    caps = ",".join(f"+{c}" for c in capabilities)
    argv = [
        "setpriv",
        f"--reuid={WORKER_UID}",
        f"--regid={WORKER_UID}",
        f"--groups={docker_gid}",
        f"--inh-caps=-all,{caps}",
        f"--ambient-caps=-all,{caps}",
        f"--bounding-set=-all,{caps}",
        "--",
        sys.executable,
        "-m",
        "tests.unprivileged_flow",
        str(root),
        *map(str, OWNER),
    ]
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if "leftover_pid" in report:
        os.kill(report["leftover_pid"], signal.SIGKILL)
    return report


def test_unprivileged_worker_with_the_documented_capabilities(upstream: Path) -> None:
    docker_client()
    report = run_flow(upstream, CAPABILITIES)
    assert report["step"] == "done", report
    assert report["worker"]["uid"] == WORKER_UID
    assert report["worker"]["caps"]["CapEff"] != 0
    assert report["docker"] is True  # through the docker group
    assert report["workspace_owner"] == OWNER[0]
    assert report["snapshot"] == ["README.md", "deep/new.txt"]
    assert report["walker_caps"] == {"CapEff": 0, "CapPrm": 0, "CapAmb": 0}
    assert report["checkout_caps"] == {"CapEff": 0, "CapPrm": 0, "CapAmb": 0}
    assert report["cleaned"] is True


@pytest.mark.parametrize(
    ("without", "fails_at"),
    [("chown", "prepare"), ("setuid", "prepare"), ("setgid", "prepare"), ("kill", "kill")],
)
def test_each_capability_is_needed(upstream: Path, without: str, fails_at: str) -> None:
    docker_client()
    report = run_flow(upstream, tuple(c for c in CAPABILITIES if c != without))
    assert report["step"] == fails_at, report
    assert "error" in report
