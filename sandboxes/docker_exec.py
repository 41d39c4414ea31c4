"""Streaming one ``docker exec`` without blocking the event loop.

A worker thread reads the exec's multiplexed stdout/stderr frames from the raw API socket and
hands them to the loop through a small bounded queue (so a flood applies backpressure instead of
filling memory). The socket can be shut down from the loop to abandon a stream whose process
would not die.

Every command is started through a fixed wrapper, ``/bin/sh -c 'echo <marker>$$ >&2; exec "$@"'``
with the caller's argv passed as positional arguments (never interpolated into the script). The
marker line tells the backend the command's pid inside the container; the runtime makes each exec
a session and process-group leader, so killing ``-pid`` ends the command and its children.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import socket
import threading
from collections.abc import Iterator
from typing import Any

from docker.utils.socket import frames_iter

from sandboxes.output import Stream

PID_MARKER = b"bosun-exec-pid:"
WRAPPER_SCRIPT = 'echo "bosun-exec-pid:$$" >&2; exec "$@"'
KILL_SCRIPT = 'kill -KILL "-$1" 2>/dev/null || kill -KILL "$1"'


def wrap(argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER_SCRIPT, "bosun-exec", *argv]


_END = object()


def buffered_reader(sock: Any) -> io.BufferedReader | None:
    """The buffered reader http.client parsed the engine's answer to ``exec start`` with.

    docker-py hands over the socket under it, but when the client reads that answer late (a
    busy host) the first frames arrive with it and sit in this reader's buffer: reading the
    socket would lose them (the pid line, an agent's first output). Reading through this reader
    loses nothing. Its socket's timeout is lifted, as docker-py does for attach streams: an
    agent may be silent for longer than the API client's timeout."""
    response = getattr(sock, "_response", None)
    reader = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    if not isinstance(reader, io.BufferedReader):
        return None
    raw = getattr(sock, "_sock", None)
    if isinstance(raw, socket.socket):
        raw.settimeout(None)
    return reader


def read_frames(reader: io.BufferedReader) -> Iterator[tuple[int, bytes]]:
    """The engine's multiplexed frames (8-byte header: stream, 3 zero bytes, big-endian size),
    to the end of the stream; a frame cut short by the end is delivered as far as it came."""
    while True:
        header = reader.read(8)
        if len(header) < 8:
            return
        size = int.from_bytes(header[4:8], "big")
        if size == 0:
            continue
        data = reader.read(size)
        if data:
            yield header[0], data
        if len(data) < size:
            return


class FrameStream:
    """Frames of one exec, read on a thread and consumed with ``await next_frame(timeout)``."""

    def __init__(self, sock: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
        self._abandoned = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name="bosun-exec-reader", daemon=True)
        self._thread.start()

    def _deliver(self, item: object) -> bool:
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while True:
            try:
                future.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if self._abandoned.is_set():
                    future.cancel()
                    return False

    def _pump(self) -> None:
        try:
            reader = buffered_reader(self._sock)
            frames = frames_iter(self._sock, tty=False) if reader is None else read_frames(reader)
            for stream_id, data in frames:
                stream: Stream = "stderr" if stream_id == 2 else "stdout"
                if data and not self._deliver((stream, bytes(data))):
                    return
        except (OSError, ValueError) as exc:  # socket shut down or engine went away
            if not self._abandoned.is_set():
                self.error = exc
        finally:
            if not self._abandoned.is_set():
                with contextlib.suppress(RuntimeError):  # event loop closed
                    self._deliver(_END)
            self._close()

    async def next_frame(self, timeout: float | None) -> tuple[Stream, bytes] | None:
        """The next frame, ``None`` at the end; raises ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if item is _END:
            return None
        return item  # type: ignore[return-value]

    def shutdown(self) -> None:
        """Break the connection; the reader thread then ends the stream."""
        raw = getattr(self._sock, "_sock", self._sock)
        with contextlib.suppress(OSError, AttributeError):
            raw.shutdown(socket.SHUT_RDWR)

    def abandon(self) -> None:
        """Stop delivering (the consumer has gone) and break the connection."""
        self._abandoned.set()
        self.shutdown()

    def _close(self) -> None:
        raw = getattr(self._sock, "_sock", None)
        with contextlib.suppress(OSError):
            self._sock.close()
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.close()
