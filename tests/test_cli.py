"""The ``bosun`` command line end to end: the installed ``bosun`` executable, run as a user would
(a subprocess with ``BOSUN_URL`` and ``BOSUN_TOKEN``), against a real Bosun (web + worker) with
the GitHub emulator; token commands on the stack's database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.agents.runners import get_runner
from bot.control.views import EventOut
from bot.entrypoints.cli_render import event_line
from tests.stack import BosunStack, StackPlace, free_port, open_stack

BOSUN = str(Path(sys.executable).parent / "bosun")

TICKER = """
import pathlib, time
time.sleep(3)  # the follower is running by now
for i in range(1, 6):
    print(f"tick {i}", flush=True)
    time.sleep(0.6)
pathlib.Path("/workspace/ticks.txt").write_text("5 ticks\\n")
"""
FIXTURES = Path(__file__).parent / "fixtures" / "runners"
PROFILES = {
    "ticker": {"runner": "script", "command": ["python3", "-c", TICKER]},
    "slow": {"runner": "script", "command": ["sh", "-c", "echo started; sleep 300"]},
}


class Cli:
    """``bosun`` as a subprocess, pointed at one stack."""

    def __init__(self, stack: BosunStack) -> None:
        self.stack = stack
        self.token = ""

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOSUN_")}
        env |= {
            "BOSUN_URL": self.stack.url,
            "BOSUN_TOKEN": self.token,
            "BOSUN_DATABASE__URL": self.stack.settings.database.url,
            "BOSUN_DATA_DIR": str(self.stack.settings.data_dir),
        }
        return env | extra

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BOSUN, *args], env=self.env(**env), capture_output=True, text=True, timeout=90
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--format", "json"))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [BOSUN, *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def login(self, scope: str = "operate") -> str:
        self.token = self.ok("token", "create", "--name", f"test-{scope}", "--scope", scope)
        self.token = self.token.strip()
        return self.token


@pytest.fixture
def cli(stack: BosunStack) -> Cli:
    return Cli(stack)


@pytest.fixture
def live(place: StackPlace) -> Iterator[BosunStack]:
    """A stack with the ``ticker`` and ``slow`` profiles."""
    with open_stack(*place, profiles=PROFILES) as running:
        yield running


def start_run(stack: BosunStack, title: str, label: str = "bosun") -> str:
    """Label a new issue; the id of the run it starts (as soon as it exists)."""
    number = stack.emulator.create_issue(stack.repo, title, "Please change it.", "alice")
    stack.label(number, label)

    def created() -> str | None:
        for run in stack.runs():
            if str(run["branch"]).startswith(f"bosun/{number}-"):
                return str(run["id"])
        return None

    return stack.wait_for(created, 60, f"the run of issue #{number}")


def wait_state(stack: BosunStack, run_id: str, states: set[str], timeout: float = 120) -> str:
    def reached() -> str | None:
        state = next((r["state"] for r in stack.runs() if r["id"] == run_id), None)
        return state if state in states else None

    return stack.wait_for(reached, timeout, f"run {run_id} in {states}: {stack.runs()}")


@pytest.mark.docker
def test_tokens_are_made_listed_and_revoked_on_the_host(cli: Cli) -> None:
    made = cli.json("token", "create", "--name", "ci", "--scope", "read", "--repo", cli.stack.repo)
    assert made["token"].startswith("bosun_") and made["scope"] == "read"
    assert made["repos"] == [cli.stack.repo] and made["expires_at"] is None
    shown = cli("token", "create", "--name", "ops", "--scope", "operate", "--expires", "30d")
    assert shown.returncode == 0
    assert shown.stdout.strip().startswith("bosun_") and len(shown.stdout.splitlines()) == 1
    assert "Copy it now" in shown.stderr  # the secret alone on stdout, the advice on stderr

    table = cli.ok("token", "list")
    assert "ci" in table and "ops" in table and "operate" in table and cli.stack.repo in table
    assert made["token"] not in table and shown.stdout.strip() not in table
    listed = {t["name"]: t for t in cli.json("token", "list")}
    assert listed["ops"]["expires_at"] is not None and "token" not in listed["ops"]

    cli.token = made["token"]
    assert cli.json("runs", "list")["items"] == []  # the token works against the API
    again = cli("token", "create", "--name", "ci", "--scope", "admin")
    assert again.returncode == 4 and "exists already" in again.stderr
    assert cli.json("token", "revoke", "ci")["revoked"] is True
    refused = cli("runs", "list")
    assert refused.returncode == 4
    assert "revoked" in refused.stderr and "bosun token create" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli("token", "revoke", "nobody").returncode == 3
    assert cli("token", "create", "--name", "x", "--scope", "root").returncode == 2


GATES = """
gates:
  - name: unit
    run: python3 -c 'print("1 failed"); raise SystemExit(1)'
  - name: lint
    run: ["true"]
"""


@pytest.mark.docker
def test_reading_a_finished_run(cli: Cli) -> None:
    stack = cli.stack
    cli.login("read")
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": GATES}, user="alice")
    run_id = start_run(stack, "Add the feature")
    wait_state(stack, run_id, {"review_ready"})
    run = next(r for r in stack.runs() if r["id"] == run_id)

    table = cli.ok("runs", "list")
    (line,) = [row for row in table.splitlines() if row.startswith(run_id)]
    assert "review_ready" in line and f"{stack.repo}#" in line and run["head_sha"][:10] in line
    listed = cli.json("runs", "list", "--state", "review_ready", "--repo", stack.repo)
    assert [r["id"] for r in listed["items"]] == [run_id] and listed["next_cursor"] is None
    assert cli.json("runs", "list", "--state", "failed")["items"] == []

    shown = cli.ok("runs", "show", run_id)
    assert run["branch"] in shown and "manifest.json" in shown and "review_ready" in shown
    gate_rows = [row.split() for row in shown.splitlines() if row.startswith(("unit ", "lint "))]
    assert [row[:3] for row in gate_rows] == [["unit", "FAILED", "1"], ["lint", "passed", "0"]]
    detail = cli.json("runs", "show", run_id)
    assert detail["head_sha"] == run["head_sha"] and detail["lineage"]["parent"] is None

    diff = cli.ok("runs", "diff", run_id)
    assert diff.startswith("diff --git") and "+Edited by the agent." in diff
    stat = cli.ok("runs", "diff", run_id, "--stat")
    assert "src/feature.py" in stat and "+2 -0" in stat and "3 file(s) changed" in stat
    assert {f["path"] for f in cli.json("runs", "diff", run_id)["files"]} >= {"src/feature.py"}

    status = cli.json("status", run_id)
    assert set(status) == {"run", "manifest"}
    assert status["run"]["id"] == run_id and status["run"]["state"] == "review_ready"
    assert {"lineage", "gates", "approvals", "artifacts", "parent_run_id"} <= set(status["run"])
    manifest = status["manifest"]
    assert manifest["run_id"] == run_id and manifest["head_sha"] == run["head_sha"]
    assert manifest["parent_run_id"] is None and manifest["approvals"] == []
    assert [(g["name"], g["passed"]) for g in manifest["gates"]] == [
        ("unit", False),
        ("lint", True),
    ]
    assert status["run"]["gates_passed"] is False and manifest["state"] == "review_ready"
    brief = dict(row.split(None, 1) for row in cli.ok("status", run_id).splitlines())
    assert brief["state"].strip() == "review_ready" and brief["gates"].strip() == "failed"

    logs = cli.ok("runs", "logs", run_id).splitlines()
    assert any(row.endswith("stdout   agent: done") for row in logs)
    gate_lines = [row.split(None, 1)[1] for row in logs if " gate " in row]
    assert gate_lines[0].startswith("gate     unit FAILED (exit 1, ")
    assert gate_lines[1].startswith("gate     lint passed (exit 0, ")
    statuses = [row for row in logs if " status " in row]
    assert "queued → preparing" in statuses[1] and "gates → review_ready" in statuses[-1]
    lines = cli.ok("runs", "logs", run_id, "--format", "json").splitlines()
    events = [json.loads(row) for row in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    missing = cli("runs", "show", "r0000000000000")
    assert missing.returncode == 3 and "r0000000000000 does not exist" in missing.stderr
    assert cli("status", "r0000000000000", "--format", "json").returncode == 3
    assert cli("runs", "logs", "nope").returncode == 3

    nowhere = f"http://127.0.0.1:{free_port()}"
    down = cli("runs", "list", "--url", nowhere)
    assert down.returncode == 1 and nowhere in down.stderr and "connection refused" in down.stderr
    for usage in (
        ["runs", "list", "--state", "sleeping"],
        ["runs", "budget", run_id, "lots"],
        ["runs", "start", "not-a-repo"],
        ["runs", "show"],
    ):
        wrong = cli(*usage)
        assert wrong.returncode == 2, (usage, wrong.stderr)
    assert cli("runs", "list", BOSUN_TOKEN="").returncode == 2
    assert cli("runs", "cancel", run_id).returncode == 4  # a read token may not act


@pytest.mark.docker
def test_logs_follow_a_live_run_to_its_end_and_ctrl_c_exits_130(live: BosunStack) -> None:
    cli = Cli(live)
    cli.login("operate")
    run_id = start_run(live, "Tick", "bosun:ticker")
    with cli.popen("runs", "logs", run_id, "-f", "--interval", "0.2") as follower:
        assert follower.stdout is not None and follower.stderr is not None
        seen, state_at_first_tick = [], None
        for line in follower.stdout:
            seen.append(line)
            if line.rstrip().endswith("tick 1"):
                state_at_first_tick = next(r["state"] for r in live.runs() if r["id"] == run_id)
        assert follower.wait(30) == 0, follower.stderr.read()
        assert f"run {run_id} is review_ready" in follower.stderr.read()
    assert state_at_first_tick == "running"  # printed while the agent was still at work
    ticks = [line.split()[-2:] for line in seen if " tick " in line]
    assert ticks == [["tick", str(i)] for i in range(1, 6)]
    statuses = [
        line.split(" status ")[1].split(" by ")[0].strip() for line in seen if " status " in line
    ]
    assert statuses == [
        "queued",
        "queued → preparing",
        "preparing → running",
        "running → gates",
        "gates → review_ready",
    ]
    assert wait_state(live, run_id, {"review_ready"}) == "review_ready"

    slow = start_run(live, "Sleep", "bosun:slow")
    with cli.popen("runs", "logs", slow, "-f", "--interval", "0.2") as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        for line in watcher.stdout:
            if line.rstrip().endswith("started"):
                break
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(60) == 130  # exit code, not speed: the host may be loaded
        err = watcher.stderr.read()
    assert "interrupted" in err and "Traceback" not in err

    cancelled = cli.json("runs", "cancel", slow)
    assert cancelled["outcome"] in ("accepted", "pending") and cancelled["run_id"] == slow
    after = cli("runs", "logs", slow, "-f", "--interval", "0.2")
    assert after.returncode == 0 and "→ cancelled" in after.stdout
    assert f"run {slow} is cancelled" in after.stderr


@pytest.mark.docker
def test_actions_on_a_run(cli: Cli) -> None:
    stack = cli.stack
    cli.login("operate")
    first = start_run(stack, "Add the feature")
    wait_state(stack, first, {"review_ready"})

    stale = cli("runs", "approve", first, "--sha", "0" * 40)
    assert stale.returncode == 4 and "refused" in stale.stderr

    retried = cli.json("runs", "retry", first, "--feedback", "Also add a docstring")
    assert retried["outcome"] == "accepted" and retried["new_run_id"], retried
    second = retried["new_run_id"]
    wait_state(stack, second, {"review_ready"})
    status = cli.json("status", second)
    assert status["run"]["parent_run_id"] == first
    assert status["manifest"]["parent_run_id"] == first
    assert second in cli.json("runs", "show", first)["lineage"]["children"]

    held = cli.ok("runs", "hold", second)
    assert "accepted" in held
    assert "(on hold)" in cli.ok("status", second)
    assert "accepted" in cli.ok("runs", "unhold", second)
    head = status["run"]["head_sha"]
    own = cli("runs", "approve", second, "--sha", head)  # this token asked for the retry
    assert own.returncode == 4 and "your approval does not count" in own.stderr
    cli.token = cli.ok("token", "create", "--name", "reviewer", "--scope", "operate").strip()
    approved = cli.json("runs", "approve", second, "--sha", head)
    assert approved["outcome"] == "accepted" and approved["run"]["state"] == "approved"
    approvals = cli.json("status", second)["run"]["approvals"]
    assert [(a["sha"], a["actor"]) for a in approvals] == [(head, "token:reviewer")]

    rejected = cli.ok("runs", "reject", second, "--reason", "not this way")
    assert "reject" in rejected and "accepted" in rejected and "rejected" in rejected
    last = [row for row in cli.ok("runs", "logs", second, "--kind", "status").splitlines()][-1]
    assert "approved → rejected by token:reviewer" in last and "not this way" in last


@pytest.mark.docker
def test_start_a_run_from_the_cli(cli: Cli) -> None:
    stack = cli.stack
    cli.login("operate")
    number = stack.emulator.create_issue(stack.repo, "Add the feature", "Please.", "alice")
    issue = f"{stack.repo}#{number}"
    started = cli.json("runs", "start", issue, "--profile", "slow", "--instructions", "Be brief")
    assert started["repository"] == stack.repo and started["issue_number"] == number
    assert started["requester"] == "token:test-operate" and started["trigger"] == "cli"
    assert started["profile"] == "slow"
    assert "Be brief" in cli.json("runs", "show", started["id"])["prompt_instructions"]
    again = cli("runs", "start", issue)  # the slow agent is still at work
    assert again.returncode == 4 and "already active" in again.stderr
    assert cli("runs", "start", stack.repo).returncode == 2  # an issue is needed
    assert cli.json("runs", "budget", started["id"], "+5")["outcome"] == "accepted"
    resumed = cli("runs", "resume", started["id"])
    assert resumed.returncode == 4 and "only a timed-out run can be resumed" in resumed.stderr
    assert cli.json("runs", "cancel", started["id"])["outcome"] in ("accepted", "pending")
    assert wait_state(stack, started["id"], {"cancelled"}) == "cancelled"


NOW = datetime.now(UTC)


def test_an_agents_transcript_reads_as_lines() -> None:
    """What `bosun runs logs` prints for recorded Claude Code and Codex output: messages, tool
    calls with their input, results with exit codes, cost — no raw JSON events."""
    printed = []
    for runner_name, fixture in (("claude-code", "edit_file.jsonl"), ("codex", "shell_edit.jsonl")):
        runner = get_runner(runner_name)
        for raw in (FIXTURES / runner_name / fixture).read_text().splitlines():
            for event in runner.parse_line("stdout", raw):
                out = EventOut(
                    seq=1, kind=event.kind, data=event.data, created_at=datetime.now(UTC)
                )
                printed.append(event_line(out).split(" ", 1)[1])  # without the time
    assert "agent    I'll create the file." in printed
    assert 'tool     Bash: {"command":"cat hello.txt","description":"Show"}' in printed
    assert "tool     result: hello" in printed
    assert "cost     $0.0044 (720 in / 150 out)" in printed
    assert "tool     result shell (exit 0): hello" in printed
    assert "tool     result shell (exit 1, error): (no output)" in printed
    assert not [line for line in printed if line.startswith(("tool     {", "agent    {"))]
