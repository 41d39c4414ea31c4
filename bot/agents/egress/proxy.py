"""The run's egress proxy: HTTP CONNECT and plain HTTP (absolute-form) from the sandbox, on a
per-run Unix socket, to hosts on the run's allowlist only.

The sandbox has no network; its in-sandbox forwarder (``sandboxes/forwarder/forwarder.py``, the
model gateway's) relays ``127.0.0.1:8789`` to this socket, and the setup commands get
``HTTP_PROXY``/``HTTPS_PROXY`` pointing there. For each connection the proxy reads one request
head, decides on the host and port (``bot.domain.egress``), resolves the name on the
host, checks every address it resolved to, connects to a checked address (never resolving
again, so a second DNS answer cannot slip in) and relays bytes both ways. A plain HTTP request
is sent on in origin-form with ``Connection: close`` (one request per connection). Each
connection ends in one ``EgressRecord`` handed to ``on_request``: host, port, method, allowed or
denied and why, bytes each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from bot.agents.gateway.layout import prepare_dir, share_socket
from bot.agents.gateway.listener import Listener
from bot.agents.gateway.wire import Link, Refused
from bot.domain.egress import EgressPolicy, IpAddress, normal_host

log = structlog.get_logger("bot.agents.egress")

EGRESS_MOUNT = "/bosun-egress"
"""Where the proxy's socket directory appears inside the sandbox."""
SOCKET_NAME = "egress.sock"
FORWARDER_NAME = "forwarder.py"
PROXY_PORT = 8789
"""The loopback port the in-sandbox forwarder listens on for the proxy."""
CHUNK = 64 * 1024
HEAD_LIMIT = 32 * 1024
_DROPPED_HEADERS = frozenset(
    {b"proxy-connection", b"proxy-authorization", b"connection", b"host", b"keep-alive"}
)
"""Request headers not sent on: the proxy's own, hop-by-hop ones, and ``Host`` (set from the
URL the decision was made on, so a request cannot name another site behind the same address)."""


@dataclass(frozen=True, slots=True)
class EgressRecord:
    """One connection through the proxy, as logged."""

    method: str
    host: str
    port: int
    allowed: bool
    reason: str
    address: str | None = None
    bytes_out: int = 0
    """Bytes the sandbox sent upstream (after the request head)."""
    bytes_in: int = 0
    """Bytes the upstream sent back."""
    duration_s: float = 0.0

    def event_data(self, phase: str) -> dict[str, Any]:
        return {
            "phase": phase,
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "allowed": self.allowed,
            "reason": self.reason,
            "address": self.address,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "duration_s": round(self.duration_s, 3),
        }


class Denied(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


Resolver = Callable[[str, int], Awaitable[list[IpAddress]]]
"""``(host, port) -> awaitable list of addresses`` (tests swap in a rebinding resolver)."""


async def system_resolve(host: str, port: int) -> list[IpAddress]:
    """The host's own resolver (``getaddrinfo``), every address it answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[IpAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def socket_dir(run_dir: Path) -> Path:
    return run_dir / "egress"


def proxy_env(port: int = PROXY_PORT) -> dict[str, str]:
    """What makes pip, npm, cargo, go, curl, git and apt use the proxy inside the sandbox."""
    url = f"http://127.0.0.1:{port}"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "npm_config_proxy": url,
        "npm_config_https_proxy": url,
        "NO_PROXY": "",
        "no_proxy": "",
    }


def forwarder_argv(argv: list[str], port: int = PROXY_PORT) -> list[str]:
    """``argv`` run as the child of a forwarder that relays ``127.0.0.1:port`` to the proxy
    (no ``argv``: the forwarder alone, serving until it is stopped)."""
    return [
        "python3",
        "-I",
        f"{EGRESS_MOUNT}/{FORWARDER_NAME}",
        "--port",
        str(port),
        "--socket",
        f"{EGRESS_MOUNT}/{SOCKET_NAME}",
        *(["--", *argv] if argv else []),
    ]


class EgressProxy:
    """One run's proxy. ``start`` before the setup commands, ``stop`` after them: once stopped
    the socket is gone and every open tunnel is cut."""

    def __init__(
        self,
        run_id: str,
        directory: Path,
        policy: EgressPolicy,
        *,
        on_request: Callable[[EgressRecord], None],
        sandbox_gid: int | None,
        max_connections: int = 64,
        connect_timeout: float = 15.0,
        head_timeout: float = 30.0,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.run_id = run_id
        self.directory = directory
        self.policy = policy
        self._on_request = on_request
        self.sandbox_gid = sandbox_gid
        self._connect_timeout = connect_timeout
        self._head_timeout = head_timeout
        self._resolve = resolve
        self.records: list[EgressRecord] = []
        self._listener = Listener(
            run_id,
            directory / SOCKET_NAME,
            max_connections,
            close_timeout=2.0,
            serve=self._serve,
            refuse=self._refused_connection,
        )
        self.running = False

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME

    def prepare(self) -> None:
        """The socket directory with the forwarder in it (before the sandbox is created)."""
        prepare_dir(self.directory, self.sandbox_gid)

    async def start(self) -> None:
        if self.running:
            return
        self.prepare()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._listener.start()
        share_socket(self.socket_path, self.sandbox_gid)
        self.running = True
        log.info("egress_proxy_started", run_id=self.run_id, rules=self.policy.describe())

    async def stop(self) -> None:
        """Stop accepting, cut every tunnel, remove the socket."""
        await self._listener.stop()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self.running:
            log.info("egress_proxy_stopped", run_id=self.run_id, requests=len(self.records))
        self.running = False

    def denied_hosts(self) -> list[tuple[str, int, int]]:
        """``(host, port, attempts)`` of every denied destination, in first-seen order."""
        counts: dict[tuple[str, int], int] = {}
        for record in self.records:
            if not record.allowed:
                key = (record.host, record.port)
                counts[key] = counts.get(key, 0) + 1
        return [(host, port, n) for (host, port), n in counts.items()]

    def _record(self, record: EgressRecord) -> None:
        self.records.append(record)
        log.info(
            "egress_request",
            run_id=self.run_id,
            host=record.host,
            port=record.port,
            allowed=record.allowed,
            reason=record.reason,
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
        )
        self._on_request(record)

    def _refused_connection(self, refused: Refused) -> None:
        log.warning("egress_connection_refused", run_id=self.run_id, reason=refused.message)

    # -- one connection -----------------------------------------------------------------
    async def _serve(
        self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        link.idle_since = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            await _answer(writer, 400, "the proxy needs one HTTP request head (CONNECT or GET)")
            return
        if len(head) > HEAD_LIMIT:
            await _answer(writer, 431, "request head too large")
            return
        method, host, port, forward = b"", "", 0, b""
        try:
            method, host, port, forward = _parse_head(head)
            address = await self._check(host, port)
        except Denied as exc:
            name = method.decode("latin-1") or "?"
            self._record(EgressRecord(name, host or "?", port, False, exc.reason))
            await _answer(writer, exc.status, _denial_text(host, port, exc.reason))
            return
        try:
            async with asyncio.timeout(self._connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(str(address), port)
        except (OSError, TimeoutError) as exc:
            reason = f"connection failed: {type(exc).__name__}"
            self._record(EgressRecord(method.decode(), host, port, True, reason, str(address)))
            await _answer(writer, 502, f"cannot reach {host}:{port} ({reason})")
            return
        if method == b"CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(forward)
        counted = await _relay(reader, writer, up_reader, up_writer)
        self._record(
            EgressRecord(
                method.decode(),
                host,
                port,
                True,
                "allowlisted",
                str(address),
                bytes_out=counted[0],
                bytes_in=counted[1],
                duration_s=time.monotonic() - started,
            )
        )

    async def _check(self, host: str, port: int) -> IpAddress:
        decision = self.policy.decide(host, port)
        if not decision.allowed:
            raise Denied(403, decision.reason)
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise Denied(502, f"cannot resolve the name ({type(exc).__name__})") from exc
        if not addresses:
            raise Denied(502, "the name resolved to no address")
        for address in addresses:  # one bad answer refuses the name: no rebinding by retry
            verdict = self.policy.address_allowed(host, address)
            if not verdict.allowed:
                raise Denied(403, verdict.reason)
        return addresses[0]


def _parse_head(head: bytes) -> tuple[bytes, str, int, bytes]:
    """``(method, host, port, what to send upstream)`` of a proxy request head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Denied(400, "not an HTTP/1.x request line")
    method, target, version = parts
    if method == b"CONNECT":
        host, port = _authority(target.decode("latin-1"))
        return method, host, port, b""
    if not method.isalpha() or not method.isupper():
        raise Denied(400, "not an HTTP method")
    url = urlsplit(target.decode("latin-1"))
    if url.scheme == "https":
        raise Denied(400, "https goes through CONNECT, not an absolute https:// URL")
    if url.scheme != "http" or not url.hostname:
        raise Denied(400, "a proxy request needs an absolute http:// URL or CONNECT host:port")
    try:
        port = url.port or 80
    except ValueError as exc:
        raise Denied(400, "bad port") from exc
    name = normal_host(url.hostname)
    if name is None:
        raise Denied(400, "bad host name")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    out = [b" ".join((method, path.encode("latin-1"), version))]
    for line in lines[1:]:
        if not line:
            continue
        header = line.split(b":", 1)[0].strip().lower()
        if header not in _DROPPED_HEADERS:
            out.append(line)
    authority = f"[{name}]" if ":" in name else name
    if port != 80:
        authority += f":{port}"
    out.insert(1, b"Host: " + authority.encode())
    out.append(b"Connection: close")
    return method, name, port, b"\r\n".join(out) + b"\r\n\r\n"


def _authority(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Denied(400, "CONNECT needs host:port")
    name = normal_host(host)
    if name is None:
        raise Denied(400, "bad host name")
    return name, int(port_text)


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> tuple[int, int]:
    """Copy both ways until both ends are done; ``(bytes out, bytes in)``."""
    counts = [0, 0]

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, slot: int) -> None:
        try:
            while data := await source.read(CHUNK):
                counts[slot] += len(data)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()

    try:
        await asyncio.gather(pipe(reader, up_writer, 0), pipe(up_reader, writer, 1))
    finally:
        up_writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await up_writer.wait_closed()
    return counts[0], counts[1]


def _denial_text(host: str, port: int, reason: str) -> str:
    return (
        f"Bosun's egress proxy refused {host or '?'}:{port}: {reason}. The setup phase may reach "
        "only the hosts on the run's allowlist (operator setting egress.allow, narrowed or "
        "extended by `egress` in .github/bosun.yml).\n"
    )


async def _answer(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 431: "Too Large", 502: "Bad Gateway"}
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nx-bosun-egress: refused\r\n\r\n"
    )
    writer.write(head.encode() + body)
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
