"""The notification sender and the endpoint store on a real database (SQLite and PostgreSQL),
sending to an HTTP server on loopback: senders running at once never send one notification
twice; an endpoint that never answers 2xx is given up after ``max_attempts``, each attempt
logged; configured endpoints follow the settings."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade
from bot.db.models import Notification, NotificationAttempt, Repository, Run, Task, WebhookEndpoint
from bot.db.runlog import transition
from bot.domain.states import RunState
from bot.notify.outbox import install_waker
from bot.notify.sender import Sender
from bot.notify.settings import NotifySettings
from bot.notify.store import WebhookStore, sync_configured
from tests.test_notify import Receiver

SECRET = "sender-test-secret-0123456789"


async def test_concurrent_senders_send_each_notification_once(db_url: str) -> None:
    receiver = Receiver([200])
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    settings = NotifySettings(concurrency=4, timeout_seconds=5)
    try:
        async with sessions.begin() as session:
            endpoint = WebhookEndpoint(name="e", url=receiver.url, secret=SECRET)
            session.add(endpoint)
            await session.flush()
            now = datetime.now(UTC)
            for i in range(30):
                session.add(
                    Notification(
                        endpoint_id=endpoint.id,
                        delivery_id=str(uuid.uuid4()),
                        type="run.state_changed",
                        run_id=f"r{i}",
                        repository="octo/hello",
                        state="running",
                        previous_state="preparing",
                        seq=i + 1,
                        next_attempt_at=now,
                    )
                )
        async with httpx.AsyncClient() as client:
            senders = [Sender(sessions, settings, "http://bosun.test", client) for _ in range(4)]
            made = await asyncio.gather(*(s.send_due() for s in senders))
        assert sum(made) == 30
        ids = Counter(json.loads(r["body"])["id"] for r in receiver.received())
        assert len(ids) == 30 and set(ids.values()) == {1}
        async with sessions() as session:
            statuses = (await session.execute(select(Notification.status))).scalars().all()
            attempts = (await session.execute(select(NotificationAttempt))).scalars().all()
        assert set(statuses) == {"delivered"} and len(attempts) == 30
    finally:
        receiver.close()
        await engine.dispose()


async def test_an_endpoint_that_keeps_failing_is_given_up(db_url: str) -> None:
    receiver = Receiver([503])
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    settings = NotifySettings(max_attempts=3, retry_base_seconds=0.01, timeout_seconds=5)
    try:
        async with sessions.begin() as session:
            endpoint = WebhookEndpoint(name="down", url=receiver.url, secret=SECRET)
            session.add(endpoint)
            await session.flush()
            session.add(
                Notification(
                    endpoint_id=endpoint.id,
                    delivery_id="d-1",
                    type="run.finished",
                    run_id="r1",
                    repository="octo/hello",
                    state="failed",
                    previous_state="running",
                    seq=9,
                )
            )
        async with httpx.AsyncClient() as client:
            sender = Sender(sessions, settings, "http://bosun.test", client)
            for _ in range(10):
                await sender.send_due()
                await asyncio.sleep(0.05)
                async with sessions.begin() as session:  # due again at once
                    await session.execute(
                        update(Notification).values(next_attempt_at=datetime.now(UTC))
                    )
        assert len(receiver.received()) == 3
        page = await WebhookStore(sessions).deliveries(endpoint.id)
        (entry,) = page.items
        assert entry.status == "failed" and entry.next_attempt_at is None
        assert [(a.attempt, a.status_code, a.error) for a in entry.attempts] == [
            (1, 503, "HTTP 503"),
            (2, 503, "HTTP 503"),
            (3, 503, "HTTP 503"),
        ]
    finally:
        receiver.close()
        await engine.dispose()


async def test_configured_endpoints_follow_the_settings(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    store = WebhookStore(sessions)
    try:
        await store.create(
            name="kept", url="http://127.0.0.1:9/a", secret=None, events=[], repos=[]
        )
        first = NotifySettings.model_validate(
            {
                "endpoints": [
                    {"url": "http://127.0.0.1:9/x", "secret": SECRET, "repos": ["octo/*"]},
                    {"name": "y", "url": "http://127.0.0.1:9/y", "secret": SECRET},
                ]
            }
        )
        await sync_configured(sessions, first)
        await sync_configured(sessions, first)  # a second process starting: nothing changes
        names = {e.name: e for e in await store.endpoints()}
        assert set(names) == {"kept", "http://127.0.0.1:9/x", "y"}
        assert names["http://127.0.0.1:9/x"].repos == ["octo/*"]
        assert names["y"].source == "settings" and names["kept"].source == "api"
        second = NotifySettings.model_validate(
            {"endpoints": [{"name": "y", "url": "http://127.0.0.1:9/z", "secret": SECRET}]}
        )
        await sync_configured(sessions, second)
        after = {e.name: e for e in await store.endpoints()}
        assert set(after) == {"kept", "y"}
        assert after["y"].url == "http://127.0.0.1:9/z" and after["y"].id == names["y"].id
    finally:
        await engine.dispose()


async def test_the_sender_is_woken_after_the_commit_that_notifies(db_url: str) -> None:
    """A transition that wrote notifications wakes the sender once its transaction commits;
    one rolled back, or one no endpoint wants, does not."""
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    woken: list[int] = []
    install_waker(sessions, lambda: woken.append(1))
    try:
        async with sessions.begin() as session:
            repo = Repository(full_name="octo/hello")
            session.add(repo)
            await session.flush()
            task = Task(repository_id=repo.id, issue_number=1)
            session.add(task)
            await session.flush()
            session.add(Run(id="r1", task_id=task.id, repository_id=repo.id))
            session.add(WebhookEndpoint(name="e", url="http://127.0.0.1:9/", secret=SECRET,
                                        events=["run.finished"]))  # fmt: skip
        async with sessions.begin() as session:  # nobody wants run.state_changed alone
            run = await session.get(Run, "r1")
            assert run is not None
            await transition(session, run, RunState.PREPARING, actor="bosun")
        assert woken == []
        with pytest.raises(RuntimeError):
            async with sessions.begin() as session:
                run = await session.get(Run, "r1")
                assert run is not None
                await transition(session, run, RunState.FAILED, actor="bosun", reason="x")
                raise RuntimeError("rolled back")
        assert woken == []
        async with sessions.begin() as session:
            run = await session.get(Run, "r1")
            assert run is not None
            await transition(session, run, RunState.FAILED, actor="bosun", reason="x")
            assert woken == []  # not before the commit
        assert woken == [1]
        async with sessions() as session:
            rows = (await session.execute(select(Notification))).scalars().all()
        assert [(n.type, n.state, n.previous_state) for n in rows] == [
            ("run.finished", "failed", "preparing")
        ]
    finally:
        await engine.dispose()
