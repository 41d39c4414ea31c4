"""Where the gateway's socket and the forwarder live, on the host and inside the sandbox.

Host ``<run_dir>/gateway/`` (root-owned, group = the sandbox user's host gid, mode 0750)::

    gateway.sock    the run's gateway (mode 0660: the sandbox user may connect)
    forwarder.py    copy of sandboxes/forwarder/forwarder.py (mode 0644)

is bind-mounted read-only at ``/bosun-gw`` and the agent is started through the forwarder::

    python3 -I /bosun-gw/forwarder.py --port 8788 --socket /bosun-gw/gateway.sock -- <agent argv>
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import sandboxes
from bot.agents.gateway.errors import SocketSetupError
from sandboxes.spec import BindMount

GATEWAY_MOUNT = "/bosun-gw"
"""Where the socket directory appears inside the sandbox."""
SOCKET_NAME = "gateway.sock"
FORWARDER_NAME = "forwarder.py"
FORWARDER_PORT = 8788
"""The loopback port the forwarder listens on inside the sandbox."""
FORWARDER_SOURCE = Path(sandboxes.__file__).parent / "forwarder" / FORWARDER_NAME


def socket_dir(run_dir: Path) -> Path:
    """The run's gateway directory on the host."""
    return run_dir / "gateway"


def prepare_dir(directory: Path, sandbox_gid: int | None) -> None:
    """Create the socket directory and put the forwarder in it.

    With ``sandbox_gid`` (the host gid the sandbox user maps to) the directory is
    ``root:<gid> 0750``; without one it is private to the worker (``0700``)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o750 if sandbox_gid is not None else 0o700)
        if sandbox_gid is not None:
            os.chown(directory, -1, sandbox_gid)
        target = directory / FORWARDER_NAME
        shutil.copyfile(FORWARDER_SOURCE, target)
        os.chmod(target, 0o644)
    except OSError as exc:
        raise SocketSetupError(
            f"cannot prepare the gateway directory {directory}: {exc} (the worker needs root, "
            "or membership of the sandbox user's group, to share the socket)"
        ) from exc


def share_socket(path: Path, sandbox_gid: int | None) -> None:
    """Let the sandbox user (and nobody else but the owner) connect to the socket."""
    try:
        if sandbox_gid is None:
            os.chmod(path, 0o600)
        else:
            os.chown(path, -1, sandbox_gid)
            os.chmod(path, 0o660)
    except OSError as exc:
        raise SocketSetupError(f"cannot hand {path} to gid {sandbox_gid}: {exc}") from exc


def sandbox_mount(directory: Path) -> BindMount:
    """The read-only bind mount of the socket directory at ``/bosun-gw``."""
    return BindMount(source=directory.resolve(), target=GATEWAY_MOUNT, read_only=True)


def forwarder_argv(agent_argv: Sequence[str], port: int = FORWARDER_PORT) -> list[str]:
    """The argv that starts the forwarder, which then runs the agent as its child and exits with
    the agent's status."""
    return [
        "python3",
        "-I",
        f"{GATEWAY_MOUNT}/{FORWARDER_NAME}",
        "--port",
        str(port),
        "--socket",
        f"{GATEWAY_MOUNT}/{SOCKET_NAME}",
        "--",
        *agent_argv,
    ]
