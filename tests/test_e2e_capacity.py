"""End to end: capacity caps and scope locks with Bosun's real web + worker, Redis, Docker and
the GitHub emulator. A run that may not start stays queued and says where it stands on its
issue; it starts once the run before it ends."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from tests.services import docker_client
from tests.stack import (
    PROFILES,
    BosunStack,
    StackPlace,
    free_port,
    make_stack_settings,
    running_stack,
)

SLOW_EDIT = ["sh", "-c", "sleep 6 && echo 'Edited while holding a slot.' >> README.md"]


@contextlib.contextmanager
def capacity_stack(place: StackPlace, **worker: Any) -> Iterator[BosunStack]:
    docker_client().close()
    port = free_port()
    place.world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
    settings = make_stack_settings(
        place.tmp_path,
        place.world,
        place.redis_url,
        place.namespace,
        place.work_root,
        port,
        profiles={**PROFILES, "slowedit": {"runner": "script", "command": SLOW_EDIT}},
        worker={"lease_seconds": 5, **worker},
    )
    with running_stack(settings, place.world, port) as stack:
        yield stack


def run_of(stack: BosunStack, number: int) -> dict[str, Any]:
    rows = stack.db(
        "SELECT runs.id, runs.state, runs.reason FROM runs JOIN tasks ON tasks.id = runs.task_id "
        "WHERE tasks.issue_number = ?",
        number,
    )
    return dict(zip(("id", "state", "reason"), rows[0], strict=True)) if rows else {}


def status_moment(stack: BosunStack, run_id: str, state: str) -> tuple[int, datetime]:
    """The global event id and time at which ``run_id`` entered ``state``."""
    rows = stack.db(
        "SELECT id, created_at, data FROM run_events WHERE run_id = ? AND kind = 'status'", run_id
    )
    for event_id, created_at, data in rows:
        if json.loads(data)["to"] == state:
            return int(event_id), datetime.fromisoformat(created_at)
    raise AssertionError(f"run {run_id} never entered {state}")


def status_comment(stack: BosunStack, number: int) -> str:
    issue = next(i for i in stack.state()["issues"] if i["number"] == number)
    bodies = [c["body"] for c in issue["comments"] if "<!-- bosun:status -->" in c["body"]]
    assert len(bodies) <= 1, bodies  # one status comment, edited in place
    return bodies[0] if bodies else ""


def start(stack: BosunStack, title: str, body: str = "Please edit the README.") -> int:
    number = stack.emulator.create_issue(stack.repo, title, body, "alice")
    stack.label(number, "bosun:slowedit")
    stack.wait_for(lambda: run_of(stack, number), 30, f"a run for #{number}")
    return number


def test_second_run_waits_for_the_repository_slot_then_starts_when_woken(place: StackPlace) -> None:
    # A long poll: the waiting run can only start promptly if the first run's end wakes it.
    with capacity_stack(place, queue_poll_seconds=60) as stack:
        config = "limits:\n  concurrent_runs: 1\n"
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
        first = start(stack, "First")
        stack.wait_for(lambda: run_of(stack, first)["state"] == "running", 60, "first running")
        second = start(stack, "Second")

        waiting = f"waiting: position 1 of 1 in the {stack.repo} queue"
        stack.wait_for(lambda: waiting in status_comment(stack, second), 30, "the waiting line")
        main_sha = stack.state()["branches"]["main"]

        def queued_check() -> dict[str, Any] | None:
            for check in stack.state()["check_runs"]:
                summary = (check["output"] or {}).get("summary") or ""
                if check["head_sha"] == main_sha and waiting in summary:
                    return dict(check)
            return None

        check = stack.wait_for(queued_check, 30, "a queued check run saying where it waits")
        assert check["status"] == "queued"
        assert run_of(stack, second)["state"] == "queued"
        assert run_of(stack, first)["state"] in {"running", "gates"}  # still holding the slot

        stack.wait_for(
            lambda: (
                {run_of(stack, n)["state"] for n in (first, second)} <= {"review_ready"}
                and run_of(stack, second)["state"] == "review_ready"
            ),
            120,
            "both runs review-ready",
        )
        first_id, second_id = run_of(stack, first)["id"], run_of(stack, second)["id"]
        done_id, done_at = status_moment(stack, first_id, "review_ready")
        began_id, began_at = status_moment(stack, second_id, "preparing")
        assert began_id > done_id, "the second run prepared before the first one ended"
        assert (began_at - done_at).total_seconds() < 15, "the waiting run was not woken"

        final = stack.wait_for(
            lambda: (body := status_comment(stack, second)) and "review ready" in body and body,
            30,
            "the second status comment at review ready",
        )
        assert "waiting:" not in final
        assert len(stack.state()["pulls"]) == 2


def test_overlapping_focus_paths_take_turns_and_disjoint_ones_do_not(place: StackPlace) -> None:
    # A short poll: the waiting run asks many times, and none of its asks counts as a try.
    with capacity_stack(place, queue_poll_seconds=1) as stack:
        config = "limits:\n  concurrent_runs: 3\n"
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
        first = start(stack, "Parser", "Rework it.\n\nFocus: src/**\n")
        stack.wait_for(lambda: run_of(stack, first)["state"] == "running", 60, "first running")
        first_id = run_of(stack, first)["id"]
        overlapping = start(stack, "Feature", "Add it.\n\nFocus: src/feature.py\n")
        disjoint = start(stack, "Docs", "Write them.\n\nFocus: docs/**\n")

        holds = f"waiting: run `{first_id}` holds overlapping focus paths (`src/**`)"
        stack.wait_for(lambda: holds in status_comment(stack, overlapping), 30, "the lock wait")
        stack.wait_for(
            lambda: run_of(stack, disjoint)["state"] in {"running", "gates", "review_ready"},
            60,
            "the disjoint run starting",
        )
        assert run_of(stack, overlapping)["state"] == "queued"

        numbers = (first, overlapping, disjoint)
        stack.wait_for(
            lambda: all(run_of(stack, n)["state"] == "review_ready" for n in numbers),
            150,
            "all three runs review-ready",
        )
        done_id, _ = status_moment(stack, first_id, "review_ready")
        later_id, _ = status_moment(stack, run_of(stack, overlapping)["id"], "preparing")
        beside_id, _ = status_moment(stack, run_of(stack, disjoint)["id"], "preparing")
        assert later_id > done_id, "overlapping runs wrote at the same time"
        assert beside_id < done_id, "a run with disjoint focus paths waited"
        # Every lock is released as its run ends (just after it is marked review-ready).
        stack.wait_for(lambda: not stack.db("SELECT run_id FROM scope_locks"), 15, "no locks")


def test_overlapping_run_is_refused_when_config_says_so(place: StackPlace) -> None:
    with capacity_stack(place) as stack:
        config = "focus_paths: ['src/**']\nlimits:\n  scope_conflict: refuse\n"
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
        first = start(stack, "One")
        stack.wait_for(lambda: run_of(stack, first)["state"] == "running", 60, "first running")
        second = start(stack, "Two")
        refused = stack.wait_for(
            lambda: (run := run_of(stack, second))["state"] == "failed" and run, 30, "a refusal"
        )
        assert "overlapping focus paths" in refused["reason"]
        assert "scope_conflict: refuse" in refused["reason"]
        stack.wait_for(
            lambda: "overlapping focus paths" in status_comment(stack, second), 30, "the reason"
        )
        stack.wait_for(lambda: run_of(stack, first)["state"] == "review_ready", 90, "first done")


def test_cancelling_a_waiting_run_ends_it_at_once(place: StackPlace) -> None:
    """A run waiting for a slot is cancelled by unlabelling; with a one-minute poll it still
    ends within seconds, because the cancel makes its deferred job due."""
    with capacity_stack(place, queue_poll_seconds=60) as stack:
        config = "limits:\n  concurrent_runs: 1\n"
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
        first = stack.emulator.create_issue(stack.repo, "Endless", "Hold the slot.", "alice")
        stack.label(first, "bosun:slow")  # sleeps for minutes: the slot stays taken
        stack.wait_for(lambda: run_of(stack, first).get("state") == "running", 60, "first running")
        second = start(stack, "Second")
        waiting = f"waiting: position 1 of 1 in the {stack.repo} queue"
        stack.wait_for(lambda: waiting in status_comment(stack, second), 30, "the waiting line")
        stack.emulator.remove_label(stack.repo, second, "bosun:slowedit", "alice")
        stack.wait_for(
            lambda: run_of(stack, second)["state"] == "cancelled", 15, "the waiting run cancelled"
        )
        assert run_of(stack, first)["state"] == "running"  # its slot was never given up
        stack.emulator.remove_label(stack.repo, first, "bosun:slow", "alice")
        stack.wait_for(lambda: run_of(stack, first)["state"] == "cancelled", 30, "first cancelled")
