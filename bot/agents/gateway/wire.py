"""HTTP/1.1 on one connection from the sandbox, with a deadline on everything the agent sends:
the next request's head (idle, then ``client_timeout`` from its first byte), its body (bounded
in size and time), and the answers the gateway writes back (the agent must take them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import h11

from bot.agents.gateway import http
from bot.agents.gateway.limits import EventKind

READ_SIZE = 64 * 1024
LINGER_SECONDS = 2.0
"""After refusing a request whose body was not read, how long the rest of it is read and
dropped, so the agent gets the answer instead of a reset connection."""


class Refused(Exception):
    """A request (or connection) the gateway answers with an error instead of forwarding."""

    def __init__(
        self, status: int, kind: str, message: str, rule: str, event: EventKind = "policy"
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.rule, self.event = rule, event


def timed_out(what: str, seconds: float) -> Refused:
    return Refused(
        408,
        "request_timeout",
        f"{what} did not arrive within {seconds:g}s",
        "gateway.client_timeout_seconds",
    )


@dataclass(eq=False)
class Link:
    """One open connection: idle (between requests, nothing of the next one read) or busy."""

    idle_since: float | None = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


async def next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """The next event of a message under way (an end of file here is the agent going away)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionError("the agent closed the connection mid-request")
        conn.receive_data(data)


async def next_request(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    link: Link,
    *,
    idle_timeout: float,
    head_timeout: float,
) -> h11.Request | None:
    """The next request's head; ``None`` when the agent closed the connection or left it idle
    past ``idle_timeout``. Raises ``Refused`` (408) when a head, once begun, is too slow."""
    event: object = conn.next_event()
    if event is h11.NEED_DATA:
        link.idle_since = time.monotonic()
        try:
            async with asyncio.timeout(idle_timeout):
                data = await reader.read(READ_SIZE)
        except TimeoutError:
            return None
        link.idle_since = None
        conn.receive_data(data)
        try:
            async with asyncio.timeout(head_timeout):
                event = await next_event(conn, reader)
        except TimeoutError:
            raise timed_out("the request's head", head_timeout) from None
    link.idle_since = None
    return event if isinstance(event, h11.Request) else None


async def read_body(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    max_bytes: int,
    timeout: float,
) -> bytes:
    """The request's body, whole, within ``timeout``; ``Refused`` (413) past ``max_bytes``
    (a chunked body, whose size is not declared, is cut off there)."""
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await next_event(conn, reader)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > max_bytes:
                        raise too_large(max_bytes)
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
    except TimeoutError:
        raise timed_out("the request's body", timeout) from None


def too_large(max_bytes: int) -> Refused:
    return Refused(
        413,
        "request_too_large",
        f"the request body is over the gateway's limit of {max_bytes} bytes",
        "gateway.max_body_bytes",
    )


async def reply_error(
    conn: h11.Connection, writer: asyncio.StreamWriter, refused: Refused, timeout: float
) -> None:
    """Answer ``refused`` as JSON (closing the connection if the request was not read whole).
    Before any request was parsed (a slow or malformed head), the answer is written raw."""
    body = http.error_body(refused.kind, refused.message)
    if conn.our_state is not h11.SEND_RESPONSE or conn.their_state is h11.ERROR:
        writer.write(http.raw_error(refused.status, refused.kind, body))
    else:
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-bosun-gateway", refused.kind),
        ]
        if conn.their_state is not h11.DONE:
            headers.append(("connection", "close"))
        writer.write(conn.send(h11.Response(status_code=refused.status, headers=headers)))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
    async with asyncio.timeout(timeout):
        await writer.drain()


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say we are done writing, then read and drop what the agent still sends (a body that
    was refused unread) for up to ``LINGER_SECONDS``: nothing of it is kept."""
    with contextlib.suppress(OSError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(READ_SIZE):
                pass
