"""Faults on demand: each appears exactly as configured, for as many calls as configured, and
then clears; ``DELETE /_emulator/faults`` clears everything."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.emulator import schemas
from tests.emulator.world import World

pytest_plugins = ["tests.emulator.fixtures"]

ISSUE = "/repos/octo/hello/issues/1"


@pytest.fixture
def api(github_world: World) -> Iterator[httpx.Client]:
    github_world.emulator.create_issue("octo/hello", "Target", user="alice")
    token = (
        github_world.app_github()
        .rest.apps.create_installation_access_token(github_world.repo.installation_id)
        .parsed_data.token
    )
    with httpx.Client(
        base_url=github_world.emulator.base_url,
        trust_env=False,
        headers={"Authorization": f"token {token}"},
    ) as api:
        yield api


def statuses(api: httpx.Client, n: int, path: str = ISSUE) -> list[int]:
    return [api.get(path).status_code for _ in range(n)]


def test_server_errors_for_the_next_n_matching_calls(
    github_world: World, api: httpx.Client
) -> None:
    github_world.emulator.fault(
        "error", method="GET", path="/repos/*/*/issues/*", count=2, status=503
    )
    assert api.get("/repos/octo/hello").status_code == 200  # another route: untouched
    first = api.get(ISSUE)
    assert first.status_code == 503
    assert first.json()["message"] == "Service Unavailable"
    assert "x-github-request-id" in first.headers
    assert statuses(api, 2) == [503, 200]
    assert github_world.emulator._call("GET", "/faults") == []


def test_secondary_rate_limit(github_world: World, api: httpx.Client) -> None:
    github_world.emulator.fault("secondary_rate_limit", path="/repos/*", retry_after=42)
    limited = api.get("/repos/octo/hello")
    assert limited.status_code == 403
    assert limited.headers["retry-after"] == "42"
    body = limited.json()
    assert body["message"].startswith("You have exceeded a secondary rate limit")
    assert schemas.rest_errors("get", "/repos/{owner}/{repo}", 403, body) == []
    assert api.get("/repos/octo/hello").status_code == 200


def test_primary_rate_limit_exhausted(github_world: World, api: httpx.Client) -> None:
    github_world.emulator.fault("primary_rate_limit", count=2, reset_in=120)
    before = int(time.time())
    limited = api.get(ISSUE)
    assert limited.status_code == 403
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert before + 119 <= int(limited.headers["x-ratelimit-reset"]) <= before + 122
    assert limited.json()["message"].startswith("API rate limit exceeded")
    assert statuses(api, 2) == [403, 200]
    ok = api.get(ISSUE)
    assert int(ok.headers["x-ratelimit-remaining"]) > 0
    assert ok.headers["x-ratelimit-resource"] == "core"


def test_slow_responses(github_world: World, api: httpx.Client) -> None:
    github_world.emulator.fault("slow", path=ISSUE, delay_ms=400)
    started = time.monotonic()
    assert api.get(ISSUE).status_code == 200
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    api.get(ISSUE)
    assert time.monotonic() - started < 0.3


def test_token_expiry_now_and_shorter_lifetimes(github_world: World, api: httpx.Client) -> None:
    assert api.get(ISSUE).status_code == 200
    github_world.emulator.fault("expire_tokens")
    expired = api.get(ISSUE)
    assert expired.status_code == 401
    assert expired.json()["message"] == "Bad credentials"

    github_world.emulator.fault("token_lifetime", seconds=1)
    gh = github_world.app_github()
    minted = gh.rest.apps.create_installation_access_token(
        github_world.repo.installation_id
    ).parsed_data
    left = time.mktime(time.strptime(minted.expires_at, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(
        time.gmtime()
    )
    assert left <= 2
    api.headers["Authorization"] = f"Bearer {minted.token}"
    assert api.get(ISSUE).status_code == 200
    time.sleep(1.1)
    assert api.get(ISSUE).status_code == 401


def test_clear_all_faults(github_world: World, api: httpx.Client) -> None:
    em = github_world.emulator
    em.fault("error", count=None, status=500)
    em.fault("slow", count=None, delay_ms=300)
    assert api.get(ISSUE).status_code == 500
    em.clear_faults()
    started = time.monotonic()
    assert api.get(ISSUE).status_code == 200
    assert time.monotonic() - started < 0.3
    with pytest.raises(Exception, match="422"):
        em.fault("nonsense")


def test_hold_keeps_a_call_waiting_until_released(github_world: World, api: httpx.Client) -> None:
    em = github_world.emulator
    hold = em.hold("GET", ISSUE)
    answers: list[int] = []
    caller = threading.Thread(target=lambda: answers.append(api.get(ISSUE).status_code))
    caller.start()
    em.wait_held(hold)
    assert api.get("/repos/octo/hello").status_code == 200  # other calls pass meanwhile
    time.sleep(0.2)
    assert answers == [] and em.fault_info(hold)["waiting"] == 1
    em.release(hold)
    caller.join(5)
    assert answers == [200]
    assert em.fault_info(hold) | {"waiting": 0, "released": True} == em.fault_info(hold)
    assert statuses(api, 1) == [200]  # used up: the next call is not held


def test_a_response_hold_has_done_the_work_before_it_waits(
    github_world: World, api: httpx.Client
) -> None:
    em = github_world.emulator
    hold = em.hold("PATCH", ISSUE, phase="response")
    answers: list[int] = []

    def rename() -> None:
        answers.append(api.patch(ISSUE, json={"title": "Renamed"}).status_code)

    caller = threading.Thread(target=rename)
    caller.start()
    em.wait_held(hold)
    assert api.get(ISSUE).json()["title"] == "Renamed"  # done; the answer is what waits
    assert answers == []
    em.release(hold)
    caller.join(5)
    assert answers == [200]


def test_a_hold_lets_go_by_itself_after_its_timeout(github_world: World, api: httpx.Client) -> None:
    github_world.emulator.hold("GET", ISSUE, timeout_ms=300)
    started = time.monotonic()
    assert api.get(ISSUE).status_code == 200
    assert 0.3 <= time.monotonic() - started < 2
    with pytest.raises(Exception, match="422"):
        github_world.emulator.fault("hold", phase="sometime")
