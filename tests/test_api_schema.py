"""The REST API against its own OpenAPI document (issue 13), on a real Bosun (web + worker, the
GitHub emulator) with finished runs and tokens made as an operator would.

- Every route the document lists is called with valid input and answers as documented: its
  status is listed, its content type is one listed for that status, required headers are there,
  and the body validates (``jsonschema`` over the document's components). So do the problems:
  401 without a token, 403 for a token of too small a scope, 404 for what does not exist, 409
  for a conflict, 202 when the worker has not decided yet. A route added to the API and not
  here fails the test.
- Schemathesis generates requests for every operation (positive and negative data, half of
  them aimed at real resources), sent first with a read token, then with a token of the scope
  the route needs: no 5xx, every answer documented (status, content type, headers, body), valid
  data accepted, invalid data refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.stack import BosunStack
from tests.test_api import make_token, ready_run

pytestmark = pytest.mark.docker

API = "/api/v1"
SCOPES = ("read", "operate", "admin")

# Every operation of the API, as the document lists it: a route added to the API without being
# added here (and exercised below) fails test_every_route_answers_as_documented.
ROUTES = {
    ("GET", f"{API}/runs"),
    ("POST", f"{API}/runs"),
    ("GET", f"{API}/runs/{{run_id}}"),
    ("GET", f"{API}/runs/{{run_id}}/events"),
    ("GET", f"{API}/runs/{{run_id}}/artifacts"),
    ("GET", f"{API}/runs/{{run_id}}/artifacts/{{name}}"),
    ("GET", f"{API}/runs/{{run_id}}/diff"),
    ("GET", f"{API}/runs/{{run_id}}/approvals"),
    ("GET", f"{API}/runs/{{run_id}}/audit"),
    ("GET", f"{API}/runs/{{run_id}}/events/stream"),
    ("GET", f"{API}/events/stream"),
    ("POST", f"{API}/runs/{{run_id}}/cancel"),
    ("POST", f"{API}/runs/{{run_id}}/retry"),
    ("POST", f"{API}/runs/{{run_id}}/approve"),
    ("POST", f"{API}/runs/{{run_id}}/reject"),
    ("POST", f"{API}/runs/{{run_id}}/hold"),
    ("POST", f"{API}/runs/{{run_id}}/unhold"),
    ("POST", f"{API}/runs/{{run_id}}/budget"),
    ("POST", f"{API}/runs/{{run_id}}/resume"),
    ("POST", f"{API}/runs/{{run_id}}/steer"),
    ("GET", f"{API}/repositories"),
    ("POST", f"{API}/repositories"),
    ("GET", f"{API}/repositories/{{owner}}/{{name}}"),
    ("PATCH", f"{API}/repositories/{{owner}}/{{name}}"),
    ("GET", f"{API}/profiles"),
    ("GET", f"{API}/tasks"),
    ("GET", f"{API}/tasks/{{task_id}}"),
    ("POST", f"{API}/tasks"),
    ("PATCH", f"{API}/tasks/{{task_id}}"),
    ("GET", f"{API}/audit"),
    ("GET", f"{API}/tokens"),
    ("POST", f"{API}/tokens"),
    ("DELETE", f"{API}/tokens/{{name}}"),
    ("GET", f"{API}/webhooks"),
    ("POST", f"{API}/webhooks"),
    ("GET", f"{API}/webhooks/{{webhook_id}}"),
    ("DELETE", f"{API}/webhooks/{{webhook_id}}"),
    ("GET", f"{API}/webhooks/{{webhook_id}}/deliveries"),
}


def scope_of(method: str, path: str) -> str:
    """The scope a route needs (the ``opt`` of its controller or handler)."""
    if path.startswith((f"{API}/tokens", f"{API}/webhooks")):
        return "admin"
    if (method, path) == ("POST", f"{API}/repositories"):
        return "admin"
    if method == "PATCH":
        return "operate" if path.startswith(f"{API}/tasks") else "admin"
    return "operate" if method == "POST" else "read"


def path_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


# --- what the document says ----------------------------------------------------------------

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339: a date, a time and a zone."""
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


def _media_matches(documented: str, received: str) -> bool:
    want, got = documented.split("/"), received.split("/")
    return all(w in ("*", g) for w, g in zip(want, got, strict=True))


def conform(doc: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """``response`` is an answer the document describes for ``method path``."""
    documented = doc["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    where = f"{method} {response.request.url} -> {status}: {_text(response)}"
    assert status in documented, f"undocumented status (documented {sorted(documented)}); {where}"
    spec = documented[status]
    for name, header in (spec.get("headers") or {}).items():
        if header.get("required"):
            assert name in response.headers, f"missing header {name}; {where}"
    content = spec.get("content")
    if not content:
        assert not response.content, where
        return
    received = response.headers["content-type"].split(";")[0].strip()
    media = next((m for m in content if _media_matches(m, received)), None)
    assert media is not None, f"content type {received} is not one of {sorted(content)}; {where}"
    if received.endswith("json"):
        schema = {**content[media]["schema"], "components": doc["components"]}
        validator = Draft202012Validator(schema, format_checker=FORMATS)
        errors = [
            f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.json())
        ]
        assert not errors, f"{where}\n" + "\n".join(errors)


def _text(response: httpx.Response) -> str:
    try:
        return response.text[:400]
    except httpx.ResponseNotRead:
        return "(a stream, read in part)"


def validate(doc: dict[str, Any], component: str, instance: object) -> None:
    """``instance`` is a ``component`` of the document (``RunSummary``, ``EventOut``, …)."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    errors = list(Draft202012Validator(schema, format_checker=FORMATS).iter_errors(instance))
    assert not errors, f"{component}: {instance}\n" + "\n".join(e.message for e in errors)


def read_events(
    http: httpx.Client, url: str, until: str, headers: dict[str, str] | None = None, **params: Any
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """Server-Sent Events from ``url`` up to the first ``until`` event: ``{id, event, data}``
    each, ``data`` parsed."""
    events: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    with http.stream("GET", url, params=params, headers=headers) as response:
        for line in response.iter_lines():
            if line:
                key, _, value = line.partition(":")
                frame[key] = value.strip()
                continue
            if "event" in frame:
                events.append({**frame, "data": json.loads(frame["data"])})
                if frame["event"] == until:
                    break
            frame = {}
    return response, events


def routes_of(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in doc["paths"].items()
        if path.startswith(API + "/")
        for method in operations
        if method in ("get", "put", "post", "patch", "delete")
    }


# --- a live Bosun --------------------------------------------------------------------------


@dataclass
class Bosun:
    stack: BosunStack
    tokens: dict[str, str]
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        """The names of the tokens the tests use."""
        return {f"schema-{scope}" for scope in self.tokens}

    def client(self, scope: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"} if scope else {}
        return httpx.Client(base_url=self.stack.url, headers=headers, timeout=60)


@pytest.fixture
def bosun(stack: BosunStack) -> Iterator[Bosun]:
    tokens = {scope: make_token(stack, f"schema-{scope}", scope) for scope in SCOPES}
    doc = httpx.get(f"{stack.url}/api/openapi.json", timeout=30).json()
    yield Bosun(stack, tokens, doc)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    values: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    expect: int = 200

    @property
    def route(self) -> tuple[str, str]:
        return (self.method, self.path)

    def send(self, http: httpx.Client, **values: Any) -> httpx.Response:
        url = self.path.format(**{**self.values, **values})
        return http.request(self.method, url, params=self.params, json=self.json)


def test_every_route_answers_as_documented(bosun: Bosun, tmp_path: Path) -> None:
    stack, doc = bosun.stack, bosun.doc
    local = tmp_path / "described"
    local.mkdir()
    for argv in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=u", "-c", "user.email=u@example.invalid", *argv],
            cwd=local,
            check=True,
        )
    assert routes_of(doc) == ROUTES, "a route was added or removed: add it to ROUTES and below"
    first = ready_run(stack, "Described")
    second = ready_run(stack, "Retried")
    new_issue = stack.emulator.create_issue(stack.repo, "Started", "Do it.", "alice")
    owner, name = stack.repo.split("/")
    run, repo = {"run_id": first["id"]}, {"owner": owner, "name": name}
    with bosun.client("read") as http:
        task_id = http.get(f"{API}/runs/{first['id']}").json()["task_id"]
    hook = {"name": "described", "url": "http://127.0.0.1:9/hook", "repos": [stack.repo]}
    with bosun.client("admin") as http:
        webhook = {"webhook_id": http.post(f"{API}/webhooks", json=hook).json()["id"]}
    reads = [
        Call("GET", f"{API}/runs", params={"repo": stack.repo, "state": "review_ready"}),
        Call("GET", f"{API}/runs/{{run_id}}", run),
        Call("GET", f"{API}/runs/{{run_id}}/events", run, params={"after_seq": 2, "limit": 3}),
        Call("GET", f"{API}/runs/{{run_id}}/artifacts", run),
        Call("GET", f"{API}/runs/{{run_id}}/artifacts/{{name}}", {**run, "name": "transcript"}),
        Call("GET", f"{API}/runs/{{run_id}}/diff", run, params={"max_bytes": 100_000}),
        Call("GET", f"{API}/runs/{{run_id}}/approvals", run),
        Call("GET", f"{API}/runs/{{run_id}}/audit", run, params={"limit": 5}),
        Call("GET", f"{API}/repositories"),
        Call("GET", f"{API}/repositories/{{owner}}/{{name}}", repo),
        Call("GET", f"{API}/profiles"),
        Call("GET", f"{API}/tasks", params={"repo": stack.repo}),
        Call("GET", f"{API}/tasks/{{task_id}}", {"task_id": task_id}),
        Call("GET", f"{API}/audit", params={"repo": stack.repo}),
    ]
    admin = [
        Call("GET", f"{API}/tokens"),
        Call(
            "POST",
            f"{API}/tokens",
            json={"name": "described", "scope": "read", "repos": [stack.repo], "expires_in": "2d"},
            expect=201,
        ),
        Call("DELETE", f"{API}/tokens/{{name}}", {"name": "described"}),
        Call("PATCH", f"{API}/repositories/{{owner}}/{{name}}", repo, json={"enabled": True}),
        Call("POST", f"{API}/repositories", json={"path": str(local)}, expect=201),
        Call("GET", f"{API}/webhooks"),
        Call("POST", f"{API}/webhooks", json={**hook, "name": "second"}, expect=201),
        Call("GET", f"{API}/webhooks/{{webhook_id}}", webhook),
        Call("GET", f"{API}/webhooks/{{webhook_id}}/deliveries", webhook, params={"limit": 5}),
        Call("DELETE", f"{API}/webhooks/{{webhook_id}}", webhook),
    ]
    # Decided by the worker as the comment commands are, in an order where each is allowed or
    # refused by the run's state (409); wait=0 answers 202 before the worker has decided.
    local_task = {"repository": "local/described", "title": "Described", "focus": ["src/**"]}
    actions = [
        Call("POST", f"{API}/tasks", json=local_task, expect=201),
        Call(
            "PATCH",
            f"{API}/tasks/{{task_id}}",
            {"task_id": task_id + 10_000},
            json={"priority": 3},
            expect=404,
        ),
        Call("POST", f"{API}/runs/{{run_id}}/hold", run, params={"wait": 0}, expect=202),
        Call("POST", f"{API}/runs/{{run_id}}/unhold", run, params={"wait": 10}),
        Call("POST", f"{API}/runs/{{run_id}}/budget", run, json={"add_usd": 2.5}),
        Call("POST", f"{API}/runs/{{run_id}}/cancel", run, expect=409),
        Call("POST", f"{API}/runs/{{run_id}}/resume", run, expect=409),
        Call("POST", f"{API}/runs/{{run_id}}/steer", run, json={"message": "use v2"}, expect=409),
        Call("POST", f"{API}/runs/{{run_id}}/approve", run, json={"sha": first["head_sha"]}),
        Call("POST", f"{API}/runs/{{run_id}}/reject", run, json={"reason": "not this way"}),
        Call(
            "POST",
            f"{API}/runs/{{run_id}}/retry",
            {"run_id": second["id"]},
            json={"feedback": "again"},
        ),
        Call(
            "POST",
            f"{API}/runs",
            json={"repository": stack.repo, "issue_number": new_issue, "instructions": "Briefly."},
            expect=201,
        ),
    ]
    answered: set[tuple[str, str]] = set()
    for scope, calls in (("read", reads), ("admin", admin), ("operate", actions)):
        with bosun.client(scope) as http:
            for call in calls:
                response = call.send(http)
                assert response.status_code == call.expect, f"{call}: {response.text[:400]}"
                conform(doc, call.method, call.path, response)
                answered.add(call.route)
                if call.route == ("POST", f"{API}/runs/{{run_id}}/hold"):
                    stack.wait_for(
                        lambda: stack.db("SELECT on_hold FROM runs WHERE id=?", first["id"])[0][0],
                        30,
                        "the hold",
                    )
    # Live events, once the first run has ended (rejected): its whole history, then `end`.
    streams = [
        Call("GET", f"{API}/runs/{{run_id}}/events/stream", run),
        Call("GET", f"{API}/events/stream", params={"repo": stack.repo}),
    ]
    with bosun.client("read") as http:
        response, events = read_events(http, f"{API}/runs/{first['id']}/events/stream", "end")
        conform(doc, "GET", streams[0].path, response)
        history = [e for e in events if e["event"] != "end"]
        assert [int(e["id"]) for e in history] == list(range(1, len(history) + 1))
        for event in history:
            validate(doc, "EventOut", event["data"])
        assert events[-1]["data"]["state"] == "rejected"
        assert events[-1]["data"]["last_seq"] == len(history)
        # A resume point past any sequence number is ignored (it was a 500).
        bogus = {"Last-Event-ID": str(10**20)}
        url = f"{API}/runs/{first['id']}/events/stream"
        _, again = read_events(http, url, "end", headers=bogus)
        assert again == events
        _, tail = read_events(http, url, "end", after_seq=len(history) - 1)
        assert [e["event"] for e in tail] == [history[-1]["event"], "end"]
        response, events = read_events(http, streams[1].path, "run", repo=stack.repo)
        conform(doc, "GET", streams[1].path, response)
        validate(doc, "RunSummary", events[-1]["data"])
        answered |= {call.route for call in streams}
    assert answered == ROUTES

    with bosun.client("read") as http:
        listed = {a["name"]: a for a in http.get(f"{API}/runs/{first['id']}/artifacts").json()}
        for name in ("transcript", "diff", "manifest.json"):
            artifact = http.get(f"{API}/runs/{first['id']}/artifacts/{name}")
            digest = hashlib.sha256(artifact.content).hexdigest()
            assert artifact.headers["x-content-sha256"] == digest == listed[name]["sha256"]
            assert artifact.headers["content-type"].split(";")[0] == listed[name]["content_type"]
        retried = http.get(f"{API}/runs/{second['id']}").json()
        assert retried["state"] == "rejected" and retried["lineage"]["children"]
        # The runs the retry and the start began finish before the stack stops.
        stack.wait_run({"review_ready"}, 120, count=2)

    # The documented problems, on every route: no token, too small a scope, nothing there.
    samples = {call.route: call for call in reads + admin + actions + streams}
    missing = {"run_id": "r0000", "owner": "octo", "name": "absent", "task_id": 999_999}
    missing["webhook_id"] = 999_999
    with (
        bosun.client(None) as anonymous,
        bosun.client("read") as reader,
        bosun.client("admin") as admin_http,
    ):
        for route, call in sorted(samples.items()):
            answer = call.send(anonymous)
            assert answer.status_code == 401, (route, answer.text)
            conform(doc, *route, answer)
            if scope_of(*route) != "read":
                answer = call.send(reader)
                assert answer.status_code == 403, (route, answer.text)
                conform(doc, *route, answer)
            if call.values:
                answer = call.send(admin_http, **{key: missing[key] for key in call.values})
                assert answer.status_code == 404, (route, answer.text)
                conform(doc, *route, answer)
        other = admin_http.put(f"{API}/runs")
        assert other.status_code == 405 and {"GET", "POST"} <= set(
            other.headers["allow"].split(", ")
        )
        assert other.json()["type"] == f"{API}/problems/method-not-allowed"
        duplicate = admin_http.post(f"{API}/tokens", json={"name": "schema-read"})
        assert duplicate.status_code == 409
        conform(doc, "POST", f"{API}/tokens", duplicate)
        # What the generated requests found (a 500, a 202 that never resolved, values the
        # document allowed and the server refused, or the other way round): each a 400 now,
        # naming the field.
        huge, tokens, runs = 10**20, f"{API}/tokens", f"{API}/runs"
        found = [
            ("name", Call("POST", tokens, json={"name": "-"})),
            ("expires_in", Call("POST", tokens, json={"name": "x", "expires_in": "99999999w"})),
            ("task_id", Call("GET", f"{API}/tasks/{{task_id}}", {"task_id": -huge})),
            ("task_id", Call("GET", f"{API}/tasks/{{task_id}}", {"task_id": huge})),
            ("after_seq", Call("GET", f"{runs}/{{run_id}}/events", run, {"after_seq": huge})),
            ("since", Call("GET", runs, params={"since": "1700000000"})),
            ("repository", Call("POST", runs, json={"repository": "octo/..", "issue_number": 1})),
            ("issue_number", Call("POST", runs, json={"repository": "a/b", "issue_number": huge})),
            ("issue_number", Call("POST", runs, json={"repository": "a/b", "issue_number": "12"})),
            ("add_usd", Call("POST", f"{runs}/{{run_id}}/budget", run, json={"add_usd": 0.001})),
            (
                "enabled",
                Call("PATCH", f"{API}/repositories/{{owner}}/{{name}}", repo, json={"enabled": 1}),
            ),
        ]
        for field_name, call in found:
            invalid = call.send(admin_http)
            assert invalid.status_code == 400, (call, invalid.text)
            assert field_name in {e["field"] for e in invalid.json()["errors"]}, invalid.text
            conform(doc, call.method, call.path, invalid)
        for since, count in (("2020-01-01T02:00:00+02:00", 4), ("2999-01-01T00:00:00Z", 0)):
            page = admin_http.get(runs, params={"since": since})
            assert len(page.json()["items"]) == count, page.text


# --- generated requests --------------------------------------------------------------------

MAX_EXAMPLES = 25


def strategy_for(operation: APIOperation, real: dict[str, Any]) -> st.SearchStrategy[Case]:
    """Positive and negative cases; where the path has parameters, most name real resources
    (a random run id only ever reaches the 404, a real one reaches the handler)."""
    positive, negative = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    strategies = [operation.as_strategy(generation_mode=positive)]
    strategies.append(operation.as_strategy(generation_mode=negative))
    if real:
        aimed = operation.as_strategy(generation_mode=positive, path_parameters=real)
        strategies += [aimed, aimed, aimed]
        strategies.append(operation.as_strategy(generation_mode=negative, path_parameters=real))
    return st.one_of(strategies)


def outcome(response: schemathesis.Response) -> int | str:
    """A success's status, or a problem's type (``invalid-cursor``, ``conflict``, …)."""
    if response.status_code < 400:
        return response.status_code
    return str(response.json()["type"]).rsplit("/", 1)[-1]


def test_generated_requests_get_documented_answers(bosun: Bosun, tmp_path: Path) -> None:
    stack = bosun.stack
    run = ready_run(stack, "Fuzzed")
    fuzzed = tmp_path / "fuzzed"  # a local repository, so generated tasks can be created
    fuzzed.mkdir()
    for argv in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=u", "-c", "user.email=u@example.invalid", *argv],
            cwd=fuzzed,
            check=True,
        )
    with bosun.client("admin") as http:
        added = http.post(f"{API}/repositories", json={"path": str(fuzzed)})
        assert added.status_code == 201, added.text
        local_repo = added.json()["full_name"]
    make_token(stack, "victim", "read")  # revoked (again and again) by DELETE /tokens/victim
    owner, name = stack.repo.split("/")
    with bosun.client("read") as http:
        task_id = http.get(f"{API}/runs/{run['id']}").json()["task_id"]
    hook = {"url": "http://127.0.0.1:9/hook", "repos": [stack.repo]}
    with bosun.client("admin") as http:  # one kept, one deleted (again and again)
        kept, victim = (
            http.post(f"{API}/webhooks", json={**hook, "name": label}).json()["id"]
            for label in ("kept", "victim")
        )

    def spare(case: Case) -> None:
        """Deletes aim at the victims, never at what the fuzz itself stands on."""
        target = case.path_parameters or {}
        if case.method.upper() == "DELETE" and target.get("webhook_id") == kept:
            target["webhook_id"] = victim
        if case.method.upper() == "DELETE" and target.get("name") in bosun.names:
            target["name"] = "victim"
        tasks = (case.method.upper(), case.path) == ("POST", f"{API}/tasks")
        # Random names reach no repository: half the generated tasks go to the real one.
        if tasks and isinstance(case.body, dict) and len(str(case.body.get("title"))) % 2 == 0:
            case.body["repository"] = local_repo

    def real(method: str, path: str) -> dict[str, Any]:
        values: dict[str, Any] = {"run_id": run["id"], "owner": owner, "task_id": task_id}
        values["webhook_id"] = victim if method == "DELETE" else kept
        if "/artifacts/" in path:
            values["name"] = "transcript"
        elif path.startswith(f"{API}/repositories/"):
            values["name"] = name
        else:
            values["name"] = "victim"
        return {key: values[key] for key in path_names(path)}

    # The token goes in every request (below): generated Authorization headers would only
    # make every case a 401. A live stream is read up to its first event (or half a second
    # of silence).
    config = schemathesis.Config.from_dict(
        {"generation": {"with-security-parameters": False}, "max-stream-events": 1}
    )
    schema = schemathesis.openapi.from_url(f"{stack.url}/api/openapi.json", config=config)
    failures: dict[str, BaseException] = {}
    answers: dict[str, Counter[int | str]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        seen = answers.setdefault(operation.label, Counter())

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy_for(operation, real(operation.method.upper(), operation.path)))
        def check(case: Case) -> None:
            # A cursor is opaque: the document cannot say which strings are one.
            opaque = [positive_data_acceptance] if "cursor" in (case.query or {}) else []
            needed = scope_of(case.method.upper(), case.path)
            timeout = 0.5 if case.path.endswith("/stream") else 60
            spare(case)
            for scope in dict.fromkeys(("read", needed)):
                headers = {"Authorization": f"Bearer {bosun.tokens[scope]}"}
                response = case.call_and_validate(
                    headers=headers, excluded_checks=opaque, timeout=timeout
                )
                seen[outcome(response)] += 1  # noqa: B023 -- called before the loop moves on

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 -- all reported below
            failures[operation.label] = exc
    for label, seen in sorted(answers.items()):
        print(f"{label}: {dict(seen)}")
    assert not failures, "\n\n".join(f"{label}:\n{exc}" for label, exc in failures.items())
    assert set(answers) == {f"{method} {path}" for method, path in ROUTES}
    # Each handler was reached and decided, not only refused at the door.
    door = {"invalid-request", "unauthenticated", "forbidden", "not-found"}
    unreached = {label for label, seen in answers.items() if not set(seen) - door}
    assert not unreached, {label: dict(answers[label]) for label in unreached}
