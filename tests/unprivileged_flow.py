"""What a worker does on the host with a run's workspace, as one script for
``test_unprivileged_worker.py`` to run under ``setpriv`` as an unprivileged user.

``python -m tests.unprivileged_flow ROOT OWNER_UID OWNER_GID`` prints one JSON object: how far
it got (``step``), the error that stopped it, and what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sandboxes.git import GitIdentity, run_git
from sandboxes.workspace import WorkspaceManager


def _capabilities(status: str) -> dict[str, int]:
    held = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in {"CapEff", "CapPrm", "CapAmb"}:
            held[key] = int(value.strip(), 16)
    return held


async def flow(root: Path, owner: tuple[int, int], report: dict[str, Any]) -> None:
    report["worker"] = {"uid": os.getuid(), "groups": os.getgroups()}
    report["worker"]["caps"] = _capabilities(Path("/proc/self/status").read_text())
    report["step"] = "docker"
    import docker

    client = docker.from_env(timeout=10)
    report["docker"] = client.ping()
    client.close()

    report["step"] = "prepare"  # clone, chown to the owner, check out as the owner
    manager = WorkspaceManager(root / "work", identity=GitIdentity("bosun", "bosun@example.com"))
    workspace = await manager.prepare(
        run_id="r1",
        repo="acme/widgets",
        remote_url=str(root / "remote.git"),
        branch="bosun/1-r1",
        base_ref="main",
        owner=owner,
    )
    report["workspace_owner"] = workspace.path.stat().st_uid
    seen = await run_git(
        ["-c", "alias.caps=!cat /proc/self/status", "caps"], cwd=workspace.path, as_user=owner
    )
    report["checkout_caps"] = _capabilities(seen.text)  # what git as the owner holds

    report["step"] = "agent"  # what the sandbox user writes
    script = "echo changed > README.md && mkdir -p deep && echo new > deep/new.txt"
    subprocess.run(
        ["sh", "-c", script],
        cwd=workspace.path,
        user=owner[0],
        group=owner[1],
        extra_groups=[],
        check=True,
    )

    report["step"] = "drop"  # the tree walker's own privilege drop, observed
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sandboxes.treewalk import drop_privileges; "
            "drop_privileges(int(sys.argv[1]), int(sys.argv[2])); "
            "print(open('/proc/self/status').read())",
            str(owner[0]),
            str(owner[1]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report["walker_caps"] = _capabilities(probe.stdout)

    report["step"] = "snapshot"  # the work tree read as data, as the owner
    snapshot = await workspace.snapshot()
    report["snapshot"] = sorted(snapshot.files)

    report["step"] = "kill"  # a timeout or /cancel kills a child running as the owner
    child = subprocess.Popen(
        ["sleep", "60"],
        user=owner[0],
        group=owner[1],
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child.kill()
    except PermissionError:
        report["leftover_pid"] = child.pid  # the test removes it
        raise
    child.wait()

    report["step"] = "cleanup"
    await manager.cleanup("r1")
    report["cleaned"] = not manager.run_dir("r1").exists()
    report["step"] = "done"


def main() -> int:
    root, uid, gid = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    report: dict[str, Any] = {}
    try:
        asyncio.run(flow(root, (uid, gid), report))
    except Exception as exc:  # noqa: BLE001 -- reported to the test, which judges it
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
