"""User-namespace remapping and workspace ownership.

With ``userns-remap`` the engine runs container uid ``N`` as host uid ``start + N``, where
``start`` is the remap user's line in ``/etc/subuid`` (``/etc/subgid`` for groups). A workspace
must be owned by that host uid for the sandbox user to write it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sandboxes.errors import WorkspaceError

DEFAULT_REMAP_USER = "dockremap"


@dataclass(frozen=True, slots=True)
class IdRange:
    start: int
    count: int


def parse_subid(text: str, user: str) -> IdRange | None:
    """The first ``user:start:count`` range in a subuid/subgid file's text."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
            return IdRange(int(parts[1]), int(parts[2]))
    return None


def map_id(container_id: int, ranges: IdRange | None) -> int:
    """The host id a container id maps to (unchanged without remapping)."""
    if ranges is None:
        return container_id
    if not 0 <= container_id < ranges.count:
        raise WorkspaceError(f"id {container_id} is outside the remapped range {ranges}")
    return ranges.start + container_id


def host_ids(
    uid: int,
    gid: int,
    *,
    remapped: bool,
    remap_user: str = DEFAULT_REMAP_USER,
    subuid: Path = Path("/etc/subuid"),
    subgid: Path = Path("/etc/subgid"),
) -> tuple[int, int]:
    """Host ``(uid, gid)`` that container ``uid:gid`` runs as. ``remapped`` says whether the
    engine uses user-namespace remapping (``DockerBackend.userns_remapped`` tells)."""
    if not remapped:
        return uid, gid
    try:
        uids = parse_subid(subuid.read_text(), remap_user)
        gids = parse_subid(subgid.read_text(), remap_user)
    except OSError as exc:
        raise WorkspaceError(f"cannot read {subuid}/{subgid} for userns remapping: {exc}") from exc
    if uids is None or gids is None:
        raise WorkspaceError(
            f"userns remapping is on but {subuid} or {subgid} has no '{remap_user}' line; "
            "set the remap user the engine uses (daemon.json 'userns-remap')"
        )
    return map_id(uid, uids), map_id(gid, gids)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything below it to ``uid:gid`` without following symlinks.

    Regular files under ``.git/objects`` are left alone: they may be hardlinks shared with the
    repository mirror, and handing their inodes to the sandbox user would let one run rewrite
    objects every later run reads. Git never modifies an object file in place, so the agent only
    needs the object directories, which are handed over."""
    try:
        os.lchown(root, uid, gid)
        for dirpath, dirnames, filenames in os.walk(root):
            current = Path(dirpath)
            in_objects = _under_objects(root, current)
            for name in dirnames:
                os.lchown(current / name, uid, gid)
            for name in filenames:
                path = current / name
                if in_objects and stat.S_ISREG(path.lstat().st_mode):
                    continue
                os.lchown(path, uid, gid)
    except PermissionError as exc:
        raise WorkspaceError(
            f"cannot chown {root} to {uid}:{gid} ({exc}); the worker needs root (or CAP_CHOWN) "
            "when the engine remaps user namespaces"
        ) from exc


def _under_objects(root: Path, path: Path) -> bool:
    parts = path.relative_to(root).parts
    return len(parts) >= 2 and parts[0] == ".git" and parts[1] == "objects"
