"""Output collection shared by every backend: ordered chunks, a byte cap with a note, and a
line splitter for callers that want whole lines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Bytes one stream produced, in arrival order."""

    stream: Stream
    data: bytes


OnOutput = Callable[[OutputChunk], Awaitable[None]]
"""Async callback receiving each chunk as it arrives."""


def truncation_note(limit: int) -> bytes:
    return f"\n[output truncated after {limit} bytes]\n".encode()


@dataclass
class OutputCollector:
    """Keeps chunks up to ``limit`` bytes and forwards them to ``on_output``; beyond the limit it
    keeps counting (``truncated_bytes``) but drops the bytes, and emits the note once."""

    limit: int
    on_output: OnOutput | None = None
    chunks: list[OutputChunk] = field(default_factory=list)
    kept: int = 0
    truncated_bytes: int = 0

    async def feed(self, stream: Stream, data: bytes) -> None:
        if not data:
            return
        room = self.limit - self.kept
        if room <= 0:
            self.truncated_bytes += len(data)
            return
        keep, dropped = data[:room], data[room:]
        self.kept += len(keep)
        await self._emit(OutputChunk(stream, keep))
        if dropped:
            self.truncated_bytes += len(dropped)
            await self._emit(OutputChunk("stderr", truncation_note(self.limit)))

    async def _emit(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)
        if self.on_output is not None:
            await self.on_output(chunk)

    @property
    def truncated(self) -> bool:
        return self.truncated_bytes > 0


class LineSplitter:
    """An ``OnOutput`` that calls ``on_line(stream, text)`` once per line, splitting each stream
    separately and decoding UTF-8 leniently. A trailing partial line is held until its newline
    arrives; ``await splitter.flush()`` emits it when the exec has ended."""

    def __init__(self, on_line: Callable[[Stream, str], Awaitable[None]]) -> None:
        self._on_line = on_line
        self._pending: dict[Stream, bytes] = {"stdout": b"", "stderr": b""}

    async def __call__(self, chunk: OutputChunk) -> None:
        *lines, rest = (self._pending[chunk.stream] + chunk.data).split(b"\n")
        self._pending[chunk.stream] = rest
        for line in lines:
            await self._on_line(chunk.stream, line.decode("utf-8", "replace"))

    async def flush(self) -> None:
        for stream, rest in list(self._pending.items()):
            self._pending[stream] = b""
            if rest:
                await self._on_line(stream, rest.decode("utf-8", "replace"))
