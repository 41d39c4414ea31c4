"""A minimal HTTP/1.1 server for the stubs' ASGI apps (standard library only): one request per
connection, request bodies by Content-Length, streamed responses chunked. TCP or a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _handle(app: ASGIApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [tuple(line.split(":", 1)) for line in lines[1:] if ":" in line]
    length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    path, _, query = target.partition("?")
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.strip().lower().encode(), v.strip().encode()) for k, v in headers],
    }
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if sent_body:
            await asyncio.Event().wait()
        sent_body = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out = [f"HTTP/1.1 {message['status']} OK"]
            out += [f"{k.decode()}: {v.decode()}" for k, v in message.get("headers", [])]
            out += ["Transfer-Encoding: chunked", "Connection: close", "", ""]
            writer.write("\r\n".join(out).encode())
        elif message["type"] == "http.response.body":
            data = message.get("body", b"")
            if data:
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            if not message.get("more_body", False):
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    try:
        await app(scope, receive, send)
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def serve_forever(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(app, r, w), host, port)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def running(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields its base URL (``http://127.0.0.1:PORT``)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _handle(app, r, w), host, port)
        holder["server"] = server
        holder["port"] = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.serve_forever()

    def run() -> None:
        loop.run_until_complete(main())

    thread = threading.Thread(target=run, name="modelstub", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("model stub did not start")
    try:
        yield f"http://{host}:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(10)
        loop.close()
