"""Webhook deliveries: signed like GitHub's, sent by a background thread, recorded per attempt."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
import uuid
from typing import Any

import httpx

from .state import Attempt, Delivery, Store

USER_AGENT = "GitHub-Hookshot/emulator"


def sign(secret: str, body: bytes) -> tuple[str, str]:
    sha256 = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return f"sha256={sha256}", f"sha1={sha1}"


class Hooks:
    """Queues deliveries and posts them in order on one sender thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[Delivery, bool] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()
        self._idle = threading.Condition()
        self._pending = 0

    def emit(self, event: str, payload: dict[str, Any]) -> Delivery:
        repo = payload.get("repository") or {}
        installation = payload.get("installation") or {}
        delivery = Delivery(
            guid=str(uuid.uuid4()),
            event=event,
            action=payload.get("action"),
            installation_id=installation.get("id"),
            repository_id=repo.get("id"),
            payload=payload,
        )
        with self.store.lock:
            self.store.deliveries.append(delivery)
        self._enqueue(delivery, redelivery=False)
        return delivery

    def redeliver(self, delivery: Delivery) -> None:
        self._enqueue(delivery, redelivery=True)

    def _enqueue(self, delivery: Delivery, *, redelivery: bool) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put((delivery, redelivery))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                delivery, redelivery = item
                try:
                    self._send(client, delivery, redelivery)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def headers(self, delivery: Delivery, body: bytes) -> dict[str, str]:
        app = self.store.app
        assert app is not None
        sha256, sha1 = sign(app.webhook_secret, body)
        return {
            "Accept": "*/*",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-GitHub-Delivery": delivery.guid,
            "X-GitHub-Event": delivery.event,
            "X-GitHub-Hook-ID": str(app.hook_id),
            "X-GitHub-Hook-Installation-Target-ID": str(app.id),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-Hub-Signature": sha1,
            "X-Hub-Signature-256": sha256,
        }

    def _send(self, client: httpx.Client, delivery: Delivery, redelivery: bool) -> None:
        app = self.store.app
        if app is None or not app.webhook_url:
            return
        body = json.dumps(delivery.payload).encode()
        headers = self.headers(delivery, body)
        delivery.headers = headers
        started = time.monotonic()
        status, text, response_headers = 0, "", {}
        try:
            response = client.post(app.webhook_url, content=body, headers=headers)
            status, text = response.status_code, response.text[:10_000]
            response_headers = dict(response.headers)
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}"
        attempt = Attempt(
            id=self.store.ids.next("delivery"),
            delivered=time.time(),
            status_code=status,
            duration=round(time.monotonic() - started, 3),
            redelivery=redelivery,
            response_body=text,
            response_headers=response_headers,
        )
        with self.store.lock:
            delivery.attempts.append(attempt)
