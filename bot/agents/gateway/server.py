"""``ModelGateway``: one run's HTTP/1.1 gateway on a Unix socket.

For each request from the sandbox: pick the route by its first path segment, refuse anything
not allow-listed (403) or past the budget (402), drop the container's credentials, inject the
real key, forward with httpx streaming both ways, meter the response as it flows back, and
report a ``UsageRecord``. The first request that brings spending to the budget fires
``on_budget_exhausted`` once; ``raise_budget`` re-opens the gate (and re-arms the callback).

Everything the agent sends is hostile, so nothing it sends is held without a bound
(``limits.py``): a request's route, method and declared size are checked before any of its body
is read; a body is read only while it holds one of ``max_concurrent`` slots and its bytes are
reserved in the run's buffer; heads, bodies, idle connections and the agent's reading of
responses have deadlines; open connections are capped. Every refusal reaches ``on_refused``
(an event on the run) and the log, a flood of them as a few counted reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import h11
import httpx
import structlog

from bot.agents.gateway import http, wire
from bot.agents.gateway.errors import MissingKey, SocketSetupError
from bot.agents.gateway.layout import SOCKET_NAME, prepare_dir, share_socket
from bot.agents.gateway.limits import (
    BodyBuffer,
    GatewayLimits,
    GatewayRefusal,
    OnRefused,
    RefusalTally,
)
from bot.agents.gateway.listener import Listener
from bot.agents.gateway.metering import UsageMeter, UsageRecord
from bot.agents.gateway.pricing import PricingTable
from bot.agents.gateway.routes import Upstream
from bot.agents.gateway.steering import MAX_REMEMBERED_STEERS, STEERABLE, Placed, steer_body
from bot.domain.steering import MAX_PENDING, SteerMessage, steer_text
from bot.logs import redact_text

log = structlog.get_logger("bot.agents.gateway")

OnUsage = Callable[[UsageRecord], Awaitable[None] | None]
OnSteered = Callable[[list[SteerMessage], int], Awaitable[None] | None]
"""Called with the messages a request carried and the request's number (1 = the run's first)."""
OnExhausted = Callable[[], Awaitable[None] | None]

MAX_SOCKET_PATH = 107
Refused = wire.Refused


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
        limits: GatewayLimits | None = None,
        on_refused: OnRefused | None = None,
        on_steered: OnSteered | None = None,
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
        self.limits = limits or GatewayLimits()
        self._buffer = BodyBuffer(self.limits.max_buffered_bytes)
        self._on_refused = on_refused
        self._refusals = RefusalTally(run_id, self._report_refusal)
        self._timeout = timeout or httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=None)
        self._listener = Listener(
            run_id,
            self.socket_path,
            self.limits.max_connections,
            self.limits.client_timeout,
            self._serve,
            self._refuse,
        )
        self._client: httpx.AsyncClient | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        self.forwarded = 0
        """Requests forwarded upstream so far (a steer names the one that carried it)."""
        self._steers: list[SteerMessage] = []
        self._steer_ids: set[int] = set()
        self._placed: deque[Placed] = deque(maxlen=MAX_REMEMBERED_STEERS)
        """Delivered steers, put back at their place in every later request of their
        conversation (the agent's own history never holds them)."""
        self._on_steered = on_steered
        self._unpriced: set[str | None] = set()
        """Models charged at the unknown-model price so far (each logged once)."""

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
        self._listener.start()
        share_socket(self.socket_path, self._sandbox_gid)
        log.info("gateway_started", run_id=self.run_id, routes=sorted(self.routes))

    async def stop(self) -> None:
        """Stop serving, cut open connections and remove the socket."""
        await self._listener.stop()
        await self._refusals.flush()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log.info("gateway_stopped", run_id=self.run_id, spent_usd=round(self.spent_usd, 6))

    async def report_refusals(self) -> None:
        """Report refusals still counted for a later report now (when the agent's turn ends:
        the run's events are still being written then)."""
        await self._refusals.flush()

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
            raise Refused(
                402,
                "budget_exhausted",
                f"this run's model budget of ${self.budget_usd:.2f} is spent "
                f"(${self.spent_usd:.4f}); a maintainer can raise it with /budget +N",
                "budget",
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

    # -- steering --------------------------------------------------------------------------
    def steer(self, messages: list[SteerMessage]) -> int:
        """Queue maintainer messages for the agent's next model request (in order; a message
        already queued or delivered, by its id, is not queued again). Returns how many wait."""
        for message in messages:
            if message.id and message.id in self._steer_ids:
                continue
            if message.id:
                self._steer_ids.add(message.id)
            self._steers.append(message)
        return len(self._steers)

    @property
    def pending_steers(self) -> list[SteerMessage]:
        return list(self._steers)

    def _take_steers(
        self, endpoint: str, body: bytes
    ) -> tuple[bytes, list[SteerMessage], Placed | None]:
        """``body`` with the steers delivered before put back in place and the queued messages
        added, the messages it newly carries and where they went (none when nothing waits or
        the request cannot take them: they wait for the next one)."""
        if endpoint not in STEERABLE or not (self._steers or self._placed):
            return body, [], None
        taken = self._steers[:MAX_PENDING]
        steered = steer_body(endpoint, body, steer_text(taken) if taken else None, self._placed)
        if steered is None:
            return body, [], None
        if steered.placed is None:
            return steered.body, [], None
        del self._steers[: len(taken)]
        return steered.body, taken, steered.placed

    # -- connections -----------------------------------------------------------------------
    async def _serve(
        self, link: wire.Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        limits = self.limits
        while True:
            try:
                request = await wire.next_request(
                    conn,
                    reader,
                    link,
                    idle_timeout=limits.idle_timeout,
                    head_timeout=limits.client_timeout,
                )
                if request is None:
                    return
                await self._request(conn, reader, writer, request)
            except Refused as refused:
                await self._answer(conn, reader, writer, refused)
            except h11.RemoteProtocolError as exc:
                message = f"the request is not valid HTTP/1.1: {exc}"
                malformed = Refused(
                    exc.error_status_hint, "invalid_request_error", message, "gateway.http"
                )
                await self._answer(conn, reader, writer, malformed)
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        refused: Refused,
    ) -> None:
        """Answer a refusal, count it, and drop a refused body the agent is still sending."""
        self._refuse(refused)
        unread = conn.their_state is h11.SEND_BODY and refused.status != 408
        await wire.reply_error(conn, writer, refused, self.limits.client_timeout)
        if unread:
            await wire.linger(reader, writer)

    def _refuse(self, refused: Refused) -> None:
        self._refusals.add(refused.rule, refused.status, refused.message, refused.event)

    async def _report_refusal(self, refusal: GatewayRefusal) -> None:
        if self._on_refused is not None and refusal.rule != "budget":  # has its own callback
            await self._call(self._on_refused, refusal)

    async def _request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> None:
        """Check the route and the declared size with nothing of the body read; then, holding
        a slot and the body's bytes in the run's buffer, read the body and forward it."""
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        prefix, _, rest = path.lstrip("/").partition("/")
        if prefix not in self.routes and self.default_route is not None:
            prefix, rest = self.default_route, path.lstrip("/")
        endpoint = f"{method} /{rest}"
        upstream = self.routes.get(prefix)
        if upstream is None:
            message = f"/{prefix} is not an upstream this run may use"
            raise Refused(403, "forbidden", message, "gateway.routes")
        allowed = upstream.endpoint(method, f"/{rest}")
        if allowed is None:
            message = f"{endpoint} is not an allowed endpoint of /{prefix}"
            raise Refused(403, "forbidden", message, "gateway.routes")
        limits = self.limits
        declared = http.declared_length(request.headers)
        if declared is not None and declared > limits.max_body_bytes:
            raise wire.too_large(limits.max_body_bytes)
        async with self._limit:  # checked after the wait: others may have spent the rest
            self._refuse_if_exhausted()
            wanted = limits.max_body_bytes if declared is None else declared
            async with self._buffer.reserve(wanted) as reservation:
                body = await wire.read_body(
                    conn,
                    reader,
                    writer,
                    max_bytes=limits.max_body_bytes,
                    timeout=limits.client_timeout,
                )
                reservation.shrink(len(body))
                try:
                    body, model = http.adjust_body(allowed.template, body, limits.max_json_values)
                except http.BodyTooComplex as exc:
                    raise Refused(
                        413, "request_too_large", str(exc), "gateway.max_body_bytes"
                    ) from exc
                except http.BodyRefused as exc:
                    raise Refused(
                        400, "invalid_request_error", str(exc), "gateway.metering"
                    ) from exc
                model = allowed.model or model  # Gemini's path names the model it runs
                body, steers, placed = self._take_steers(allowed.template, body)
                if placed is not None and placed.depth:  # remembered before the agent can
                    self._placed.append(placed)  # send its next request (after no turn: not)
                key = self._keys.get(prefix)
                auth = http.auth_header(upstream.auth_style or "none", key) if key else None
                query = http.forwarded_query(query, upstream.api)  # no ?key=, no ?fields=
                url = upstream.base_url + "/" + rest + (f"?{query}" if query else "")
                self.forwarded += 1
                number = self.forwarded
                try:
                    await self._forward(
                        conn,
                        writer,
                        upstream,
                        endpoint,
                        method,
                        url,
                        body,
                        model,
                        auth,
                        request.headers,
                    )
                except Refused:
                    self._steers[:0] = steers  # never reached the model: the next request
                    steers = []
                    if placed is not None and placed in self._placed:
                        self._placed.remove(placed)
                    raise
                finally:
                    if steers:
                        await self._steered(steers, number)

    async def _steered(self, messages: list[SteerMessage], number: int) -> None:
        log.info("gateway_steer_delivered", run_id=self.run_id, request=number, count=len(messages))
        if self._on_steered is not None:
            await self._call(self._on_steered, messages, number)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the agent takes what was written, for at most ``client_timeout``."""
        try:
            async with asyncio.timeout(self.limits.client_timeout):
                await writer.drain()
        except TimeoutError:
            seconds = self.limits.client_timeout
            message = f"the agent read nothing of a response for {seconds:g}s; it was cut off"
            self._refuse(Refused(0, "response_not_read", message, "gateway.client_timeout_seconds"))
            raise ConnectionError("the agent stopped reading the response") from None

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
        headers = http.request_headers(raw_headers, auth, upstream.api)
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
            raise Refused(
                502,
                "api_error",
                f"the upstream {upstream.base_url} is unreachable",
                "gateway.upstream",
                "error",
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
                await self._drain(writer)
            # Account before the last byte: the agent's next request sees the new total.
            meter.finish()
            accounted = True
            await self._account(upstream, endpoint, response.status_code, meter, started)
            writer.write(conn.send(h11.EndOfMessage()))
            await self._drain(writer)
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
        usage = meter.usage
        charge = self.pricing.charge(meter.model, usage)
        cost = charge.usd
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
            known_model=charge.known,
            duration_s=time.monotonic() - started,
            priced_by=charge.source,
        )
        log.info(
            "gateway_request_metered",
            run_id=self.run_id,
            upstream=upstream.prefix,
            endpoint=endpoint,
            status=status,
            model=meter.model,
            input_tokens=usage.total_input_tokens,
            output_tokens=usage.output_tokens,
            usd=round(cost, 6),
            spent_usd=round(self.spent_usd, 6),
            priced_by=charge.source,
            metered=meter.seen_usage,
        )
        unpriced = self._unpriced
        if not charge.known and cost > 0 and meter.model not in unpriced and len(unpriced) < 32:
            unpriced.add(meter.model)  # logged once each, and at most 32 (the agent names them)
            log.warning(
                "gateway_model_unpriced",
                run_id=self.run_id,
                model=meter.model,
                price=self.pricing.unknown.summary(),
            )
        if self._on_usage is not None:
            await self._call(self._on_usage, record)
        self._check_exhausted()
