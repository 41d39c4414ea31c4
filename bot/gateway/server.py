"""``ModelGateway``: one run's HTTP/1.1 gateway on a Unix socket.

For each request from the sandbox: pick the route by its first path segment, refuse anything
not allow-listed (403) or past the budget (402), drop the container's credentials, inject the
real key, forward with httpx streaming both ways, meter the response as it flows back, and
report a ``UsageRecord``. The first request that brings spending to the budget fires
``on_budget_exhausted`` once; ``raise_budget`` re-opens the gate (and re-arms the callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import h11
import httpx
import structlog

from bot.gateway import http
from bot.gateway.errors import MissingKey, SocketSetupError
from bot.gateway.layout import SOCKET_NAME, prepare_dir, share_socket
from bot.gateway.metering import UsageMeter, UsageRecord
from bot.gateway.pricing import PricingTable
from bot.gateway.routes import Upstream
from bot.logs import redact_text

log = structlog.get_logger("bot.gateway")

OnUsage = Callable[[UsageRecord], Awaitable[None] | None]
OnExhausted = Callable[[], Awaitable[None] | None]

MAX_REQUEST_BYTES = 64 * 1024 * 1024
READ_SIZE = 64 * 1024
MAX_SOCKET_PATH = 107


class _Refused(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class ModelGateway:
    """The gateway of one run. ``await start()`` before the sandbox starts, ``await stop()``
    after it is gone; or use it as an async context manager."""

    def __init__(
        self,
        run_id: str,
        socket_dir: Path,
        routes: Mapping[str, Upstream],
        *,
        budget_usd: float | None = None,
        on_usage: OnUsage | None = None,
        on_budget_exhausted: OnExhausted | None = None,
        pricing: PricingTable | None = None,
        environ: Mapping[str, str] | None = None,
        sandbox_gid: int | None = None,
        default_route: str | None = None,
        max_concurrent: int = 8,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.run_id = run_id
        self.socket_dir = socket_dir.absolute()
        self.socket_path = self.socket_dir / SOCKET_NAME
        self.routes = dict(routes)
        if default_route is not None and default_route not in self.routes:
            raise ValueError(f"default route {default_route!r} is not one of {sorted(routes)}")
        self.default_route = default_route
        """Route for paths without a route prefix (``ANTHROPIC_BASE_URL=http://127.0.0.1:8788``)."""
        self.budget_usd = budget_usd
        self.pricing = pricing or PricingTable()
        self.spent_usd = 0.0
        self.requests = 0
        self._on_usage = on_usage
        self._on_exhausted = on_budget_exhausted
        self._exhausted_fired = False
        self._environ = environ if environ is not None else os.environ
        self._sandbox_gid = sandbox_gid
        self._keys: dict[str, str] = {}
        self._limit = asyncio.Semaphore(max_concurrent)
        self._timeout = timeout or httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=None)
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._callbacks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve every route's key, create the socket and start serving."""
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise SocketSetupError(
                f"the gateway socket path {self.socket_path} is longer than the "
                f"{MAX_SOCKET_PATH} bytes a Unix socket allows; use a shorter sandbox.workdir"
            )
        for prefix, upstream in self.routes.items():
            if upstream.auth_style == "none" or not upstream.key_env:
                continue
            value = self._environ.get(upstream.key_env, "")
            if not value:
                raise MissingKey(
                    f"the gateway route /{prefix} ({upstream.base_url}) needs the API key in "
                    f"the worker's environment variable {upstream.key_env}, which is not set"
                )
            self._keys[prefix] = value
        await asyncio.to_thread(prepare_dir, self.socket_dir, self._sandbox_gid)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        share_socket(self.socket_path, self._sandbox_gid)
        log.info("gateway_started", run_id=self.run_id, routes=sorted(self.routes))

    async def stop(self) -> None:
        """Stop serving, cut open connections and remove the socket."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log.info("gateway_stopped", run_id=self.run_id, spent_usd=round(self.spent_usd, 6))

    async def __aenter__(self) -> ModelGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- budget ----------------------------------------------------------------------------
    @property
    def exhausted(self) -> bool:
        return self.budget_usd is not None and self.spent_usd >= self.budget_usd

    def raise_budget(self, amount_usd: float) -> float | None:
        """Add ``amount_usd`` to the cap (``/budget +N``); returns the new cap (``None`` stays
        unlimited). Once spending is under the cap again, requests pass and the exhausted
        callback is armed again."""
        if amount_usd <= 0:
            raise ValueError(f"a budget raise must be positive, got {amount_usd}")
        if self.budget_usd is not None:
            self.budget_usd += amount_usd
            if not self.exhausted:
                self._exhausted_fired = False
        log.info("gateway_budget_raised", run_id=self.run_id, budget_usd=self.budget_usd)
        return self.budget_usd

    def _refuse_if_exhausted(self) -> None:
        if self.exhausted:
            self._check_exhausted()
            raise _Refused(
                402,
                "budget_exhausted",
                f"this run's model budget of ${self.budget_usd:.2f} is spent "
                f"(${self.spent_usd:.4f}); a maintainer can raise it with /budget +N",
            )

    def _check_exhausted(self) -> None:
        if self.exhausted and not self._exhausted_fired:
            self._exhausted_fired = True
            log.info(
                "gateway_budget_exhausted",
                run_id=self.run_id,
                spent_usd=round(self.spent_usd, 6),
                budget_usd=self.budget_usd,
            )
            if self._on_exhausted is not None:
                task = asyncio.create_task(self._call(self._on_exhausted))
                self._callbacks.add(task)
                task.add_done_callback(self._callbacks.discard)

    async def _call(self, func: Callable[..., Any], *args: Any) -> None:
        try:
            result = func(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - a callback must not break the gateway
            log.warning("gateway_callback_failed", run_id=self.run_id, error=redact_text(str(exc)))

    # -- connections -----------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = await _next_event(conn, reader)
            if not isinstance(event, h11.Request):
                return
            try:
                await self._request(conn, reader, writer, event)
            except _Refused as refused:
                await _reply_error(conn, writer, refused.status, refused.kind, refused.message)
                log.info(
                    "gateway_request_refused",
                    run_id=self.run_id,
                    status=refused.status,
                    kind=refused.kind,
                    reason=refused.message,
                )
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return

    async def _request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> None:
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        prefix, _, rest = path.lstrip("/").partition("/")
        if prefix not in self.routes and self.default_route is not None:
            prefix, rest = self.default_route, path.lstrip("/")
        endpoint = f"{method} /{rest}"
        body = await _read_body(conn, reader, writer)
        upstream = self.routes.get(prefix)
        if upstream is None:
            raise _Refused(403, "forbidden", f"/{prefix} is not an upstream this run may use")
        if not upstream.allows(method, f"/{rest}"):
            raise _Refused(403, "forbidden", f"{endpoint} is not an allowed endpoint of /{prefix}")
        try:
            body, model = http.adjust_body(endpoint, body)
        except http.BodyRefused as exc:
            raise _Refused(400, "invalid_request_error", str(exc)) from exc
        key = self._keys.get(prefix)
        auth = http.auth_header(upstream.auth_style or "none", key) if key else None
        url = upstream.base_url + "/" + rest + (f"?{query}" if query else "")
        async with self._limit:  # checked after the wait: others may have spent the rest
            self._refuse_if_exhausted()
            await self._forward(
                conn, writer, upstream, endpoint, method, url, body, model, auth, request.headers
            )

    async def _forward(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        upstream: Upstream,
        endpoint: str,
        method: str,
        url: str,
        body: bytes,
        model: str | None,
        auth: tuple[str, str] | None,
        raw_headers: Any,
    ) -> None:
        assert self._client is not None
        started = time.monotonic()
        headers = http.request_headers(raw_headers, auth)
        upstream_request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            response = await self._client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            log.warning(
                "gateway_upstream_failed",
                run_id=self.run_id,
                upstream=upstream.prefix,
                error=redact_text(f"{type(exc).__name__}: {exc}"),
            )
            raise _Refused(
                502, "api_error", f"the upstream {upstream.base_url} is unreachable"
            ) from exc
        content_type = response.headers.get("content-type", "")
        meter = UsageMeter(
            streaming=content_type.startswith("text/event-stream"), request_model=model
        )
        accounted = False
        try:
            writer.write(
                conn.send(
                    h11.Response(
                        status_code=response.status_code,
                        headers=http.response_headers(response.headers.multi_items()),
                    )
                )
            )
            async for chunk in response.aiter_bytes():
                meter.feed(chunk)
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
            # Account before the last byte: the agent's next request sees the new total.
            meter.finish()
            accounted = True
            await self._account(upstream, endpoint, response.status_code, meter, started)
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except httpx.HTTPError as exc:
            log.warning(
                "gateway_upstream_cut",
                run_id=self.run_id,
                upstream=upstream.prefix,
                error=redact_text(f"{type(exc).__name__}: {exc}"),
            )
            raise ConnectionError("upstream response ended early") from exc
        finally:
            await response.aclose()
            if not accounted:
                meter.finish()
                await self._account(upstream, endpoint, response.status_code, meter, started)

    async def _account(
        self, upstream: Upstream, endpoint: str, status: int, meter: UsageMeter, started: float
    ) -> None:
        price, known = self.pricing.price_for(meter.model)
        usage = meter.usage
        cost = price.cost(usage)
        self.spent_usd += cost
        self.requests += 1
        record = UsageRecord(
            run_id=self.run_id,
            upstream=upstream.prefix,
            endpoint=endpoint,
            status=status,
            model=meter.model,
            usage=usage,
            cost_usd=cost,
            spent_usd=self.spent_usd,
            budget_usd=self.budget_usd,
            streamed=meter.streaming,
            metered=meter.seen_usage,
            known_model=known,
            duration_s=time.monotonic() - started,
        )
        log.info(  # field names avoid "token": the log redactor would blank them
            "gateway_request_metered",
            run_id=self.run_id,
            upstream=upstream.prefix,
            endpoint=endpoint,
            status=status,
            model=meter.model,
            input_count=usage.total_input_tokens,
            output_count=usage.output_tokens,
            usd=round(cost, 6),
            spent_usd=round(self.spent_usd, 6),
            metered=meter.seen_usage,
        )
        if self._on_usage is not None:
            await self._call(self._on_usage, record)
        self._check_exhausted()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(READ_SIZE))


async def _read_body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes:
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
    body = bytearray()
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            body.extend(event.data)
            if len(body) > MAX_REQUEST_BYTES:
                raise _Refused(413, "request_too_large", "request body over the gateway's limit")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise ConnectionError("client went away mid-request")


async def _reply_error(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, kind: str, message: str
) -> None:
    body = http.error_body(kind, message)
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-bosun-gateway", kind),
    ]
    if conn.their_state is not h11.DONE:
        headers.append(("connection", "close"))
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
