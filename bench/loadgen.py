"""A loopback load generator for signed webhook deliveries (HTTP/1.1 keep-alive, asyncio).

Every request carries a fresh ``X-GitHub-Delivery`` uuid; the body (a real ``issues.labeled``
example from ``@octokit/webhooks-examples``) is signed once with HMAC-SHA256, as GitHub signs
each delivery. Two modes:

- ``fixed_rate``: open loop, one request every ``1/rate`` seconds; latency is measured from the
  *scheduled* send time, so a stalled server cannot hide its queueing (no coordinated omission).
- ``saturate``: closed loop, ``concurrency`` connections each sending back to back.

Only 127.0.0.1 is ever contacted; every loop is bounded by a duration and a request cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "webhooks" / "issues.json"
MAX_CONNECTIONS = 512
IDLE_REUSE_SECONDS = 2.0  # servers close idle keep-alive connections (uvicorn, Node: 5 s)


def labeled_body() -> bytes:
    examples = json.loads(EXAMPLES.read_text())["examples"]
    payload = next(e["payload"] for e in examples if e["payload"].get("action") == "labeled")
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass
class Target:
    port: int
    secret: bytes
    path: str = "/webhooks/github"
    host: str = "127.0.0.1"
    event: str = "issues"
    ok_status: int = 202
    body: bytes = field(default_factory=labeled_body)

    def __post_init__(self) -> None:
        if self.host != "127.0.0.1":
            raise ValueError("the load generator only talks to 127.0.0.1")
        signature = hmac.new(self.secret, self.body, hashlib.sha256).hexdigest()
        self._head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nUser-Agent: GitHub-Hookshot/bench\r\n"
            f"X-GitHub-Event: {self.event}\r\nX-Hub-Signature-256: sha256={signature}\r\n"
            f"Content-Length: {len(self.body)}\r\nX-GitHub-Delivery: "
        ).encode()

    def request(self, delivery_id: str) -> bytes:
        return self._head + delivery_id.encode() + b"\r\n\r\n" + self.body


@dataclass
class Outcome:
    """What one phase sent and got back. Latencies in seconds."""

    sent: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # answered with the target's ok_status
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0
    connections: int = 0  # open now
    peak_connections: int = 0

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def rate(self) -> float:
        return len(self.acked) / self.seconds if self.seconds else 0.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.perf_counter()

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def roundtrip(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        self.last_used = time.perf_counter()
        return status

    def close(self) -> None:
        self.writer.close()


async def _send(target: Target, conn: Connection, out: Outcome, scheduled: float) -> bool:
    delivery = str(uuid.uuid4())
    out.sent.append(delivery)
    try:
        status = await conn.roundtrip(target.request(delivery))
    except (OSError, asyncio.IncompleteReadError, ValueError):
        out.errors += 1
        return False
    out.latencies.append(time.perf_counter() - scheduled)
    out.statuses[status] = out.statuses.get(status, 0) + 1
    if status == target.ok_status:
        out.acked.append(delivery)
    return True


async def fixed_rate(target: Target, rate: float, seconds: float) -> Outcome:
    """Open loop at ``rate`` requests/s for ``seconds``."""
    out = Outcome()
    idle: list[Connection] = []
    tasks: set[asyncio.Task[None]] = set()
    total = int(rate * seconds)

    async def one(scheduled: float) -> None:
        conn = idle.pop() if idle else None
        if conn is not None and time.perf_counter() - conn.last_used > IDLE_REUSE_SECONDS:
            conn.close()  # the server may be closing it right now: never race that
            out.connections -= 1
            conn = None
        if conn is None:
            if out.connections >= MAX_CONNECTIONS:
                out.errors += 1
                return
            out.connections += 1
            out.peak_connections = max(out.peak_connections, out.connections)
            conn = await Connection.open(target)
        if await _send(target, conn, out, scheduled):
            idle.append(conn)
        else:
            conn.close()
            out.connections -= 1

    out.started = start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    out.finished = time.perf_counter()
    for conn in idle:
        conn.close()
    return out


async def saturate(target: Target, concurrency: int, seconds: float) -> Outcome:
    """Closed loop: ``concurrency`` connections, each sending back to back for ``seconds``."""
    out = Outcome(connections=concurrency, peak_connections=concurrency)
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        conn = await Connection.open(target)
        try:
            while time.perf_counter() < stop_at:
                if not await _send(target, conn, out, time.perf_counter()):
                    return
        finally:
            conn.close()

    out.started = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), seconds + 30
        )
    out.finished = time.perf_counter()
    return out
