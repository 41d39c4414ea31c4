"""The frames ``sandboxes.treewalk`` writes and the worker reads: the agent's bytes are only
ever payloads of frames this code builds, never framing.

- ``E`` mode, object id, path: a path whose content the base tree already has;
- ``B`` mode, size, path, then the bytes: a new or changed regular file or symlink;
- ``N`` kind, size, path: a note (see ``NOTES``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

CHUNK = 1 << 20
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

NOTE_NESTED_GIT = b"g"
NOTE_SUBMODULE = b"s"
NOTE_SPECIAL = b"o"
NOTE_OVERSIZED = b"b"
NOTES = {
    NOTE_NESTED_GIT: "nested_git",  # a .git below the top level, left out
    NOTE_SUBMODULE: "submodule",  # something written where the base has a submodule
    NOTE_SPECIAL: "special_file",  # a FIFO, socket or device, skipped
    NOTE_OVERSIZED: "oversized",  # a new or changed file over the size limit, never read
}


class FrameError(Exception):
    """The frame stream is cut short or malformed."""


def entry_frame(mode: bytes, oid: str, path: bytes) -> bytes:
    raw = oid.encode()
    return b"E" + mode + _U32.pack(len(raw)) + raw + _U32.pack(len(path)) + path


def blob_header(mode: bytes, size: int, path: bytes) -> bytes:
    return b"B" + mode + _U64.pack(size) + _U32.pack(len(path)) + path


def note_frame(kind: bytes, path: bytes, size: int = 0) -> bytes:
    return b"N" + kind + _U64.pack(size) + _U32.pack(len(path)) + path


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
    size: int


class FrameReader:
    """Parses frames from a binary stream (the walker's stdout)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left > 0:
            chunk = self._read(min(left, CHUNK))
            if not chunk:
                raise FrameError("the tree walk ended early")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _field(self) -> bytes:
        (length,) = _U32.unpack(self.exactly(4))
        return self.exactly(length)

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
                size = _U64.unpack(self.exactly(8))[0]
                yield Note(note, self._field(), size)
            else:
                raise FrameError(f"unexpected frame {kind!r} from the tree walk")

    def content(self, blob: Blob) -> Iterator[bytes]:
        """The bytes that follow ``blob`` (must be consumed before the next frame)."""
        left = blob.size
        while left > 0:
            chunk = self._read(min(left, CHUNK))
            if not chunk:
                raise FrameError("the tree walk ended early")
            left -= len(chunk)
            yield chunk
