"""Live events (issue 14): a run's Server-Sent Events stream gives every event exactly once, in
order, resumes exactly from ``Last-Event-ID``, ends with the terminal event, is served by any
web process whatever worker runs the run, and fills any gap from the database when the Redis
wake-up is lost; the WebSocket carries the same frames; the fleet stream follows runs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.lifecycle_stack import BosunProcess, settings_env
from tests.stack import PROFILES, BosunStack, StackPlace, free_port, open_stack
from tests.test_api import make_token

pytestmark = pytest.mark.docker

TICKER = r"""
import sys, time
for n in range(int(sys.argv[1])):
    print(f"tick {n}", flush=True)
    time.sleep(float(sys.argv[2]))
open("/workspace/ticked.txt", "w").write("done\n")
sys.exit(3)  # so the run ends (failed) and its stream with it
"""


@pytest.fixture
def live(place: StackPlace) -> Iterator[tuple[BosunStack, str]]:
    profiles = {
        **PROFILES,
        "ticker": {"runner": "script", "command": ["python3", "-c", TICKER, "40", "0.1"]},
    }
    with open_stack(*place, profiles=profiles) as stack:
        yield stack, make_token(stack, "watcher", "read")


def sse_events(url: str, token: str, *, last_id: str | None = None, stop_after: int = 0,
               timeout: float = 90) -> list[dict[str, Any]]:  # fmt: skip
    """The stream's events (``id``, ``event``, ``data``) until it ends (or ``stop_after``)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if "event" in current:
                    out.append(current)
                    if current["event"] == "end" or (stop_after and len(out) >= stop_after):
                        return out
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data" and value:
                    current[field] = json.loads(value)
                elif field != "data":
                    current[field] = value
    return out


def start(stack: BosunStack, title: str) -> str:
    number = stack.emulator.create_issue(stack.repo, title, "Tick.", "alice")
    stack.label(number, "bosun:ticker")
    run = stack.wait_for(
        lambda: next(
            (r for r in stack.runs() if str(r["branch"]).startswith(f"bosun/{number}-")), None
        ),
        30,
        "the run",
    )
    return str(run["id"])


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events if e.get("id")]


def test_a_stream_resumes_exactly_and_ends_with_the_run(live: tuple[BosunStack, str]) -> None:
    stack, token = live
    run_id = start(stack, "Stream me")
    url = f"{stack.url}/api/v1/runs/{run_id}/events/stream"
    first = sse_events(url, token, stop_after=8)  # disconnect mid-run
    assert seqs(first) == list(range(1, 9))
    rest = sse_events(url, token, last_id=first[-1]["id"])  # reconnect with Last-Event-ID
    assert rest[-1]["event"] == "end" and rest[-1]["data"]["state"] == "failed"
    everything = seqs(first) + seqs(rest)
    assert everything == list(range(1, everything[-1] + 1))  # each once, in order, no gap
    ticks = [e["data"]["data"]["line"] for e in first + rest if e["event"] == "log"]
    assert [t for t in ticks if t.startswith("tick")] == [f"tick {n}" for n in range(40)]
    # Started after the end, from an event in the middle: the rest, then the end at once.
    again = sse_events(url, token, last_id="5")
    assert seqs(again)[0] == 6 and again[-1]["event"] == "end"
    assert seqs(again) == everything[5:]


def test_another_web_process_serves_the_run_and_fills_a_lost_wake_up(
    live: tuple[BosunStack, str], tmp_path: Path
) -> None:
    """A second web process (its own Redis subscription) streams a run executed by the
    first process's worker; its subscription is killed mid-run (as a Redis restart would):
    the stream goes on from the database with no gap."""
    stack, token = live
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BOSUN_")},
        **settings_env(stack.settings),
    }
    bosun = str(Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "bosun")
    web = BosunProcess(
        "web-b", [bosun, "serve", "--port", str(port)], env, tmp_path / "web-b.log"
    ).start()
    try:
        stack.wait_for(lambda: _ok(f"http://127.0.0.1:{port}/healthz"), 30, "web process B")
        run_id = start(stack, "Across processes")
        url = f"http://127.0.0.1:{port}/api/v1/runs/{run_id}/events/stream"
        client = redis.Redis.from_url(
            stack.settings.redis.url, password=stack.settings.redis.password_value()
        )
        name = f"{stack.settings.redis.namespace}-live"

        def cut() -> None:  # kill every live subscription of this Bosun, twice, mid-run
            for _ in range(2):
                time.sleep(1.0)
                for entry in client.client_list():
                    if entry.get("name") == name:
                        client.client_kill_filter(_id=entry["id"])

        cutter = threading.Thread(target=cut)
        cutter.start()
        events = sse_events(url, token)
        cutter.join()
        client.close()
        assert events[-1]["event"] == "end"
        numbers = seqs(events)
        assert numbers == list(range(1, numbers[-1] + 1))
        assert sum(1 for e in events if e["event"] == "log") >= 40
    finally:
        web.stop()


def test_the_websocket_carries_the_same_frames(live: tuple[BosunStack, str]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    stack, token = live
    run_id = start(stack, "Over a socket")
    url = stack.url.replace("http://", "ws://") + f"/api/v1/runs/{run_id}/events/ws"
    frames: list[dict[str, Any]] = []
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as socket:
        socket.send(json.dumps({"after_seq": 0}))
        for message in socket:
            frame = json.loads(message)
            if frame["event"] != "keep-alive":
                frames.append(frame)
            if frame["event"] == "end":
                break
    numbers = [int(f["id"]) for f in frames if f["id"]]
    assert numbers == list(range(1, numbers[-1] + 1))
    assert frames[-1]["event"] == "end"
    with pytest.raises(InvalidStatus) as refused, connect(url):  # no token: no socket
        pass
    assert refused.value.response.status_code in (401, 403)


def test_the_fleet_stream_follows_runs_to_their_end(live: tuple[BosunStack, str]) -> None:
    stack, token = live
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def follow() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{stack.url}/api/v1/events/stream"
        with httpx.stream("GET", url, headers=headers, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip():
                    seen.append(json.loads(line[5:]))
                if done.is_set():
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)
    run_id = start(stack, "Fleet")
    stack.wait_for(
        lambda: any(r["id"] == run_id and r["state"] == "failed" for r in seen),
        90,
        "the fleet stream to show the run's end",
    )
    done.set()
    states = [r["state"] for r in seen if r["id"] == run_id]
    assert states[0] in ("queued", "preparing", "running") and states[-1] == "failed"
    assert "running" in states


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_quiet_run_is_flagged_stalled_and_unflagged(place: StackPlace) -> None:
    """No event for ``worker.stall_seconds``: an event, the API's ``stalled`` and a line in the
    status comment; the agent's next line lifts all three."""
    quiet = {"runner": "script", "command": ["sh", "-c", "echo start; sleep 6; echo resumed"]}
    with open_stack(
        *place,
        profiles={**PROFILES, "quiet": quiet}, worker={"poll_delay": 0.05, "stall_seconds": 2},
    ) as stack:  # fmt: skip
        token = make_token(stack, "watcher", "read")
        number = stack.emulator.create_issue(stack.repo, "Quiet", "Wait.", "alice")
        stack.label(number, "bosun:quiet")
        api = httpx.Client(
            base_url=f"{stack.url}/api/v1", headers={"Authorization": f"Bearer {token}"}
        )
        with api:
            run_id = stack.wait_for(lambda: (stack.runs() or [{}])[0].get("id"), 30, "the run")

            def flagged() -> bool:
                return bool(api.get(f"/runs/{run_id}").json()["stalled"])

            stack.wait_for(flagged, 20, "the run flagged stalled")

            def comment() -> str | None:
                issue = next(i for i in stack.state()["issues"] if i["number"] == number)
                bodies = [c["body"] for c in issue["comments"] if "Stalled:" in c["body"]]
                return bodies[0] if bodies else None

            assert "no event for" in stack.wait_for(comment, 20, "the stall on GitHub")
            stack.wait_for(lambda: not flagged(), 20, "the flag lifted")
            marks = [
                e["data"]["stalled"]
                for e in api.get(f"/runs/{run_id}/events", params={"kind": "progress"}).json()[
                    "items"
                ]
                if "stalled" in e["data"]
            ]
            assert marks[:2] == [True, False]
