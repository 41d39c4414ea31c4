"""Per-repository dependency caches (pip, uv, npm, cargo, go), written only by a run's setup.

On the host (root-owned folders, ``0700``; one folder per repository, never shared)::

    <root>/<repository key>/current -> gen-<run id>   the published cache (a symlink)
    <root>/<repository key>/gen-<run id>/             {pip,uv,npm,cargo,go/mod}
    <root>/<repository key>/lock                      flock: publishing excludes staging

A run's sandbox binds ``<run folder>/cache`` at ``/bosun-cache`` (a folder of the run, so warm
pooled sandboxes bind it like the others). Before setup, ``stage`` fills it from the published
cache by hard links: folders are new and owned by the sandbox user's host uid, every file is a
link to a root-owned file that is not group- or world-writable, so setup can add, replace and
delete entries of its own copy but never change a file another run reads. After setup, ``seal``
hands the whole copy to root and clears group and world write, so the agent and the gates read
it but cannot write it, and ``publish`` links the sealed copy into a new generation and points
``current`` at it. Runs of other repositories never see it: a run binds only its own copy of
its own repository's cache.

Files a tool opens for writing in place are its lock files, which are empty, and git's
``FETCH_HEAD`` and reflogs in a cached repository (cargo's registry index, its git
dependencies): ``stage`` gives the run new files of its own with the same bytes instead of
links (uv opens ``.lock`` read-write and fails on a read-only one, cargo's second fetch failed
on ``FETCH_HEAD``), so nothing is shared that a tool must write. uv cannot work on a
read-only cache at all (it locks and writes temporary files in every folder it reads), and
cargo's git repositories (its registry index, its git dependencies) are not opened unless the
sandbox user owns their folders, so after ``publish`` those folders of the run's copy
(``REOPENED_DIRS``) are handed back by ``reopen``: its folders are the sandbox user's again and
its lock files (and git's ``FETCH_HEAD`` and reflogs) new, its other files stay the root-owned
links the published generation shares —
the tools can add and replace entries of this run's copy in the later phases, never change a
file of the repository's cache, and nothing of it is published.

The host never follows a link in a cache: walks use ``os.walk`` without following links,
ownership and modes are changed through a descriptor opened with ``O_NOFOLLOW``, and a symlink
or FIFO the setup left is carried over as what it is (links are hard-linked, never read).
Setup's leftover processes are killed before ``seal``, and ``seal`` itself walks through
descriptors, each entry opened relative to its folder, so even a process still running could
not send it outside the copy; once sealed, nothing in the copy is the sandbox's to change, so
``publish`` reads a tree that no longer moves.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from sandboxes.errors import SandboxError
from sandboxes.quota import disk_usage

CACHE_MOUNT = "/bosun-cache"
RUN_FOLDER = "cache"
"""The run's copy, in its run folder."""
ECOSYSTEM_DIRS = ("pip", "uv", "npm", "cargo", "go/mod")
REOPENED_DIRS = ("uv", "cargo/registry/index", "cargo/git")
"""Cache folders a tool cannot read unless the sandbox user owns them, handed back after setup
(``Caches.reopen``): uv fails on a read-only cache outright; cargo reads a read-only
``CARGO_HOME`` (it falls back to a shared lock) but opens its registry index and git
dependencies as git repositories, which libgit2 (1.5, cargo 0.66) refuses to open when
another user owns their folders. pip, npm, Go and the rest of cargo's folder stay sealed."""
CURRENT = "current"
LOCK = "lock"
_GEN = re.compile(r"^gen-[A-Za-z0-9_.-]+$")
STALE_STAGING_SECONDS = 3600.0


class CacheError(SandboxError):
    """A dependency cache could not be prepared or kept."""


def cache_env() -> dict[str, str]:
    """Where each tool keeps its cache inside the sandbox (the same in every phase; only
    whether the folder is writable changes)."""
    return {
        "PIP_CACHE_DIR": f"{CACHE_MOUNT}/pip",
        "UV_CACHE_DIR": f"{CACHE_MOUNT}/uv",
        "npm_config_cache": f"{CACHE_MOUNT}/npm",
        "CARGO_HOME": f"{CACHE_MOUNT}/cargo",
        "GOMODCACHE": f"{CACHE_MOUNT}/go/mod",
        "GOCACHE": "/tmp/go-build",  # noqa: S108 - Go writes its build cache in every phase
        "GOFLAGS": "-modcacherw",
        "UV_LINK_MODE": "copy",  # the cache and the environment are different mounts
    }


def repository_key(repository_id: int, full_name: str) -> str:
    """A folder name that is one repository's alone (ids are unique; the name helps people)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", full_name)[:60].strip("._") or "repo"
    digest = hashlib.sha256(f"{repository_id}:{full_name}".encode()).hexdigest()[:8]
    return f"{repository_id}-{readable}-{digest}"


class Caches:
    """All repositories' caches under ``root``."""

    def __init__(self, root: Path, *, max_bytes: int, max_bytes_per_repository: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_bytes_per_repository = max_bytes_per_repository

    def repository(self, key: str) -> Path:
        if "/" in key or key in {"", ".", ".."} or key.startswith("."):
            raise CacheError(f"bad cache key {key!r}")
        return self.root / key

    def stage(self, key: str, target: Path, owner: tuple[int, int]) -> bool:
        """Fill ``target`` (the run's empty ``cache`` folder) from the repository's published
        cache; returns whether there was one. Folders go to ``owner`` (the sandbox user's host
        ids), files stay links to the published, root-owned ones (but those a tool writes in
        place: ``_written_in_place``)."""
        repo = self.repository(key)
        try:
            for folder in (self.root, repo):
                folder.mkdir(exist_ok=True, parents=True)
                os.chmod(folder, 0o700)
            target.mkdir(exist_ok=True)
            fresh: list[Path] = []
            with _locked(repo, fcntl.LOCK_SH):
                published = _current(repo)
                if published is not None:
                    fresh = _link_tree(published, target, fresh_empty=True)
                    os.utime(published)  # last used: eviction goes by this
            for name in ECOSYSTEM_DIRS:
                (target / name).mkdir(parents=True, exist_ok=True)
            for folder in [target, *_folders(target)]:
                _own(folder, owner, 0o755)
            for path in fresh:
                _own(path, owner, None)
        except OSError as exc:
            raise CacheError(f"cannot prepare the dependency cache of {key}: {exc}") from exc
        return published is not None

    def seal(self, target: Path) -> None:
        """Make the run's copy read-only to the sandbox: everything root's, nothing group- or
        world-writable, files readable. Walked top down through descriptors, each entry opened
        relative to its folder with ``O_NOFOLLOW``: a folder swapped for a link mid-walk (were
        a process of the sandbox still running) is never followed, and each folder is root's
        before what is in it is read."""
        try:
            top = os.open(target, _FOLDER_FLAGS)
        except OSError as exc:
            raise CacheError(f"cannot seal the dependency cache {target}: {exc}") from exc
        try:
            _seal_folder(top, depth=0)
        except OSError as exc:
            raise CacheError(f"cannot seal the dependency cache {target}: {exc}") from exc
        finally:
            os.close(top)

    def reopen(self, target: Path, owner: tuple[int, int]) -> None:
        """Hand the ``REOPENED_DIRS`` of the sealed, published copy back to ``owner`` for the
        later phases: folders theirs again (``0755``), every empty file (a lock) replaced by a
        new one of theirs; files with content stay root's, shared with the published
        generation, so a tool can replace them in this copy but never change them. Nothing of
        the sandbox runs meanwhile (setup's processes are gone, the agent not started)."""
        try:
            for name in REOPENED_DIRS:
                top = _real_folder(target, name)
                if top is None:
                    continue
                folders = [top, *_folders(top)]
                git_dirs = {folder for folder in folders if _is_git_dir(folder)}
                for folder in folders:
                    _own(folder, owner, 0o755)
                    for entry in list(os.scandir(folder)):
                        path = Path(entry.path)
                        info = entry.stat(follow_symlinks=False)
                        if _written_in_place(path, info, git_dirs):
                            source = _open_regular(path)
                            try:
                                os.unlink(path)  # the open descriptor keeps the bytes
                                _own(_new_file(path, 0o644, source), owner, None)
                            finally:
                                os.close(source)
        except OSError as exc:
            raise CacheError(f"cannot reopen the dependency cache {target}: {exc}") from exc

    def publish(self, key: str, target: Path, run_id: str) -> int:
        """Make the sealed copy the repository's cache, unless it is larger than a repository
        may keep; returns its size in bytes. Earlier generations are removed."""
        size = disk_usage(target)
        if size > self.max_bytes_per_repository:
            return size
        repo = self.repository(key)
        name = f"gen-{run_id}"
        if not _GEN.match(name):
            raise CacheError(f"bad run id {run_id!r}")
        try:
            staging = repo / f".{name}"
            _remove(staging)
            _link_tree(target, staging)
            with _locked(repo, fcntl.LOCK_EX):
                _remove(repo / name)
                os.rename(staging, repo / name)
                link = repo / f".{CURRENT}-{run_id}"
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                os.symlink(name, link)
                os.replace(link, repo / CURRENT)
                stale = time.time() - STALE_STAGING_SECONDS
                for entry in repo.iterdir():
                    if _GEN.match(entry.name) and entry.name != name:
                        _remove(entry)
                    elif entry.name.startswith(".gen-") and entry.lstat().st_mtime < stale:
                        _remove(entry)  # a worker died while publishing
        except OSError as exc:
            raise CacheError(f"cannot keep the dependency cache of {key}: {exc}") from exc
        return size

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove the least recently used repositories' caches until all fit in
        ``max_bytes`` (never ``keep``, the one the caller uses). Returns the removed keys."""
        sizes = self.sizes()
        total = sum(size for size, _ in sizes.values())
        removed: list[str] = []
        for key, (size, _used) in sorted(sizes.items(), key=lambda item: item[1][1]):
            if total <= self.max_bytes:
                break
            if key == keep or size == 0:
                continue
            repo = self.repository(key)
            with _locked(repo, fcntl.LOCK_EX):
                published = _current(repo)
                if published is not None:
                    _remove(published)
            total -= size
            removed.append(key)
        return removed

    def sizes(self) -> dict[str, tuple[int, float]]:
        """Each repository's published cache: ``(bytes, last used as a timestamp)``."""
        found: dict[str, tuple[int, float]] = {}
        if not self.root.is_dir():
            return found
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            published = _current(entry)
            if published is None:
                found[entry.name] = (0, 0.0)
                continue
            found[entry.name] = (disk_usage(published), published.lstat().st_mtime)
        return found


def _current(repo: Path) -> Path | None:
    try:
        target = os.readlink(repo / CURRENT)
    except OSError:
        return None
    path = repo / target
    if not _GEN.match(target) or path.is_symlink() or not path.is_dir():
        return None
    return path


@contextlib.contextmanager
def _locked(repo: Path, how: int) -> Iterator[None]:
    fd = os.open(repo / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 256


def _seal_fd(fd: int) -> None:
    info = os.fstat(fd)
    os.fchown(fd, 0, 0)
    mode = stat.S_IMODE(info.st_mode) & ~0o7022
    if stat.S_ISDIR(info.st_mode):
        mode |= 0o755
    elif stat.S_ISREG(info.st_mode):
        mode |= 0o444  # tools write their cache files 0600; every later run reads them
    os.fchmod(fd, mode)


def _seal_folder(fd: int, depth: int) -> None:
    """Seal the folder open at ``fd``, then everything in it."""
    if depth > MAX_DEPTH:
        raise OSError(errno.ELOOP, "folders nested too deep")
    _seal_fd(fd)
    for name in os.listdir(fd):
        try:
            child = os.open(name, _ENTRY_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):  # a link, a socket
                os.chown(name, 0, 0, dir_fd=fd, follow_symlinks=False)
                continue
            if exc.errno == errno.ENOENT:
                continue
            raise
        try:
            if stat.S_ISDIR(os.fstat(child).st_mode):
                _seal_folder(child, depth + 1)
            else:
                _seal_fd(child)
        finally:
            os.close(child)


def _own(path: Path, owner: tuple[int, int], folder_mode: int | None) -> None:
    """``lchown`` ``path``, clear its group/world write and set-id bits and make a file readable
    to all, through a descriptor that cannot be a followed link (a symlink or socket only
    changes owner)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
            os.lchown(path, *owner)
            return
        raise
    try:
        info = os.fstat(fd)
        os.fchown(fd, *owner)
        mode = stat.S_IMODE(info.st_mode) & ~0o7022
        if stat.S_ISDIR(info.st_mode):
            mode = folder_mode if folder_mode is not None else mode | 0o755
        elif stat.S_ISREG(info.st_mode):
            mode |= 0o444  # tools write their cache files 0600; every later run reads them
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _real_folder(root: Path, name: str) -> Path | None:
    """``root / name`` when it is a folder reached through folders only (no component a link
    the sandbox left: the host would follow it), else ``None``."""
    path = root
    for part in name.split("/"):
        path = path / part
        try:
            if not stat.S_ISDIR(path.lstat().st_mode):
                return None
        except FileNotFoundError:
            return None
    return path


def _folders(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        base = Path(dirpath)
        out += [base / name for name in dirnames if not (base / name).is_symlink()]
    return out


def _new_file(path: Path, mode: int, source: int | None = None) -> Path:
    """A new file at ``path`` (never opened through a link), empty or with the bytes read from
    the descriptor ``source``, streamed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        while source is not None and (chunk := os.read(source, 1 << 20)):
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
    finally:
        os.close(fd)
    return path


def _open_regular(path: Path) -> int:
    """A descriptor to read the regular file ``path``, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


def _is_git_dir(folder: Path) -> bool:
    """A git repository's own folder (``.git``, or a bare repository): ``HEAD`` and
    ``objects/``, neither a link."""
    try:
        head, objects = (folder / "HEAD").lstat(), (folder / "objects").lstat()
    except OSError:
        return False
    return stat.S_ISREG(head.st_mode) and stat.S_ISDIR(objects.st_mode)


GIT_COPY_LIMIT = 1 << 20
"""The largest git file a run gets its own copy of (``FETCH_HEAD`` and reflogs are a few
lines each); a larger one stays a link, and git fails to write it in that run only."""


def _written_in_place(path: Path, info: os.stat_result, git_dirs: set[Path]) -> bool:
    """Whether a tool opens ``path`` (a cache file) for writing where it is, so that the run
    needs a file of its own rather than a link to the published one: an empty file (a lock:
    uv's, cargo's ``.package-cache``), or what git writes in place in a repository's folder,
    ``FETCH_HEAD`` and the reflogs under ``logs/`` (git and libgit2 replace every other file,
    refs, ``config``, packs, by writing a new one and renaming it)."""
    if not stat.S_ISREG(info.st_mode):
        return False
    if info.st_size == 0:
        return True
    if info.st_size > GIT_COPY_LIMIT:
        return False
    for parent in path.parents:
        if parent in git_dirs:
            inside = path.relative_to(parent).parts
            return inside == ("FETCH_HEAD",) or inside[0] == "logs"
    return False


def _link_tree(source: Path, target: Path, *, fresh_empty: bool = False) -> list[Path]:
    """New folders in ``target`` mirroring ``source``, with a hard link to every other entry
    (a copy where the two are on different filesystems). With ``fresh_empty`` a file a tool
    writes in place (``_written_in_place``: a lock, git's ``FETCH_HEAD``…) is a new file
    with the same bytes instead of a link; those are returned."""
    fresh: list[Path] = []
    git_dirs: set[Path] = set()
    target.mkdir(exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        base = Path(dirpath)
        if fresh_empty and "HEAD" in filenames and _is_git_dir(base):
            git_dirs.add(base)
        out = target / base.relative_to(source)
        for name in list(dirnames):
            if (base / name).is_symlink():  # os.walk lists a link to a folder as a folder
                dirnames.remove(name)
                filenames.append(name)
                continue
            (out / name).mkdir(exist_ok=True)
        for name in filenames:
            src, dst = base / name, out / name
            if fresh_empty:
                info = src.lstat()
                if _written_in_place(src, info, git_dirs):
                    mode = stat.S_IMODE(info.st_mode) & 0o755 | 0o644
                    original = _open_regular(src)
                    try:
                        with contextlib.suppress(FileExistsError):
                            fresh.append(_new_file(dst, mode, original))
                    finally:
                        os.close(original)
                    continue
            try:
                os.link(src, dst, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                elif stat.S_ISREG(src.lstat().st_mode):
                    shutil.copy2(src, dst, follow_symlinks=False)
    return fresh


def _remove(path: Path) -> None:
    """Remove ``path`` and what is below it, never following a link (the worker is root:
    read-only folders such as Go's module cache are no obstacle)."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
