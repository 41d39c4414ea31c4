"""The redelivery sweeper (SPEC §3.1): what to ask GitHub for again, decided purely; and end to
end, deliveries sent while Bosun was down reach it once it is back, and start the run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from githubkit.exception import RequestFailed

from jobs.deliveries import sweeper
from jobs.deliveries.sweeper import Attempt, next_cursor, to_redeliver
from tests.emulator.world import World
from tests.stack import StackPlace, free_port, make_stack_settings, running_stack

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def attempt(id_: int, guid: str, minutes: int, status: int) -> Attempt:
    return Attempt(id_, guid, T0 + timedelta(minutes=minutes), status)


def test_only_never_delivered_and_unknown_guids_are_asked_for_again() -> None:
    attempts = [
        attempt(1, "down-then-ok", 0, 0),
        attempt(2, "down-then-ok", 5, 202),  # a later attempt succeeded
        attempt(3, "failed-twice", 1, 0),
        attempt(4, "failed-twice", 6, 503),  # the newest failed attempt is the one to retry
        attempt(5, "stored-anyway", 2, 0),  # Bosun has it (its answer was lost): leave it
        attempt(6, "never", 3, 500),
    ]
    chosen = to_redeliver(attempts, stored={"stored-anyway"}, limit=10)
    assert [(a.guid, a.id) for a in chosen] == [("failed-twice", 4), ("never", 6)]
    assert [a.guid for a in to_redeliver(attempts, set(), limit=1)] == ["failed-twice"]
    assert to_redeliver([], set(), limit=10) == []


def test_deliveries_sent_while_bosun_was_down_start_the_run_once_it_is_back(
    place: StackPlace,
) -> None:
    world = place.world
    port = free_port()  # nothing listens here yet: every delivery fails to connect
    world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
    repo = world.repo.full_name
    number = world.emulator.create_issue(repo, "While down", "Please change it.", "alice")
    world.emulator.add_labels(repo, number, ["bosun"], "alice")
    failed = [d for d in world.emulator.deliveries() if d["event"] == "issues"]
    assert failed and all(a["status_code"] == 0 for d in failed for a in d["attempts"])

    settings = make_stack_settings(
        place.tmp_path, world, place.redis_url, place.namespace, place.work_root, port
    )
    with running_stack(settings, world, port) as stack:  # the worker sweeps at start
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
        assert run["state"] == "review_ready", run
        labeled = next(d for d in stack.emulator.deliveries() if d.get("action") == "labeled")
        codes = [a["status_code"] for a in labeled["attempts"]]
        assert codes[0] == 0 and 202 in codes[1:]  # failed, then redelivered and accepted
        stored = stack.db("SELECT id, redeliveries FROM deliveries WHERE id=?", labeled["guid"])
        assert stored == [(labeled["guid"], 0)]  # first seen by Bosun on the redelivery
        assert len(stack.runs()) == 1


def test_the_next_cursor_is_taken_from_the_link_header_as_written() -> None:
    link = (
        '<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_ab%2Bcd>; rel="next", '
        '<https://api.github.com/app/hook/deliveries?per_page=2>; rel="first"'
    )
    assert next_cursor(link) == "v1_ab+cd"
    assert next_cursor('<https://x/app/hook/deliveries?per_page=2>; rel="first"') is None
    assert next_cursor(None) is None and next_cursor("") is None


async def test_the_sweeper_pages_by_the_opaque_cursor_github_hands_out(
    github_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page after page by the ``Link`` header's cursor: every attempt is listed once. The
    emulator's cursors are opaque, so a sweeper that built one from the last id it saw would
    be refused here (as by GitHub) instead of passing by luck."""
    em = github_world.emulator
    for n in range(5):
        em.create_issue(github_world.repo.full_name, f"Issue {n}", "body", "alice")
    sent = [(d["guid"], a["id"]) for d in em.deliveries() for a in d["attempts"]]
    assert len(sent) >= 5
    gh = github_world.app_github()
    listed = gh.rest.apps.list_webhook_deliveries(per_page=2)
    assert len(listed.parsed_data) == 2
    guessed = str(listed.parsed_data[-1].id)
    with pytest.raises(RequestFailed) as refused:
        gh.rest.apps.list_webhook_deliveries(per_page=2, cursor=guessed)
    assert refused.value.response.status_code == 422

    monkeypatch.setattr(sweeper, "PAGE", 2)
    calls: list[dict[str, object]] = []
    original = gh.rest.apps.async_list_webhook_deliveries

    async def counted(**kwargs: object) -> object:
        calls.append(kwargs)
        return await original(**kwargs)

    monkeypatch.setattr(gh.rest.apps, "async_list_webhook_deliveries", counted)
    attempts = await sweeper._recent_attempts(gh, T0 - timedelta(days=3650))
    assert sorted((a.guid, a.id) for a in attempts) == sorted(sent)
    assert len(calls) == (len(sent) + 1) // 2  # one request per page, none past the last
    assert all(str(c.get("cursor", "v1_")).startswith("v1_") for c in calls)
