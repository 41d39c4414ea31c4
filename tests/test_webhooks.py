"""``POST /webhooks/github`` through the real app on SQLite and PostgreSQL with the real Redis:
verify, store, enqueue, answer — and group commit under a burst (bot/web/intake.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.services import Services
from bot.settings import Settings
from bot.web.app import create_app
from bot.web.intake import DeliveryIntake, IncomingDelivery
from bot.web.intake_protocol import IntakeProtocol, webhook_route_of
from tests.conftest import make_settings
from tests.stack import free_port

SECRET = "webhook-secret"


def signed(body: bytes, delivery: str, event: str = "issues") -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={digest}",
        "Content-Type": "application/json",
    }


def payload(number: int = 1) -> bytes:
    return json.dumps(
        {
            "action": "labeled",
            "issue": {"number": number},
            "installation": {"id": 42},
            "repository": {"full_name": "octo/hello"},
        }
    ).encode()


async def migrate(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def make_app_settings(tmp_path: Path, db_url: str, redis_url: str, ns: str) -> Settings:
    settings = make_settings(
        tmp_path, db_url, redis_url, ns, github={"webhook_secret": SECRET}, max_webhook_bytes=4096
    )
    await migrate(db_url)
    return settings


@pytest.fixture
async def asgi_client(
    tmp_path: Path, db_url: str, redis_url: str, redis_namespace: str
) -> AsyncIterator[tuple[AsyncTestClient[Any], Settings]]:
    settings = await make_app_settings(tmp_path, db_url, redis_url, redis_namespace)
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client, settings


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own signal handlers


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[int]:
    """The app under uvicorn with ``bosun web``'s protocol, on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http=IntakeProtocol,
        log_config=None,
        access_log=False,
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture(params=["asgi", "bosun-web-protocol"])
async def client(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    db_url: str,
    redis_url: str,
    redis_namespace: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """The app through ASGI (Litestar's test client), and served as ``bosun web`` serves it:
    uvicorn with the intake protocol, which answers the webhook itself."""
    settings = await make_app_settings(tmp_path, db_url, redis_url, redis_namespace)
    if request.param == "asgi":
        async with AsyncTestClient(app=create_app(settings)) as test_client:
            yield test_client, settings
        return
    async with (
        served(settings) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        yield http, settings


async def stored(settings: Settings) -> dict[str, tuple[str, int]]:
    engine = create_engine(settings.database.url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, status, redeliveries FROM deliveries"))
            return {row[0]: (str(row[1]), int(row[2])) for row in rows}
    finally:
        await engine.dispose()


async def queued(settings: Settings) -> list[str]:
    client = aioredis.Redis.from_url(settings.redis.url, password=settings.redis.password_value())
    try:
        return [m.decode() for m in await client.zrange(settings.redis.queue_name, 0, -1)]
    finally:
        await client.aclose()


async def test_signed_delivery_is_stored_and_queued_once_even_when_replayed(
    client: tuple[httpx.AsyncClient, Settings], redis_namespace: str
) -> None:
    http, settings = client
    delivery = f"{redis_namespace}-one"
    body = payload()
    first = await http.post("/webhooks/github", content=body, headers=signed(body, delivery))
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    again = await http.post("/webhooks/github", content=body, headers=signed(body, delivery))
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    rows = await stored(settings)
    assert list(rows) == [delivery]
    assert rows[delivery][1] == 1  # the replay is counted, not stored twice
    assert await queued(settings) == [f"d:{delivery}"]


async def test_bad_input_is_refused_and_nothing_is_stored(
    client: tuple[httpx.AsyncClient, Settings], redis_namespace: str
) -> None:
    http, settings = client
    body = payload()
    headers = signed(body, f"{redis_namespace}-x")
    forged = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    answer = await http.post("/webhooks/github", content=body, headers=forged)
    assert answer.status_code == 401 and "X-Hub-Signature-256" in answer.json()["error"]
    not_json = b"{not json"
    answer = await http.post(
        "/webhooks/github", content=not_json, headers=signed(not_json, f"{redis_namespace}-y")
    )
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    no_id = {k: v for k, v in headers.items() if k != "X-GitHub-Delivery"}
    answer = await http.post("/webhooks/github", content=body, headers=no_id)
    assert answer.status_code == 400 and "X-GitHub-Delivery" in answer.json()["error"]
    big = b'{"pad": "' + b"x" * 5000 + b'"}'
    answer = await http.post(
        "/webhooks/github", content=big, headers=signed(big, f"{redis_namespace}-z")
    )
    assert answer.status_code == 413
    assert await stored(settings) == {}
    assert await queued(settings) == []


async def test_a_burst_is_written_in_batches_and_nothing_is_lost(
    tmp_path: Path, db_url: str, redis_url: str, redis_namespace: str
) -> None:
    """600 concurrent submissions (every id twice) to the intake: each delivery stored and
    queued exactly once, in far fewer transactions than deliveries."""
    settings = await make_app_settings(tmp_path, db_url, redis_url, redis_namespace)
    services = Services.build(settings)
    intake = DeliveryIntake(services.engine, services.redis)
    intake.start()
    ids = [f"{redis_namespace}-{i}" for i in range(300)]
    try:
        results = await asyncio.gather(
            *(
                intake.submit(
                    IncomingDelivery(i, "issues", "labeled", 42, "octo/hello", payload().decode())
                )
                for i in ids + ids
            )
        )
    finally:
        await intake.stop()
        await services.close()
    assert sum(not r.duplicate for r in results) == len(ids)
    assert all(r.queued for r in results if not r.duplicate)
    rows = await stored(settings)
    assert sorted(rows) == sorted(ids)
    assert sum(redeliveries for _, redeliveries in rows.values()) == len(ids)
    assert sorted(await queued(settings)) == sorted(f"d:{i}" for i in ids)
    assert intake.written == len(ids)
    assert intake.batches < 20  # group commit: a handful of transactions, not 600


async def test_redis_down_still_stores_and_answers(tmp_path: Path, redis_namespace: str) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    settings = await make_app_settings(tmp_path, db_url, "redis://127.0.0.1:1/0", redis_namespace)
    async with AsyncTestClient(app=create_app(settings)) as http:
        body = payload()
        delivery = f"{redis_namespace}-down"
        answer = await http.post("/webhooks/github", content=body, headers=signed(body, delivery))
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    assert (await stored(settings))[delivery][0].lower().endswith("received")


async def test_database_failure_answers_503_so_github_can_redeliver(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}"
    settings = make_settings(
        tmp_path, db_url, redis_url, redis_namespace, github={"webhook_secret": SECRET}
    )
    async with AsyncTestClient(app=create_app(settings)) as http:
        body = payload()
        delivery = f"{redis_namespace}-nodb"
        answer = await http.post("/webhooks/github", content=body, headers=signed(body, delivery))
        assert answer.status_code == 503
        assert "could not be stored" in answer.json()["error"]
        # The writer survives the failure: once the table exists, deliveries are stored again.
        await migrate(db_url)
        answer = await http.post("/webhooks/github", content=body, headers=signed(body, delivery))
        assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    assert await queued(settings) == [f"d:{delivery}"]


async def test_webhook_path_answers_post_only_and_other_paths_reach_the_app(
    client: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, _ = client
    answer = await http.get("/webhooks/github")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert "POST" in answer.json()["error"]
    assert (await http.get("/healthz")).status_code == 200  # Litestar's routes, as before
    assert (await http.post("/webhooks/github/", content=b"{}")).status_code in {404, 405}


async def _asgi_post(
    http: AsyncTestClient[Any], headers: dict[str, str], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """POST to the app as a server would, the body in ``messages``; what the app sent back."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/github",
        "raw_path": b"/webhooks/github",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await http.app(scope, receive, send)  # type: ignore[arg-type]
    return sent


async def test_body_over_the_limit_without_a_length_is_refused_while_read(
    asgi_client: tuple[AsyncTestClient[Any], Settings], redis_namespace: str
) -> None:
    http, settings = asgi_client
    big = b'{"pad": "' + b"x" * 9000 + b'"}'
    chunks = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    sent = await _asgi_post(http, signed(big, f"{redis_namespace}-chunked"), messages)
    assert sent[0]["status"] == 413
    assert len(messages) > 3, "the app read past the limit"
    assert await stored(settings) == {}


async def test_client_gone_before_the_body_is_whole_stores_and_answers_nothing(
    asgi_client: tuple[AsyncTestClient[Any], Settings], redis_namespace: str
) -> None:
    http, settings = asgi_client
    body = payload()
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert await _asgi_post(http, signed(body, f"{redis_namespace}-gone"), messages) == []
    assert await stored(settings) == {}


async def test_json_of_another_shape_is_stored_without_a_summary(
    client: tuple[httpx.AsyncClient, Settings], redis_namespace: str
) -> None:
    http, settings = client
    for n, body in enumerate(
        [b"[1, 2]", b'{"action": 5, "installation": {"id": true}, "repository": "x"}']
    ):
        delivery = f"{redis_namespace}-shape-{n}"
        answer = await http.post("/webhooks/github", content=body, headers=signed(body, delivery))
        assert answer.status_code == 202, answer.text
    engine = create_engine(settings.database.url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT action, installation_id, repository FROM deliveries ORDER BY id")
            )
            assert [tuple(r) for r in rows] == [(None, None, None), (None, None, None)]
    finally:
        await engine.dispose()


async def _exchange(port: int, data: bytes, answers: int) -> list[tuple[int, bytes, bytes]]:
    """Write ``data`` on one connection and read ``answers`` responses in order: (status,
    head, body). A response with ``connection: close`` must be followed by the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[tuple[int, bytes, bytes]] = []
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(15):
            for _ in range(answers):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                out.append(
                    (int(head.split(b" ")[1]), head.lower(), await reader.readexactly(length))
                )
            if out and b"connection: close" in out[-1][1]:
                assert await reader.read() == b"", "the server kept a closed connection open"
    finally:
        writer.close()
    return out


def _post(body: bytes, delivery: str, *, extra: str = "", version: str = "1.1") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in signed(body, delivery).items())
    return (
        f"POST /webhooks/github HTTP/{version}\r\nHost: x\r\n{head}{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_the_intake_protocol_keeps_answers_in_order_and_connections_right(
    tmp_path: Path, db_url: str, redis_url: str, redis_namespace: str
) -> None:
    """Under ``bosun web``'s protocol: pipelined requests (webhook, another route, webhook)
    are answered in order on one connection; ``Connection: close`` and HTTP/1.0 end the
    connection after the answer; a body over the limit sent in chunks without a length is
    refused while read and the connection closed; a client gone mid-body stores nothing."""
    settings = await make_app_settings(tmp_path, db_url, redis_url, redis_namespace)
    ns = redis_namespace
    async with served(settings) as port:
        one, two = payload(1), payload(2)
        pipelined = (
            _post(one, f"{ns}-p1")
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + _post(two, f"{ns}-p2")
        )
        answers = await _exchange(port, pipelined, 3)
        assert [a[0] for a in answers] == [202, 200, 202]
        assert json.loads(answers[0][2])["delivery"] == f"{ns}-p1"
        assert json.loads(answers[2][2])["delivery"] == f"{ns}-p2"
        assert b"connection: close" not in answers[0][1]

        again = await _exchange(port, _post(one, f"{ns}-p1") + _post(two, f"{ns}-p3"), 2)
        assert [json.loads(a[2])["status"] for a in again] == ["duplicate", "accepted"]

        closing = await _exchange(port, _post(one, f"{ns}-c1", extra="Connection: close\r\n"), 1)
        assert closing[0][0] == 202 and b"connection: close" in closing[0][1]
        old = await _exchange(port, _post(two, f"{ns}-c2", version="1.0"), 1)
        assert old[0][0] == 202 and b"connection: close" in old[0][1]

        big = b'{"pad": "' + b"x" * 9000 + b'"}'
        chunked = "".join(f"{k}: {v}\r\n" for k, v in signed(big, f"{ns}-big").items())
        data = (
            f"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n{chunked}"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        for i in range(0, len(big), 1000):
            part = big[i : i + 1000]
            data += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        refused = await _exchange(port, data, 1)  # the last chunk is never sent
        assert refused[0][0] == 413 and b"connection: close" in refused[0][1]

        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(one, f"{ns}-gone")[:-20])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.3)
        alive = await _exchange(port, _post(one, f"{ns}-after"), 1)
        assert alive[0][0] == 202
    rows = await stored(settings)
    assert sorted(rows) == sorted(f"{ns}-{n}" for n in ["p1", "p2", "p3", "c1", "c2", "after"])
    assert rows[f"{ns}-p1"][1] == 1  # the repeat was counted, not stored again
    assert sorted(await queued(settings)) == sorted(f"d:{i}" for i in rows)


async def test_the_intake_protocol_lets_a_client_that_expects_100_continue_send_at_once(
    tmp_path: Path, db_url: str, redis_url: str, redis_namespace: str
) -> None:
    """curl sends ``Expect: 100-continue`` for a body over 1 KB and waits (a second) for the
    interim answer before sending it: the protocol gives it at once."""
    settings = await make_app_settings(tmp_path, db_url, redis_url, redis_namespace)
    body = payload()
    request = _post(body, f"{redis_namespace}-expect", extra="Expect: 100-continue\r\n")
    head, _, rest = request.partition(b"\r\n\r\n")
    async with served(settings) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head + b"\r\n\r\n")
            async with asyncio.timeout(0.8):
                interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100")
            writer.write(rest)
            async with asyncio.timeout(10):
                answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.split(b" ")[1] == b"202"
        finally:
            writer.close()
    assert list(await stored(settings)) == [f"{redis_namespace}-expect"]


async def test_bosun_web_s_protocol_answers_the_webhook_itself(
    tmp_path: Path, db_url: str, redis_url: str, redis_namespace: str
) -> None:
    """uvicorn wraps the app as ``bosun web`` and ``bosun up`` configure it; the protocol
    still finds the webhook route, so intake does not fall back to ASGI unnoticed."""
    settings = await make_app_settings(tmp_path, db_url, redis_url, redis_namespace)
    for app in (create_app(settings), create_app(settings, with_worker=True)):
        config = uvicorn.Config(app, http=IntakeProtocol, log_config=None, proxy_headers=True)
        config.load()
        assert config.loaded_app is not app  # wrapped (proxy headers)
        route = webhook_route_of(config.loaded_app)
        assert route is not None and route is app.asgi_handler
