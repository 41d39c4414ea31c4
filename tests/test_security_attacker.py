"""An attacker who controls everything inside the sandbox, against what the host does with it
(issue 11, SPEC §6): end to end, with real sandboxes, git and the GitHub emulator.

Each test runs one agent from ``tests/attacker_agents.py`` and asserts the *safe* outcome, so a
test passes when the attack fails. An attack that works is a strict ``xfail`` whose reason says
what happened and where the product is at fault (see docs/security.md, "What the attacker tests
found").
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.domain.status import STATUS_MARKER
from tests.attacker_agents import (
    GATEWAY_ALLOWED_BODY_BYTES,
    GATEWAY_BODIES,
    GATEWAY_BODY_BYTES,
    GATEWAY_CONNECTIONS,
    INJECTED,
    INJECTED_CLOSE,
    TOKEN,
    attacker_profiles,
)
from tests.security_agents import DONE, SecurityStack, security_stack

pytestmark = pytest.mark.docker

WORKSPACE_LIMIT = 16 << 20
"""The module's ``sandbox.workspace_limit_bytes``: room for every agent here but the floods."""
MAX_FILE_BYTES = 5_000_000  # limits.max_file_bytes, default
MAX_DIFF_LINES = 5000  # limits.max_diff_lines, default
UNREADABLE = "the agent's work could not be read: "
"""How a run refused for what the host cannot read begins (the rest says which limit, in
Bosun's words, never the agent's)."""


@dataclass
class Attacker:
    sec: SecurityStack
    victim: Path
    victim_dir: Path

    @property
    def stack(self) -> Any:
        return self.sec.stack

    def victim_state(self) -> tuple[Any, ...]:
        info = self.victim.stat()
        inside = sorted((p.name, p.read_text()) for p in self.victim_dir.iterdir())
        return (self.victim.read_bytes(), info.st_mtime_ns, info.st_mode, inside)

    def git(self, *args: str) -> bytes:
        git_dir = self.stack.state()["git_dir"]
        return subprocess.run(["git", "-C", git_dir, *args], capture_output=True, check=True).stdout

    def tree(self, branch: str) -> dict[bytes, tuple[str, str, int]]:
        """path (bytes) -> (mode, object, size) of the pushed branch."""
        out = {}
        for record in filter(None, self.git("ls-tree", "-r", "-z", "-l", branch).split(b"\0")):
            meta, path = record.split(b"\t", 1)
            mode, _kind, oid, size = meta.decode().split()
            out[path] = (mode, oid, int(size) if size.isdigit() else 0)
        return out

    def pushed(self, run: dict[str, Any]) -> dict[bytes, tuple[str, str, int]]:
        return self.tree(run["branch"]) if run["branch"] in self.sec.branches() else {}

    def blob(self, oid: str) -> bytes:
        return self.git("cat-file", "blob", oid)

    def pull(self, run: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in self.stack.state()["pulls"] if p["number"] == run["pr_number"])

    def issue_number(self, run: dict[str, Any]) -> int:
        return int(str(run["branch"]).split("/", 1)[1].split("-", 1)[0])

    def published_texts(self, run: dict[str, Any]) -> list[str]:
        """What GitHub shows about ``run``: its issue's comments, PR body, check runs."""
        state = self.stack.state()
        number = self.issue_number(run)
        texts = []
        for item in state["issues"] + state["pulls"]:
            if item["number"] in (number, run["pr_number"]):
                texts += [item["body"] or ""] + [c["body"] for c in item["comments"]]
        for check in state["check_runs"]:
            if check["external_id"] == run["id"] and check["output"]:
                texts += [str(check["output"].get("summary")), str(check["output"].get("text"))]
        return texts

    def wait_state(self, run_id: str, states: set[str], timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = next(r for r in self.stack.runs() if r["id"] == run_id)
            if run["state"] in states:
                return run
            time.sleep(0.1)
        return None

    def agent_ended(self, run_id: str) -> bool:
        return any("exit_code" in e["data"] for e in self.stack.events(run_id, "progress"))

    def run_of(self, number: int) -> dict[str, Any]:
        return self.sec.run_for(number, DONE | {"running", "preparing", "gates", "queued"})


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacker]:
    token = uuid.uuid4().hex[:10]
    victim = Path(f"/tmp/bosun-atk-victim-{token}")
    victim.write_text("a host file that must not change\n")
    victim.chmod(0o644)
    victim_dir = Path(f"{victim}.d")
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("keep me\n")
    profiles = attacker_profiles(str(victim), str(victim_dir))
    root = tmp_path_factory.mktemp("attacker")
    try:
        with security_stack(root, profiles, workspace_limit_bytes=WORKSPACE_LIMIT) as sec:
            yield Attacker(sec, victim, victim_dir)
            # What a failed clean-up left (the deep-nesting test): `rm` copes with any depth,
            # shutil.rmtree of the fixture's teardown does not.
            subprocess.run(["rm", "-rf", str(sec.stack.settings.sandbox.workdir / "runs")])
    finally:
        for path in (victim, *victim_dir.iterdir()):
            path.unlink(missing_ok=True)
        victim_dir.rmdir()


def _walkers(run_id: str) -> list[int]:
    """Pids of this process's tree walks reading ``run_id``'s workspace."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        walk = b"sandboxes.treewalk" in argv and argv[argv.index(b"sandboxes.treewalk") + 1 :][:1]
        if walk == [b"walk"] and any(run_id.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def _stop_walks(attacker: Attacker, run_id: str, timeout: float = 60) -> dict[str, Any]:
    """Kill every tree walk of ``run_id`` (this process's own children) until the run ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = attacker.wait_state(run_id, DONE, 0.1)
        if run is not None:
            return run
        for pid in _walkers(run_id):
            os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"run {run_id} never ended, even with its walk stopped")


def _stalled_read(attacker: Attacker, profile: str, seconds: float) -> tuple[bool, list[int]]:
    """Run ``profile``; once its agent has ended, give the host ``seconds`` to reach a terminal
    state. If it has not, ``/cancel`` the run and see whether its walk outlives it. Returns
    (ended in time, pids of walks left after the run was cancelled); the test then stops what
    is left (its own child processes) so the module goes on."""
    number = attacker.sec.start(profile)
    run = attacker.run_of(number)
    attacker.stack.wait_for(lambda: attacker.agent_ended(run["id"]), 60, "the agent's end")
    if attacker.wait_state(run["id"], DONE, seconds) is not None:
        return True, []
    attacker.stack.emulator.comment(attacker.stack.repo, number, "/cancel", "alice")
    cancelled = attacker.wait_state(run["id"], DONE, 30)
    time.sleep(0.5)
    left = _walkers(run["id"]) if cancelled is not None else []
    _stop_walks(attacker, run["id"])
    deadline = time.monotonic() + 10
    while (alive := _walkers(run["id"])) and time.monotonic() < deadline:
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return False, left


# -- what the policy check sees -------------------------------------------------------------


def test_a_form_feed_cannot_hide_a_token_from_the_scanner(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-scanner-desync")
    pushed = attacker.pushed(run)
    leaked = [p for p, (_, oid, _) in pushed.items() if TOKEN.encode() in attacker.blob(oid)]
    assert run["state"] == "failed" and not leaked, (run["state"], leaked)
    assert "secrets.github_token" in run["reason"], run["reason"]


def test_a_token_in_a_file_git_calls_binary_is_refused(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-binary-secret")
    pushed = attacker.pushed(run)
    assert b"deploy.json" not in pushed, "the token was pushed"
    assert run["state"] == "failed", run


def test_non_utf8_names_cannot_borrow_each_others_size(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-name-collision")
    pushed = attacker.pushed(run)
    big = {p: size for p, (_, _, size) in pushed.items() if size > MAX_FILE_BYTES}
    long = {
        p: lines
        for p, (_, oid, _) in pushed.items()
        if p.endswith(b".txt") and (lines := attacker.blob(oid).count(b"\n")) > MAX_DIFF_LINES
    }
    assert run["state"] == "failed" and not big and not long, (run["state"], big, long)
    assert "limits.max_file_bytes" in run["reason"] and "limits.max_diff_lines" in run["reason"]


def test_workflows_folder_cannot_be_replaced_by_a_link(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-workflows-symlink")
    pushed = attacker.pushed(run)
    assert b".github/workflows" not in pushed, pushed.get(b".github/workflows")
    assert run["state"] == "failed", run
    assert ".github/workflows (paths.protected)" in run["reason"], run["reason"]


# -- what is published ----------------------------------------------------------------------


def test_a_refused_name_cannot_write_markdown_into_the_status(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-newline-reason")
    assert run["state"] == "failed", run
    assert "paths.protected" in run["reason"], run["reason"]
    injected = [text for text in attacker.published_texts(run) if INJECTED in text.splitlines()]
    assert injected == [], injected[0]
    quoted = '`".github/workflows/ci.yml\\n\\n' + INJECTED + '\\n\\n"`'
    assert quoted in run["reason"], run["reason"]


def test_the_transcript_cannot_leave_its_fence_in_the_pr_body(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-transcript-fence")
    assert run["state"] == "review_ready", run
    lines = attacker.pull(run)["body"].splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"~{4,}text", line))
    opening = len(lines[start]) - len("text")
    # CommonMark: the first line of at least as many tildes (and nothing else) closes the block
    closes = [
        i
        for i in range(start + 1, len(lines))
        if re.fullmatch(rf" {{0,3}}~{{{opening},}}\s*", lines[i])
    ]
    assert closes and INJECTED in lines[start : closes[0]], lines[start:]
    assert lines[closes[0] + 1] == "</details>", lines[start:]  # Bosun's own fence closes it


def test_a_file_name_cannot_add_lines_to_the_pr_body(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-filelist-newline")
    assert run["state"] == "review_ready", run
    body = attacker.pull(run)["body"]
    assert INJECTED_CLOSE not in body.splitlines(), body
    assert f'- ``"report`\\n\\n{INJECTED_CLOSE}\\n\\n- `x"`` (A, +1 -0)' in body.splitlines()


# -- the host's resources -------------------------------------------------------------------


def test_deep_nesting_is_cleaned_up(attacker: Attacker) -> None:
    run = attacker.sec.probe("atk-deep-nesting")
    assert run["state"] == "failed" and run["reason"].startswith(UNREADABLE), run
    assert "nest deeper than" in run["reason"], run
    runs_dir = attacker.stack.settings.sandbox.workdir / "runs" / run["id"]
    deadline = time.monotonic() + 8
    while runs_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not runs_dir.exists(), f"{runs_dir} was left on the host"


def test_a_sparse_file_is_refused_without_being_read(attacker: Attacker) -> None:
    ended, left = _stalled_read(attacker, "atk-sparse", 8)
    assert ended and not left, (
        f"still reading 8 s after the agent; walks left after /cancel: {left}"
    )


def test_a_hostile_gitignore_cannot_stall_the_walk(attacker: Attacker) -> None:
    ended, left = _stalled_read(attacker, "atk-redos", 8)
    assert ended and not left, (
        f"still reading 8 s after the agent; walks left after /cancel: {left}"
    )


def test_empty_files_count_against_the_workspace_limit(attacker: Attacker) -> None:
    run = attacker.run_of(attacker.sec.start("atk-empty-files"))
    attacker.stack.wait_for(
        lambda: attacker.agent_ended(run["id"]) or attacker.wait_state(run["id"], DONE, 0),
        60,
        "the agent's end",
    )
    ended = _stop_walks(attacker, run["id"])  # the host would read all 70,000 files first
    assert ended["reason"].startswith("the workspace grew past"), ended["reason"]


def test_the_workspace_limit_sees_deep_folders(attacker: Attacker) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))  # systemd's default
    try:
        run = attacker.run_of(attacker.sec.start("atk-deep-ballast"))
        attacker.stack.wait_for(
            lambda: attacker.agent_ended(run["id"]) or attacker.wait_state(run["id"], DONE, 0),
            60,
            "the agent's end",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ended = _stop_walks(attacker, run["id"])
    assert ended["reason"].startswith("the workspace grew past"), ended["reason"]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_while_running(attacker: Attacker, profile: str, measure: Any) -> tuple[int, dict]:
    """Run ``profile`` and sample ``measure()`` of this process (the worker runs in it) until
    the run ends; returns the peak growth over the value before."""
    before = measure()
    number = attacker.sec.start(profile)
    peak = before
    deadline = time.monotonic() + 90
    run = None
    while time.monotonic() < deadline:
        peak = max(peak, measure())
        run = next(
            (
                r
                for r in attacker.stack.runs()
                if str(r["branch"]).startswith(f"bosun/{number}-") and r["state"] in DONE
            ),
            None,
        )
        if run is not None:
            break
        time.sleep(0.05)
    assert run is not None, "the run did not end"
    return peak - before, run


def _gateway_refusals(attacker: Attacker, run: dict[str, Any], rule: str) -> list[dict]:
    return [
        e["data"] for e in attacker.stack.events(run["id"], "policy") if e["data"]["rule"] == rule
    ]


def test_gateway_connections_are_bounded(attacker: Attacker) -> None:
    # Before: every connection was kept, idle, with no limit or timeout: 3,000 connections
    # held 3,022 more descriptors in the worker (and the sandbox may open 20,000 per process).
    grown, run = _peak_while_running(attacker, "atk-gateway-connections", _fd_count)
    cap = attacker.stack.settings.gateway.max_connections
    assert grown < cap + 48, f"the worker held {grown} more descriptors ({run['state']})"
    reports = _gateway_refusals(attacker, run, "gateway.max_connections")
    assert reports and max(r["count"] for r in reports) >= GATEWAY_CONNECTIONS - cap, reports
    assert len(reports) < 20, len(reports)  # counted, not one event per connection


@pytest.mark.parametrize(
    ("profile", "body_bytes"),
    [
        ("atk-gateway-bodies", GATEWAY_BODY_BYTES),  # an unknown route: refused from the head
        ("atk-gateway-bodies-allowed", GATEWAY_ALLOWED_BODY_BYTES),  # read within the limits
    ],
)
def test_gateway_request_bodies_are_bounded(
    attacker: Attacker, profile: str, body_bytes: int
) -> None:
    # Before: each body was read whole (up to 64 MiB) before the route was looked at, on every
    # connection at once: 16 unfinished 56 MiB bodies grew the worker by 899 MiB.
    grown, run = _peak_while_running(attacker, profile, _rss)
    # At most the run's buffer (gateway.max_buffered_bytes, 32 MiB) and the worker's own work.
    assert grown < attacker.stack.settings.gateway.max_buffered_bytes + (24 << 20), (
        f"the worker grew by {grown >> 20} MiB for {GATEWAY_BODIES} unfinished bodies of "
        f"{body_bytes >> 20} MiB ({run['state']})"
    )


def test_long_paths_cost_the_host_no_more_than_the_workspace(attacker: Attacker) -> None:
    grown, run = _peak_while_running(attacker, "atk-long-paths", _rss)
    stored = sum(p.stat().st_size for p in attacker.stack.artifacts(run["id"]).values())
    assert grown < 128 << 20 and stored < 16 << 20, (grown >> 20, stored >> 20, run["reason"])


# -- attacks that fail ----------------------------------------------------------------------


def test_a_locked_work_tree_fails_clearly_and_is_cleaned_up(attacker: Attacker) -> None:
    """``chmod 000`` on the workspace and inside it: the walk (as the owner) cannot open it,
    the run fails with the fixed message, and the owner's clean-up unlocks and removes it."""
    run = attacker.sec.probe("atk-locked-tree")
    assert run["state"] == "failed" and run["reason"].startswith(UNREADABLE), run
    attacker.sec.settled(run["id"])
    assert run["branch"] not in attacker.sec.branches()


def test_a_hopping_leftover_does_not_outlive_the_reaper(attacker: Attacker) -> None:
    """A process the plan phase leaves, which keeps changing its pid (fork, parent exits) while
    the reaper lists and kills pids, is dead by the time the implement phase starts."""
    run = attacker.sec.probe("atk-hopper")
    assert run["state"] == "review_ready", run
    pushed = attacker.pushed(run)
    assert b"hopper.txt" in pushed
    assert b"hopper-beat-seen.txt" in pushed  # it did run, hopping, in the plan phase
    assert b"hopper-alive.txt" not in pushed


def test_a_retry_checks_out_a_hostile_tree_without_touching_the_host(attacker: Attacker) -> None:
    """The first run pushes links to host paths, attributes naming filters and a file named like
    a hook; ``/retry`` checks that tree out on the host (as the workspace's owner) and runs the
    agent on it: the links stay links, nothing runs, no host file changes."""
    before = attacker.victim_state()
    first = attacker.sec.probe("atk-retry-tree")
    assert first["state"] == "review_ready", first
    mode, _, _ = attacker.pushed(first)[b"host-dir"]
    assert mode == "120000"
    attacker.stack.emulator.comment(attacker.stack.repo, first["pr_number"], "/retry", "alice")
    retry = attacker.stack.wait_for(
        lambda: next(
            (r for r in attacker.stack.runs()
             if r["branch"] == first["branch"] and r["id"] != first["id"]
             and r["state"] in DONE),
            None,
        ),
        90,
        "the retry's end",
    )  # fmt: skip
    assert retry["state"] == "review_ready", retry
    pushed = attacker.pushed(retry)
    assert b"second-run.txt" in pushed and pushed[b"host-dir"][0] == "120000"
    assert attacker.victim_state() == before
    assert not Path("/tmp/bosun-retry-marker").exists()


def test_status_text_never_carries_the_agents_token(attacker: Attacker) -> None:
    """Whatever the scanner missed, Bosun's own texts (status comment, check run) never repeat
    a secret the agent wrote (only its first four characters and length)."""
    for profile in ("atk-scanner-desync", "atk-binary-secret"):
        run = attacker.sec.probe(profile)
        texts = attacker.published_texts(run)
        assert any(STATUS_MARKER in text for text in texts)  # the status comment is there
        assert not any(TOKEN in text for text in texts)
