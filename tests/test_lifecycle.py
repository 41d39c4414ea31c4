"""A run survives crashes around it: it never stays ``running`` after its worker or its Docker
engine went away. It ends in exactly one terminal state, with its summary and manifest, a
completed check run on GitHub, and no sandbox container left behind.

Bosun runs as real processes here (``bosun serve``, ``bosun worker``), so a worker can be
killed with SIGKILL; the engine test uses a private dockerd, never the machine's shared one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.settings import Settings
from tests.lifecycle_stack import (
    BASE_IMAGE,
    FAST_WORKER,
    LIFECYCLE_PROFILES,
    PrivateDockerd,
    ProcessStack,
    free_port,
    process_stack,
)
from tests.services import docker_client, missing
from tests.stack import StackPlace, make_stack_settings

TERMINAL = {"failed", "cancelled", "timed_out", "rejected", "merged"}


def _need_base_image() -> None:
    client = docker_client()
    try:
        client.images.get(BASE_IMAGE)
    except Exception as exc:  # noqa: BLE001
        missing(BASE_IMAGE, f"{exc} (scripts/bootstrap.sh imports it)")
    finally:
        client.close()


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    """A second Docker engine of this test's own, with the base image; always torn down."""
    _need_base_image()
    if shutil.which("dockerd") is None:
        missing("dockerd", "not installed (run scripts/bootstrap.sh)")
    engine = PrivateDockerd()
    try:
        try:
            engine.start()
        except RuntimeError as exc:
            missing("a private dockerd", str(exc))
        engine.load_image(BASE_IMAGE)
        yield engine
    finally:
        engine.destroy()


def _settings(place: StackPlace, port: int, **extra: Any) -> Settings:
    place.world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
    return make_stack_settings(
        place.tmp_path,
        place.world,
        place.redis_url,
        place.namespace,
        place.work_root,
        port,
        **{"worker": FAST_WORKER, "profiles": LIFECYCLE_PROFILES, **extra},
    )


def _start_slow_run(stack: ProcessStack) -> dict[str, Any]:
    """Label an issue for the slow agent; return its run once the agent printed its first line."""
    emulator = stack.world.emulator
    number = emulator.create_issue(stack.repo, "Long task", "take your time", "alice")
    emulator.add_labels(stack.repo, number, ["bosun:slow"], "alice")

    def agent_started() -> dict[str, Any] | None:
        run = stack.run()
        if run is None or run["state"] != "running":
            return None
        lines = [e.get("line", "") for e in stack.events(run["id"], "log")]
        return run if any("started" in line for line in lines) else None

    return stack.wait_for(agent_started, 120, "the slow agent's first line")


def _assert_ended_once_with_artifacts(stack: ProcessStack, run: dict[str, Any]) -> None:
    """One terminal state; summary and manifest say why; the check run completed as failed."""
    states = [e["to"] for e in stack.events(run["id"], "status")]
    assert sum(s in TERMINAL for s in states) == 1, states
    artifacts = stack.artifacts(run["id"])
    assert "summary" in artifacts and "manifest.json" in artifacts, sorted(artifacts)
    manifest = json.loads(artifacts["manifest.json"].read_text())
    assert manifest["state"] == "failed"
    assert run["reason"].split(";")[0] in artifacts["summary"].read_text()

    def check_completed() -> list[dict[str, Any]]:
        checks = stack.check_runs()
        done = all(c["status"] == "completed" for c in checks)
        return checks if checks and done else []

    checks = stack.wait_for(check_completed, 30, "the check run to complete on GitHub")
    assert {c["conclusion"] for c in checks} == {"failure"}, checks


def _containers_of(run_id: str, host: str | None = None) -> list[Any]:
    import docker

    client = docker.DockerClient(base_url=host, timeout=10) if host else docker_client()
    try:
        return list(client.containers.list(all=True, filters={"label": f"bosun.run_id={run_id}"}))
    finally:
        client.close()


@contextlib.contextmanager
def _foreign_sandbox() -> Iterator[str]:
    """An hour-old Bosun sandbox of a run this installation never had; removed afterwards."""
    run_id = f"foreign{uuid.uuid4().hex[:12]}"
    labels = {
        "bosun.managed": "true",
        "bosun.run_id": run_id,
        "bosun.created": str(int(time.time()) - 3600),
    }
    client = docker_client()
    container = client.containers.run(
        BASE_IMAGE, ["sleep", "600"], detach=True, network_mode="none", labels=labels, init=True
    )
    try:
        yield run_id
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)
        client.close()


def test_worker_killed_mid_run_ends_failed_and_its_sandbox_is_reaped(place: StackPlace) -> None:
    _need_base_image()
    port = free_port()
    # Reconcile only at start and on the minute, to show the start pass does the work.
    worker = {**FAST_WORKER, "reconcile_seconds": 60}
    settings = _settings(place, port, worker=worker)
    stale = settings.worker.heartbeat_stale_seconds
    with (
        _foreign_sandbox() as foreign,
        process_stack(settings, place.world, port, place.tmp_path / "logs") as stack,
    ):
        first = stack.start_worker()
        run = _start_slow_run(stack)
        (container,) = _containers_of(run["id"])
        assert container.status == "running"

        killed = datetime.now(UTC)
        first.kill9()
        stack.wait_for(lambda: stack.heartbeat_age() > stale, 30, "the heartbeat to go stale")
        went_stale = (datetime.now(UTC) - killed).total_seconds()
        _clear_of_the_minute(margin=25)
        spawned = datetime.now(UTC)
        second = stack.start_worker()

        ended = stack.wait_for(
            lambda: (r := stack.run()) and r["state"] in TERMINAL and r, 60, "the run to end"
        )
        assert ended["state"] == "failed"
        assert "interrupted" in ended["reason"] and "/retry" in ended["reason"]
        started = second.logged_at("worker_started")
        assert started is not None
        after_start = stack.ended_after(started)
        # Ended by the new worker's start-up pass, not by the periodic one on the minute.
        assert 0 < after_start < 60 - started.second - started.microsecond / 1e6, after_start
        stack.wait_for(lambda: not _containers_of(run["id"]), 15, "the orphan sandbox removed")
        reaped = (datetime.now(UTC) - started).total_seconds()
        _assert_ended_once_with_artifacts(stack, ended)
        # Another Bosun's sandbox on the same engine (a run this database does not know).
        assert _containers_of(foreign), "the reaper removed a sandbox of a run it does not know"
        print(
            f"\nSIGKILL → heartbeat stale {went_stale:.1f}s; new worker process up in"
            f" {(started - spawned).total_seconds():.1f}s; then → run failed {after_start:.1f}s,"
            f" → sandbox gone {reaped:.1f}s"
        )


def _clear_of_the_minute(margin: float) -> None:
    """Sleep past the next minute boundary when it is less than ``margin`` seconds away."""
    second = datetime.now(UTC).second + datetime.now(UTC).microsecond / 1e6
    if 60 - second < margin:
        time.sleep(60 - second + 0.5)


def test_docker_engine_restart_mid_run_ends_the_run_and_leaves_no_container(
    place: StackPlace,
    private_dockerd: PrivateDockerd,
) -> None:
    port = free_port()
    settings = _settings(
        place,
        port,
        sandbox={"docker_host": private_dockerd.host},
    )
    with process_stack(settings, place.world, port, place.tmp_path / "logs") as stack:
        stack.start_worker()
        run = _start_slow_run(stack)
        assert len(private_dockerd.containers()) == 1

        stopped = datetime.now(UTC)
        private_dockerd.stop()
        down = (datetime.now(UTC) - stopped).total_seconds()
        private_dockerd.start()
        back = (datetime.now(UTC) - stopped).total_seconds()

        ended = stack.wait_for(
            lambda: (r := stack.run()) and r["state"] in TERMINAL and r, 60, "the run to end"
        )
        to_end = stack.ended_after(stopped)
        assert ended["id"] == run["id"] and ended["state"] == "failed", ended
        assert "sandbox" in ended["reason"] and "Docker engine" in ended["reason"], ended
        stack.wait_for(lambda: not private_dockerd.containers(), 30, "no sandbox left")
        to_clean = (datetime.now(UTC) - stopped).total_seconds()
        _assert_ended_once_with_artifacts(stack, ended)
        print(
            f"\nengine stopped in {down:.1f}s, answering again at {back:.1f}s; run failed at"
            f" {to_end:.1f}s; no container left at {to_clean:.1f}s"
        )
