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
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pathspec

MODE_FILE = b"100644"
MODE_EXEC = b"100755"
MODE_LINK = b"120000"
MODE_GITLINK = b"160000"
MAX_GITIGNORE_BYTES = 1 << 20
CHUNK = 1 << 20

NOTE_NESTED_GIT = b"g"
"""A ``.git`` entry below the top level (a nested repository) was left out."""
NOTE_SUBMODULE = b"s"
"""Something was written where the base tree has a submodule (gitlink)."""
NOTE_SPECIAL = b"o"
"""A FIFO, socket or device file was skipped (git records none)."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class WalkError(Exception):
    """The tree could not be read as a whole (it changed while read, or is unreadable)."""


@dataclass(frozen=True, slots=True)
class BaseEntry:
    mode: bytes
    oid: str


@dataclass
class BaseTree:
    """The tree the run started from: ``git ls-tree -r -z --full-tree`` of it."""

    entries: dict[bytes, BaseEntry] = field(default_factory=dict)
    dirs: set[bytes] = field(default_factory=set)
    """Every folder holding a tracked path (so an ignored folder still yields its tracked
    files, as in git)."""
    oids: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, listing: bytes) -> BaseTree:
        tree = cls()
        for record in listing.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, _kind, oid = meta.split(b" ")
            tree.entries[path] = BaseEntry(mode, oid.decode())
            tree.oids.add(oid.decode())
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
        probe = path + "/" if is_dir else path
        for prefix, spec in reversed(self.stack):
            verdict = spec.check_file(probe[len(prefix) :]).include
            if verdict is not None:
                return verdict
        return False


class Walker:
    """Walks ``root`` (already opened) and yields frames; see the module docstring."""

    def __init__(self, root_fd: int, base: BaseTree, algorithm: str) -> None:
        self.root_fd = root_fd
        self.base = base
        self.algorithm = algorithm
        self.ignores = _Ignores()
        self.seen_gitlinks: set[bytes] = set()

    def frames(self) -> Iterator[bytes]:
        yield from self._folder(self.root_fd, "", only_tracked=False)
        for path, entry in sorted(self.base.entries.items()):
            if entry.mode == MODE_GITLINK and path not in self.seen_gitlinks:
                yield _entry(entry.mode, entry.oid, path)  # an uninitialised submodule's folder

    def _folder(self, fd: int, rel: str, *, only_tracked: bool) -> Iterator[bytes]:
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
                    yield _note(NOTE_NESTED_GIT, os.fsencode(rel + name))
        finally:
            if pushed:
                self.ignores.stack.pop()

    def _entry(self, fd: int, rel: str, name: str, *, only_tracked: bool) -> Iterator[bytes]:
        path = rel + name
        key = os.fsencode(path)
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        base = self.base.entries.get(key)
        if base is not None and base.mode == MODE_GITLINK:
            self.seen_gitlinks.add(key)
            if not (stat.S_ISDIR(info.st_mode) and self._empty(fd, name)):
                yield _note(NOTE_SUBMODULE, key)
            yield _entry(base.mode, base.oid, key)  # the submodule stays as the base has it
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
            yield _note(NOTE_SPECIAL, key)

    def _content(
        self,
        mode: bytes,
        key: bytes,
        base: BaseEntry | None,
        size: int,
        read: Callable[[], Iterator[bytes]],
    ) -> Iterator[bytes]:
        oid = blob_oid(self.algorithm, size, read())
        if oid in self.base.oids:
            yield _entry(mode, oid, key)
            return
        yield b"B" + mode + _U64.pack(size) + _U32.pack(len(key)) + key
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


def _entry(mode: bytes, oid: str, key: bytes) -> bytes:
    raw = oid.encode()
    return b"E" + mode + _U32.pack(len(raw)) + raw + _U32.pack(len(key)) + key


def _note(kind: bytes, key: bytes) -> bytes:
    return b"N" + kind + _U32.pack(len(key)) + key


# -- the reading side (the host process) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    mode: bytes
    path: bytes
    oid: str


@dataclass(frozen=True, slots=True)
class Blob:
    mode: bytes
    path: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Note:
    kind: bytes
    path: bytes


class FrameReader:
    """Parses the walker's frames from a binary stream (the child's stdout)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left > 0:
            chunk = self._read(min(left, CHUNK))
            if not chunk:
                raise WalkError("the tree walk ended early")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def __iter__(self) -> Iterator[Entry | Blob | Note]:
        while True:
            kind = self._read(1)
            if not kind:
                return
            if kind == b"E":
                mode = self.exactly(6)
                oid = self._field().decode()
                yield Entry(mode, self._field(), oid)
            elif kind == b"B":
                mode = self.exactly(6)
                size = _U64.unpack(self.exactly(8))[0]
                yield Blob(mode, self._field(), size)
            elif kind == b"N":
                note = self.exactly(1)
                yield Note(note, self._field())
            else:
                raise WalkError(f"unexpected frame {kind!r} from the tree walk")

    def _field(self) -> bytes:
        (length,) = _U32.unpack(self.exactly(4))
        return self.exactly(length)

    def content(self, blob: Blob) -> Iterator[bytes]:
        """The bytes that follow ``blob`` (must be consumed before the next frame)."""
        left = blob.size
        while left > 0:
            chunk = self._read(min(left, CHUNK))
            if not chunk:
                raise WalkError("the tree walk ended early")
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


def remove_contents(fd: int) -> None:
    """Delete everything inside the folder open as ``fd``, never following a symlink (the
    owner's clean-up of its workspace)."""
    for name in os.listdir(fd):
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:  # as the owner: confined by uid
                os.chmod(name, stat.S_IRWXU, dir_fd=fd)
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _same(child, info)
                remove_contents(child)
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def main(argv: list[str]) -> int:
    """``python -m sandboxes.treewalk walk|remove UID GID PATH [sha1|sha256]``: the base tree's
    ``ls-tree -r -z`` listing on stdin (walk), frames on stdout, a one-line reason on stderr."""
    try:
        command, uid, gid, root = argv[0], int(argv[1]), int(argv[2]), argv[3]
        algorithm = argv[4] if len(argv) > 4 else "sha1"
        listing = sys.stdin.buffer.read() if command == "walk" else b""
        drop_privileges(uid, gid)
        if command == "remove":
            os.chmod(root, stat.S_IRWXU)  # the agent may have locked its own top folder
        fd = os.open(root, _DIR_FLAGS)
        if command == "remove":
            remove_contents(fd)
            return 0
        out = sys.stdout.buffer
        for frame in Walker(fd, BaseTree.parse(listing), algorithm).frames():
            out.write(frame)
        out.flush()
        return 0
    except (OSError, WalkError, ValueError, IndexError, RecursionError) as exc:
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
