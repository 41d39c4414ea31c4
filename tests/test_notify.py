"""Outbound webhooks on a real Bosun (web + worker, the GitHub emulator), to small HTTP servers on
loopback started by the test: a notification survives an endpoint's failures and arrives
exactly once more, identical and correctly signed; it never carries a secret or file content;
filters by type and repository hold; endpoints are managed through the API (admin only) and
their delivery log shows every attempt; an endpoint that hangs slows no run."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bot.domain.states import RunState
from bot.notify.outbox import repo_matches, types_of, wanted
from bot.notify.sender import sign
from tests.stack import BosunStack, StackPlace, open_stack
from tests.test_api import client, make_token

pytestmark = pytest.mark.docker

FLAKY_SECRET = "flaky-endpoint-secret-0123456789"
EVERY_SECRET = "every-endpoint-secret-0123456789"
OTHER_SECRET = "other-endpoint-secret-0123456789"
HANG_SECRET = "hang-endpoint-secret-0123456789"
NEVER_IN_A_NOTIFICATION = (
    FLAKY_SECRET,
    EVERY_SECRET,
    OTHER_SECRET,
    HANG_SECRET,
    "webhook-secret",
    "PRIVATE KEY",
    "Edited by the agent",
    "def feature",
    "Please change it",
)


class Receiver:
    """An HTTP endpoint on loopback that records what it is sent and answers from a script
    (the last answer repeats); ``hang`` seconds before answering."""

    def __init__(self, answers: list[int], hang: float = 0.0) -> None:
        self.answers = answers
        self.hang = hang
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    index = len(receiver.requests)
                    receiver.requests.append(
                        {"headers": dict(self.headers), "body": body, "at": time.monotonic()}
                    )
                    status = receiver.answers[min(index, len(receiver.answers) - 1)]
                time.sleep(receiver.hang)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {
        "flaky": Receiver([500, 500, 200]),
        "every": Receiver([200]),
        "other": Receiver([200]),
        "hang": Receiver([200], hang=30),
        "finished": Receiver([200]),
    }
    yield made
    for receiver in made.values():
        receiver.close()


@pytest.fixture
def notifying(
    place: StackPlace,
    receivers: dict[str, Receiver],
) -> Iterator[BosunStack]:
    endpoints = [
        {"name": "flaky", "url": receivers["flaky"].url, "secret": FLAKY_SECRET,
         "events": ["run.review_ready"]},
        {"name": "every", "url": receivers["every"].url, "secret": EVERY_SECRET},
        {"name": "other", "url": receivers["other"].url, "secret": OTHER_SECRET,
         "repos": ["someone-else/*"]},
        {"name": "hang", "url": receivers["hang"].url, "secret": HANG_SECRET,
         "events": ["run.review_ready"], "repos": ["octo/*"]},
    ]  # fmt: skip
    notify = {
        "endpoints": endpoints,
        "retry_base_seconds": 0.2,
        "sweep_seconds": 1,
        "timeout_seconds": 1.5,
    }
    with open_stack(*place, notify=notify) as stack:
        yield stack


def verified(request: dict[str, Any], secret: str) -> dict[str, Any]:
    """The request's JSON body, once its signature checks out as a receiver checks it."""
    body: bytes = request["body"]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Bosun-Signature-256"], expected)
    document: dict[str, Any] = json.loads(body)
    assert request["headers"]["X-Bosun-Delivery"] == document["id"]
    assert request["headers"]["X-Bosun-Event"] == document["type"]
    assert abs(int(request["headers"]["X-Bosun-Timestamp"]) - time.time()) < 300
    return document


def test_notifications_are_signed_retried_filtered_and_thin(
    notifying: BosunStack, receivers: dict[str, Receiver]
) -> None:
    stack = notifying
    admin = make_token(stack, "admin", "admin")
    reader = make_token(stack, "reader", "read")
    operator = make_token(stack, "operator", "operate")

    # Endpoints through the API: admin only; the configured ones are listed, never a secret.
    with client(stack, reader) as http:
        assert http.get("/webhooks").status_code == 403
    with client(stack, admin) as http:
        listed = http.get("/webhooks").json()
        assert {w["name"]: w["source"] for w in listed} == {
            "flaky": "settings", "every": "settings", "other": "settings", "hang": "settings",
        }  # fmt: skip
        assert "secret" not in json.dumps(listed)
        created = http.post(
            "/webhooks",
            json={"name": "finished", "url": receivers["finished"].url,
                  "events": ["run.finished"], "repos": ["OCTO/hello"]},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        finished = created.json()
        assert len(finished["secret"]) >= 32 and finished["source"] == "api"
        assert http.post("/webhooks", json={"name": "x", "url": "ftp://h/"}).status_code == 400
        duplicate = http.post("/webhooks", json={"name": "every", "url": receivers["every"].url})
        assert duplicate.status_code == 409
        configured = next(w for w in listed if w["name"] == "flaky")
        assert http.delete(f"/webhooks/{configured['id']}").status_code == 409

    # A run: labelled, worked on, ready for review while the flaky endpoint fails and the
    # hanging one holds its attempts for their whole timeout.
    started = time.monotonic()
    number = stack.emulator.create_issue(stack.repo, "Notify", "Please change it.", "alice")
    stack.label(number)
    (run,) = stack.wait_run({"review_ready"}, 120)
    took = time.monotonic() - started

    flaky = stack.wait_for(
        lambda: (got := receivers["flaky"].received()) and len(got) >= 3 and got, 30,
        "three attempts at the flaky endpoint",
    )  # fmt: skip
    time.sleep(3)  # three more sweeps: a delivered notification is never sent again
    flaky = receivers["flaky"].received()
    assert len(flaky) == 3
    documents = [verified(r, FLAKY_SECRET) for r in flaky]
    assert len({r["body"] for r in flaky}) == 1  # every retry is the same bytes
    (document,) = {json.dumps(d, sort_keys=True): d for d in documents}.values()
    assert document["type"] == "run.review_ready"
    assert set(document) == {"id", "type", "occurred_at", "run"}
    assert document["run"] == {
        "id": run["id"],
        "repository": stack.repo,
        "state": "review_ready",
        "previous_state": "gates",
        "seq": document["run"]["seq"],
        "url": f"{stack.url}/api/v1/runs/{run['id']}",
    }
    # The receiver reads the rest from the API, as a token holder.
    with httpx.Client(headers={"Authorization": f"Bearer {reader}"}, timeout=30) as http:
        detail = http.get(document["run"]["url"]).json()
    assert detail["state"] == "review_ready"
    # The wrong secret does not verify.
    assert flaky[0]["headers"]["X-Bosun-Signature-256"] != sign(EVERY_SECRET, flaky[0]["body"])

    # Filters: every type for `every` (one per transition so far, plus review_ready); nothing
    # for another repository's endpoint; `finished` waits for the end.
    every = stack.wait_for(
        lambda: (got := receivers["every"].received()) and len(got) >= 5 and got, 30,
        "the unfiltered endpoint's notifications",
    )  # fmt: skip
    kinds = [(d["type"], d["run"]["state"]) for d in (verified(r, EVERY_SECRET) for r in every)]
    assert sorted(kinds) == sorted(
        [("run.state_changed", s) for s in ("preparing", "running", "gates", "review_ready")]
        + [("run.review_ready", "review_ready")]
    )
    assert receivers["other"].received() == []
    assert receivers["finished"].received() == []

    # The hanging endpoint slowed nothing: the run was ready while its attempts were timing
    # out, and the other endpoints were served meanwhile.
    assert took < 90
    with client(stack, admin) as http:
        hang_id = next(w["id"] for w in http.get("/webhooks").json() if w["name"] == "hang")
        hang_log = stack.wait_for(
            lambda: (items := http.get(f"/webhooks/{hang_id}/deliveries").json()["items"])
            and items[0]["attempts"] and items,
            30, "an attempt at the hanging endpoint",
        )  # fmt: skip
    assert hang_log[0]["status"] == "pending"
    assert hang_log[0]["attempts"][0]["status_code"] is None
    assert "Timeout" in hang_log[0]["attempts"][0]["error"]

    # The run ends: `finished` gets run.finished, signed with the secret the API gave out.
    with client(stack, operator) as http:
        assert http.post(f"/runs/{run['id']}/reject", json={"reason": "no"}).status_code == 200
    (done,) = stack.wait_for(
        lambda: receivers["finished"].received(), 30, "the run.finished notification"
    )
    assert verified(done, finished["secret"])["run"]["state"] == "rejected"
    assert verified(done, finished["secret"])["type"] == "run.finished"

    # The delivery log: three attempts, one success; the endpoint's counts.
    with client(stack, admin) as http:
        flaky_id = next(w["id"] for w in http.get("/webhooks").json() if w["name"] == "flaky")
        log = http.get(f"/webhooks/{flaky_id}/deliveries").json()
        assert log["next_cursor"] is None
        (entry,) = log["items"]
        assert entry["id"] == document["id"] and entry["status"] == "delivered"
        assert [a["status_code"] for a in entry["attempts"]] == [500, 500, 200]
        assert [a["attempt"] for a in entry["attempts"]] == [1, 2, 3]
        assert entry["attempts"][0]["error"] == "HTTP 500"
        assert sum(1 for a in entry["attempts"] if a["status_code"] == 200) == 1
        assert entry["delivered_at"] is not None and entry["next_attempt_at"] is None
        assert http.get("/webhooks/999999/deliveries").status_code == 404
        # An endpoint added through the API can be deleted, with its log.
        assert http.delete(f"/webhooks/{finished['id']}").status_code == 200
        assert http.get(f"/webhooks/{finished['id']}").status_code == 404

    # Nothing secret, nothing from the repository, ever left Bosun.
    for receiver in receivers.values():
        for request in receiver.received():
            text = request["body"].decode() + json.dumps(request["headers"])
            for needle in NEVER_IN_A_NOTIFICATION:
                assert needle not in text


def test_which_notifications_a_move_produces() -> None:
    assert types_of(RunState.RUNNING) == ["run.state_changed"]
    assert types_of(RunState.REVIEW_READY) == ["run.state_changed", "run.review_ready"]
    assert types_of(RunState.MERGED) == ["run.state_changed", "run.finished"]
    assert repo_matches([], "octo/hello")
    assert repo_matches(["OCTO/*"], "octo/hello")
    assert not repo_matches(["octo/other"], "octo/hello")
    assert wanted(["run.finished"], [], "run.finished", "a/b")
    assert not wanted(["run.finished"], [], "run.review_ready", "a/b")
    assert not wanted([], ["c/*"], "run.finished", "a/b")
