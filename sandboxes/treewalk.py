"""Reading the agent's work tree as data (SPEC §6: everything the agent wrote is hostile).

The walk runs in a child process of its own (``python -m sandboxes.treewalk``), started as the
worker (root, or an unprivileged user holding ``CAP_SETUID``/``CAP_SETGID``) only to load
Python, which then drops to the workspace owner's uid and gid, and every capability, before it
opens anything the agent wrote — so the kernel, not only this code, keeps it from reading a
host file. It never runs git and never follows a symlink: every directory is opened relative to
its parent's file descriptor with ``O_NOFOLLOW``, every file with ``O_NOFOLLOW | O_NONBLOCK``
and checked with ``fstat`` to be the regular file the listing saw. What it reports is framed by
this code (the agent's bytes are only ever payloads), on stdout, for ``sandboxes.scratch`` to
import into a host-owned repository.

What it reports, for every path git would record (``.gitignore`` rules honoured with git's
semantics through ``pathspec``; tracked paths are never ignored):

- ``E``: a path whose content the base tree already has (mode and object id);
- ``B``: a new or changed regular file or symlink, followed by its bytes;
- ``N``: a note — a nested repository's ``.git`` left out, a submodule changed, a special file
  (FIFO, socket, device) skipped.

The top-level ``.git`` (the agent's own repository) is never opened. Neither is any other
``.git`` entry at any depth, or a name git would treat as one (case, trailing dots or spaces,
the 8.3 alias): those are left out and noted.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

import pathspec

from sandboxes.treeframes import (
    CHUNK,
    NOTE_NESTED_GIT,
    NOTE_OVERSIZED,
    NOTE_SPECIAL,
    NOTE_SUBMODULE,
    blob_header,
    entry_frame,
    note_frame,
)

MODE_FILE = b"100644"
MODE_EXEC = b"100755"
MODE_LINK = b"120000"
MODE_GITLINK = b"160000"
MAX_GITIGNORE_BYTES = 1 << 20
MATCH_SECONDS = 0.25
"""Longest one ``.gitignore`` match may take (an agent's pattern can backtrack for ever)."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WalkError(Exception):
    """The tree could not be read as a whole. ``limit`` names a limit it broke (a fixed word,
    never agent data): the worker turns it into a message it may publish."""

    def __init__(self, detail: str, limit: str | None = None) -> None:
        super().__init__(detail)
        self.limit = limit


class _Timeout(Exception):
    pass


@dataclass(frozen=True, slots=True)
class WalkLimits:
    """What reading one tree may cost the host."""

    max_file_bytes: int = 5_000_000
    """A new or changed file larger than this is noted and never read."""
    max_read_bytes: int = 2 << 30
    """Bytes read beyond what the base tree's files hold (hard links count each time)."""
    max_new_files: int = 10_000
    """Paths the base tree does not have (ignored ones excepted)."""
    max_path_bytes: int = 4096
    max_depth: int = 200
    seconds: float = 300.0
    """The whole walk."""

    def argv(self) -> list[str]:
        return [str(self.max_file_bytes), str(self.max_read_bytes), str(self.max_new_files),
                str(self.max_path_bytes), str(self.max_depth), str(self.seconds)]  # fmt: skip

    @classmethod
    def parse(cls, argv: list[str]) -> WalkLimits:
        file_bytes, read_bytes, new_files, path_bytes, depth = (int(a) for a in argv[:5])
        return cls(file_bytes, read_bytes, new_files, path_bytes, depth, float(argv[5]))


@dataclass(frozen=True, slots=True)
class BaseEntry:
    mode: bytes
    oid: str
    size: int = -1
    """Bytes of the blob (-1 for a submodule)."""


@dataclass
class BaseTree:
    """The tree the run started from: ``git ls-tree -r -z --full-tree`` of it."""

    entries: dict[bytes, BaseEntry] = field(default_factory=dict)
    dirs: set[bytes] = field(default_factory=set)
    """Every folder holding a tracked path (so an ignored folder still yields its tracked
    files, as in git)."""
    oids: set[str] = field(default_factory=set)
    total_bytes: int = 0

    @classmethod
    def parse(cls, listing: bytes) -> BaseTree:
        """From ``git ls-tree -r -z -l --full-tree`` (with sizes)."""
        tree = cls()
        for record in listing.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, _kind, oid, size = meta.split()
            blob_size = int(size) if size != b"-" else -1
            tree.entries[path] = BaseEntry(mode, oid.decode(), blob_size)
            tree.oids.add(oid.decode())
            tree.total_bytes += max(blob_size, 0)
            parts = path.split(b"/")
            for depth in range(1, len(parts)):
                tree.dirs.add(b"/".join(parts[:depth]))
        return tree


def is_dot_git(name: str) -> bool:
    """Whether git (on any filesystem it protects) would take ``name`` for ``.git``."""
    folded = name.casefold()
    for invisible in ("\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c",
                      "\u202d", "\u202e", "\u206a", "\u206b", "\u206c", "\u206d", "\u206e",
                      "\u206f", "\ufeff"):  # fmt: skip
        folded = folded.replace(invisible, "")  # HFS+ ignores these in names
    return folded.rstrip(". ") == ".git" or folded == "git~1"


def blob_oid(algorithm: str, size: int, chunks: Iterator[bytes]) -> str:
    digest = hashlib.new(algorithm)
    digest.update(b"blob %d\0" % size)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


class _Ignores:
    """The ``.gitignore`` files on the way down to a folder, deepest last."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, pathspec.GitIgnoreSpec]] = []

    def ignored(self, path: str, is_dir: bool) -> bool:
        if not self.stack:
            return False
        probe = path + "/" if is_dir else path
        signal.setitimer(signal.ITIMER_REAL, MATCH_SECONDS)
        try:
            for prefix, spec in reversed(self.stack):
                verdict = spec.check_file(probe[len(prefix) :]).include
                if verdict is not None:
                    return verdict
            return False
        except _Timeout:
            raise WalkError("a .gitignore pattern took too long to match", "gitignore") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


class Walker:
    """Walks ``root`` (already opened) and yields frames; see the module docstring."""

    def __init__(
        self, root_fd: int, base: BaseTree, algorithm: str, limits: WalkLimits | None = None
    ) -> None:
        self.root_fd = root_fd
        self.base = base
        self.algorithm = algorithm
        self.limits = limits or WalkLimits()
        self.ignores = _Ignores()
        self.seen_gitlinks: set[bytes] = set()
        self.new_files = 0
        self.read_budget = base.total_bytes + self.limits.max_read_bytes

    def frames(self) -> Iterator[bytes]:
        yield from self._folder(self.root_fd, "", only_tracked=False)
        for path, entry in sorted(self.base.entries.items()):
            if entry.mode == MODE_GITLINK and path not in self.seen_gitlinks:
                yield entry_frame(
                    entry.mode, entry.oid, path
                )  # an uninitialised submodule's folder

    def _folder(self, fd: int, rel: str, *, only_tracked: bool) -> Iterator[bytes]:
        if rel.count("/") > self.limits.max_depth:
            raise WalkError(f"folders nest deeper than {self.limits.max_depth}", "depth")
        names = sorted(os.listdir(fd))
        pushed = False
        if ".gitignore" in names:
            spec = self._gitignore(fd)
            if spec is not None:
                self.ignores.stack.append((rel, spec))
                pushed = True
        try:
            for name in names:
                if not is_dot_git(name):
                    yield from self._entry(fd, rel, name, only_tracked=only_tracked)
                elif rel:  # a nested repository's metadata; the top one is the agent's own
                    yield note_frame(NOTE_NESTED_GIT, os.fsencode(rel + name))
        finally:
            if pushed:
                self.ignores.stack.pop()

    def _entry(self, fd: int, rel: str, name: str, *, only_tracked: bool) -> Iterator[bytes]:
        path = rel + name
        key = os.fsencode(path)
        if len(key) > self.limits.max_path_bytes:
            raise WalkError(f"a path is longer than {self.limits.max_path_bytes} bytes", "path")
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        base = self.base.entries.get(key)
        if base is not None and base.mode == MODE_GITLINK:
            self.seen_gitlinks.add(key)
            if not (stat.S_ISDIR(info.st_mode) and self._empty(fd, name)):
                yield note_frame(NOTE_SUBMODULE, key)
            yield entry_frame(base.mode, base.oid, key)  # the submodule stays as the base has it
            return
        if stat.S_ISDIR(info.st_mode):
            tracked_below = key in self.base.dirs
            ignored = only_tracked or self.ignores.ignored(path, is_dir=True)
            if ignored and not tracked_below:
                return
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _same(child, info)
                yield from self._folder(child, path + "/", only_tracked=ignored)
            finally:
                os.close(child)
            return
        tracked = base is not None
        if not tracked and (only_tracked or self.ignores.ignored(path, is_dir=False)):
            return
        if not tracked:
            self.new_files += 1
            if self.new_files > self.limits.max_new_files:
                raise WalkError(f"more than {self.limits.max_new_files} new files", "new_files")
        if (
            stat.S_ISREG(info.st_mode)
            and info.st_size > self.limits.max_file_bytes
            and not (base is not None and base.size == info.st_size)
        ):
            yield note_frame(NOTE_OVERSIZED, key, info.st_size)  # never read
            if base is not None:
                yield entry_frame(base.mode, base.oid, key)
            return
        if stat.S_ISLNK(info.st_mode):
            target = os.fsencode(os.readlink(name, dir_fd=fd))
            yield from self._content(MODE_LINK, key, base, len(target), lambda: iter([target]))
        elif stat.S_ISREG(info.st_mode):
            mode = MODE_EXEC if info.st_mode & stat.S_IXUSR else MODE_FILE
            handle = os.open(name, _FILE_FLAGS, dir_fd=fd)
            try:
                _same(handle, info)
                size = os.fstat(handle).st_size
                yield from self._content(mode, key, base, size, lambda: _chunks(handle, size))
            finally:
                os.close(handle)
        else:
            yield note_frame(NOTE_SPECIAL, key)

    def _content(
        self,
        mode: bytes,
        key: bytes,
        base: BaseEntry | None,
        size: int,
        read: Callable[[], Iterator[bytes]],
    ) -> Iterator[bytes]:
        self.read_budget -= size
        if self.read_budget < 0:
            raise WalkError("the tree holds more bytes than the host reads", "read_bytes")
        oid = blob_oid(self.algorithm, size, read())
        if oid in self.base.oids:
            yield entry_frame(mode, oid, key)
            return
        yield blob_header(mode, size, key)
        digest = hashlib.new(self.algorithm)
        digest.update(b"blob %d\0" % size)
        for chunk in read():
            digest.update(chunk)
            yield chunk
        if digest.hexdigest() != oid:
            raise WalkError(f"{key!r} changed while it was read")

    def _gitignore(self, fd: int) -> pathspec.GitIgnoreSpec | None:
        try:
            handle = os.open(".gitignore", _FILE_FLAGS, dir_fd=fd)
        except OSError:
            return None  # a symlink (git ignores those too) or unreadable
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return None
            text = os.read(handle, MAX_GITIGNORE_BYTES).decode("utf-8", "surrogateescape")
        finally:
            os.close(handle)
        return pathspec.GitIgnoreSpec.from_lines(text.splitlines())

    @staticmethod
    def _empty(fd: int, name: str) -> bool:
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            return not os.listdir(child)
        finally:
            os.close(child)


def _same(fd: int, listed: os.stat_result) -> None:
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (listed.st_dev, listed.st_ino) or stat.S_IFMT(
        opened.st_mode
    ) != stat.S_IFMT(listed.st_mode):
        raise WalkError("the tree changed while it was read")


def _chunks(fd: int, size: int) -> Iterator[bytes]:
    os.lseek(fd, 0, os.SEEK_SET)
    left = size
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            raise WalkError("a file shrank while it was read")
        left -= len(chunk)
        yield chunk


# -- the child process ------------------------------------------------------------------------


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid:gid`` for good (no supplementary groups, no capability, no way back).

    Root loses its capabilities with the change of uid. An unprivileged worker that holds
    ``CAP_SETUID``/``CAP_SETGID`` (ambient capabilities, docs/security.md) keeps its
    capabilities across a change between two non-zero uids, so they are cleared explicitly."""
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise WalkError(f"could not become {uid}:{gid}")
    if uid != 0:
        clear_capabilities()
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise WalkError("privileges could be regained after dropping them")


_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3 = 0x20080522


def clear_capabilities() -> None:
    """Empty this process's ambient, inheritable, permitted and effective capability sets."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL before Linux 4.3
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)  # version, pid (0: this process)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    if libc.capset(header, data) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"capset: {os.strerror(error)}")
    with open("/proc/self/status") as status:
        held = [line for line in status if line.startswith(("CapEff", "CapPrm", "CapAmb"))]
    if any(int(line.split()[1], 16) for line in held):
        raise WalkError("capabilities could not be dropped: " + " ".join(held))


def remove_contents(top: int) -> None:
    """Delete everything inside the folder open as ``top``, never following a symlink (the
    owner's clean-up of its workspace). Iterative: one descriptor per level of the current
    path, so any depth is removed."""
    stack: list[tuple[int, Iterator[str], str]] = [(top, iter(os.listdir(top)), "")]
    while stack:
        fd, names, _ = stack[-1]
        name = next(names, None)
        if name is None:
            _, _, own = stack.pop()
            if stack:
                os.close(fd)
                os.rmdir(own, dir_fd=stack[-1][0])
            continue
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=fd)
            continue
        if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:  # as the owner: confined by uid
            os.chmod(name, stat.S_IRWXU, dir_fd=fd)
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            _same(child, info)
            stack.append((child, iter(os.listdir(child)), name))
        except BaseException:
            os.close(child)
            raise


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Timeout


def main(argv: list[str]) -> int:
    """``python -m sandboxes.treewalk walk UID GID PATH ALGORITHM LIMITS…`` (the base tree's
    ``ls-tree -r -z -l`` listing on stdin, frames on stdout) or ``remove UID GID PATH``. On
    failure, stderr's first line is ``limit:<name>`` when a limit was broken, then the detail."""
    try:
        command, uid, gid, root = argv[0], int(argv[1]), int(argv[2]), argv[3]
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a descriptor per level
        listing = sys.stdin.buffer.read() if command == "walk" else b""
        drop_privileges(uid, gid)
        if command == "remove":
            os.chmod(root, stat.S_IRWXU)  # the agent may have locked its own top folder
            remove_contents(os.open(root, _DIR_FLAGS))
            return 0
        algorithm = argv[4]
        limits = WalkLimits.parse(argv[5:])
        signal.signal(signal.SIGALRM, _on_alarm)
        walker = Walker(os.open(root, _DIR_FLAGS), BaseTree.parse(listing), algorithm, limits)
        out = sys.stdout.buffer
        deadline = time.monotonic() + limits.seconds
        for frame in walker.frames():
            if time.monotonic() > deadline:
                raise WalkError(f"reading took longer than {limits.seconds:.0f} s", "seconds")
            out.write(frame)
        out.flush()
        return 0
    except WalkError as exc:
        sys.stderr.write(f"limit:{exc.limit or 'none'}\nWalkError: {exc}\n")
        return 1
    except (OSError, ValueError, IndexError, RecursionError, _Timeout) as exc:
        sys.stderr.write(f"limit:none\n{type(exc).__name__}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
