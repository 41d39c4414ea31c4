"""The run's socket: the sandbox's connections taken one at a time and at most
``max_connections`` kept open. Past the cap the connection idle longest is closed to make room;
when none is idle the new one is refused at once (503), so however many the agent opens, the
worker holds about the cap in descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import structlog

from bot.agents.gateway import http
from bot.agents.gateway.wire import Link, Refused

log = structlog.get_logger("bot.agents.gateway")

Serve = Callable[[Link, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """The listening socket of one run's gateway and the connections it keeps open."""

    def __init__(
        self,
        run_id: str,
        path: Path,
        max_connections: int,
        close_timeout: float,
        serve: Serve,
        refuse: Callable[[Refused], None],
    ) -> None:
        self.run_id = run_id
        self.path = path
        self.max_connections = max_connections
        self._close_timeout = close_timeout
        self._serve = serve
        self._refuse = refuse
        self._socket: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self.links: set[Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Listen on ``path`` (which must not exist), with a backlog no longer than the cap."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            listener.listen(self.max_connections)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._socket = listener
        self._acceptor = asyncio.create_task(self._accept_loop(listener))

    async def stop(self) -> None:
        """Stop accepting and cut every open connection."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, say: keep the socket, try again soon
                log.warning("gateway_accept_failed", run_id=self.run_id, error=str(exc))
                await asyncio.sleep(0.1)
                continue
            if len(self.links) >= self.max_connections and not self._close_idle():
                self._refuse_connection(sock)
            else:
                link = Link()
                self.links.add(link)
                link.task = asyncio.create_task(self._connection(link, sock))
                self._tasks.add(link.task)
            await asyncio.sleep(0)  # what was closed to make room is gone before the next

    def _close_idle(self) -> bool:
        """Make room by closing the connection idle longest, if one is idle."""
        idle = [link for link in self.links if link.idle_since is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda link: link.idle_since or 0.0)
        self.links.discard(oldest)
        if oldest.task is not None:
            oldest.task.cancel()
        message = (
            f"a run may keep {self.max_connections} connections open to the gateway; "
            "the one idle longest was closed for a new one"
        )
        self._refuse(Refused(0, "connection_closed", message, "gateway.max_connections"))
        return True

    def _refuse_connection(self, sock: socket.socket) -> None:
        refused = Refused(
            503,
            "too_many_connections",
            f"all {len(self.links)} connections a run may open to the gateway are busy; "
            "retry when one is done",
            "gateway.max_connections",
        )
        self._refuse(refused)
        answer = http.raw_error(503, refused.kind, http.error_body(refused.kind, refused.message))
        with contextlib.suppress(OSError):  # a few hundred bytes: the new socket takes them
            sock.send(answer)
        sock.close()

    async def _connection(self, link: Link, sock: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            await self._serve(link, reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.links.discard(link)
            if link.task is not None:
                self._tasks.discard(link.task)
            if writer is None:
                sock.close()
            else:
                await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            async with asyncio.timeout(self._close_timeout):
                await writer.wait_closed()
        except TimeoutError:  # the agent does not take what is left to write
            writer.transport.abort()
        except (ConnectionError, OSError):
            pass
