"""The workspace is hostile data (issue 11, SPEC §6): agents that arm git configuration, hooks,
attributes and nested repositories, swap ``.git`` entries for links to host paths from a
process left running between phases, or link ``.git`` to a host file — end to end, with real
sandboxes, git and the GitHub emulator. For each: no command runs on the host, no host file
changes, nothing of a host file reaches GitHub, and the run ends in one clear state."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.hostile_agents import hostile_profiles
from tests.security_agents import SecurityStack, security_stack

pytestmark = pytest.mark.docker


@dataclass
class Hostile:
    sec: SecurityStack
    marker: str
    victim: Path
    victim_dir: Path
    secret: Path
    secret_line: str

    def escaped(self) -> list[str]:
        """Markers a planted command left on the host."""
        return sorted(p.name for p in Path("/tmp").glob(f"{self.marker}-*"))

    def victim_state(self) -> tuple[Any, ...]:
        info = self.victim.stat()
        inside = sorted((p.name, p.read_text()) for p in self.victim_dir.iterdir())
        return (self.victim.read_text(), info.st_mtime_ns, info.st_mode, inside)

    def tree(self, branch: str) -> dict[str, tuple[str, str]]:
        """path -> (mode, object) of the pushed branch."""
        git_dir = self.sec.stack.state()["git_dir"]
        listing = subprocess.run(
            ["git", "-C", git_dir, "ls-tree", "-r", "-z", branch],
            capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        out = {}
        for record in filter(None, listing.split("\0")):
            meta, path = record.split("\t", 1)
            mode, _, oid = meta.split()
            out[path] = (mode, oid)
        return out

    def blob(self, oid: str) -> str:
        git_dir = self.sec.stack.state()["git_dir"]
        return subprocess.run(
            ["git", "-C", git_dir, "cat-file", "blob", oid], capture_output=True, text=True,
            check=True,
        ).stdout  # fmt: skip

    def published(self, run_id: str) -> str:
        """Everything GitHub holds (issues, PRs, comments, check runs, every pushed commit's
        content) and everything the run recorded, as one text."""
        state = self.sec.stack.state()
        history = subprocess.run(
            ["git", "-C", state["git_dir"], "log", "-p", "--all", "--format=%B"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        events = json.dumps(self.sec.stack.events(run_id))
        artifacts = "".join(
            p.read_bytes().decode(errors="replace")
            for p in self.sec.stack.artifacts(run_id).values()
        )
        return json.dumps(state) + history + events + artifacts


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    token = uuid.uuid4().hex[:10]
    marker = f"bosun-escape-{token}"
    victim = Path(f"/tmp/bosun-victim-{token}")
    victim.write_text("a host file that must not change\n")
    victim.chmod(0o644)
    victim_dir = Path(f"{victim}.d")
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("keep me\n")
    secret = Path(f"/tmp/bosun-hostsecret-{token}")
    secret_line = f"HOST-SECRET-{uuid.uuid4().hex}"
    secret.write_text(secret_line + "\n")
    profiles = hostile_profiles(marker, str(victim), str(secret))
    try:
        with security_stack(tmp_path_factory.mktemp("host-escape"), profiles) as sec:
            yield Hostile(sec, marker, victim, victim_dir, secret, secret_line)
    finally:
        for path in (victim, secret, *victim_dir.iterdir()):
            path.unlink(missing_ok=True)
        victim_dir.rmdir()
        for left in Path("/tmp").glob(f"{marker}-*"):
            left.unlink()


def test_armed_git_config_hooks_attributes_and_nested_repositories_run_nothing(
    hostile: Hostile,
) -> None:
    """Every configuration key that runs a program, every hook, attributes binding them to
    every path — in the agent's repository and in a nested one it made: none runs on the
    host; the nested repository's files are kept without its ``.git``."""
    before = hostile.victim_state()
    run = hostile.sec.probe("evil-config")
    hostile.sec.settled(run["id"])
    assert hostile.escaped() == []
    assert run["state"] == "review_ready", run
    tree = hostile.tree(run["branch"])
    assert {"feature.txt", "vendor/evil/lib.py", ".gitattributes"} <= set(tree)
    assert not any("/.git/" in f"/{path}" for path in tree), sorted(tree)
    skipped = [
        e["data"]
        for e in hostile.sec.stack.events(run["id"], "policy")
        if e["data"].get("rule") == "paths.nested_repositories"
    ]
    assert [(d["path"], d["decision"]) for d in skipped] == [("vendor/evil/.git", "skip")]
    assert hostile.victim_state() == before


def test_an_armed_plan_phase_runs_nothing_and_ends_clearly(hostile: Hostile) -> None:
    """The same, planted by a plan phase, which must change no code: the host reads the tree
    to see that it changed (as data), the undo runs in the sandbox with the agent's own
    sabotaged git and cannot work, so the run fails saying so — and nothing ran on the host."""
    run = hostile.sec.probe("evil-config-plan")
    hostile.sec.settled(run["id"])
    assert hostile.escaped() == []
    assert run["state"] == "failed", run
    assert run["reason"] == (
        "the plan phase changed files that could not be undone; nothing was pushed"
    )
    assert run["branch"] not in hostile.sec.branches()


def test_a_changed_gitmodules_is_refused_and_runs_nothing(hostile: Hostile) -> None:
    run = hostile.sec.probe("evil-submodule")
    hostile.sec.settled(run["id"])
    assert hostile.escaped() == []
    assert run["state"] == "failed", run
    assert ".gitmodules (paths.submodules)" in run["reason"], run["reason"]
    assert run["branch"] not in hostile.sec.branches() and run["pr_number"] is None


def test_links_planted_between_phases_are_never_written_through(hostile: Hostile) -> None:
    """A process the plan phase leaves behind keeps swapping ``.git`` entries for links to a
    host file and folder: it is killed when the phase ends, and the host never writes (or
    deletes) through the links."""
    before = hostile.victim_state()
    run = hostile.sec.probe("evil-phases")
    hostile.sec.settled(run["id"])
    assert run["state"] == "review_ready", run
    tree = hostile.tree(run["branch"])
    assert "feature.txt" in tree
    assert "leftover-was-alive.txt" not in tree  # killed at the end of the plan phase
    assert hostile.victim_state() == before
    assert hostile.escaped() == []


def test_a_git_linked_to_a_host_file_reveals_nothing(hostile: Hostile) -> None:
    """``.git`` is a link to a host file, a nested ``.git`` file points at it, a link in the
    tree names it: the run succeeds with the links recorded as links, and no byte of the host
    file is read, stored or published."""
    before = hostile.victim_state()
    run = hostile.sec.probe("evil-links")
    hostile.sec.settled(run["id"])
    assert run["state"] == "review_ready", run
    tree = hostile.tree(run["branch"])
    assert {"feature.txt", "sub/code.py"} <= set(tree)
    assert "sub/.git" not in tree and "pipe" not in tree
    mode, oid = tree["leak.txt"]
    assert mode == "120000" and hostile.blob(oid) == str(hostile.secret)
    assert hostile.secret_line not in hostile.published(run["id"])
    decisions = {
        (e["data"].get("rule"), e["data"].get("path"))
        for e in hostile.sec.stack.events(run["id"], "policy")
    }
    assert ("paths.nested_repositories", "sub/.git") in decisions
    assert ("paths.special_files", "pipe") in decisions
    assert hostile.victim_state() == before
    assert os.path.exists(hostile.secret)


def test_redis_signals_alone_neither_cancel_a_run_nor_raise_its_budget(hostile: Hostile) -> None:
    """Redis only wakes the run's watch: a cancel or a budget raise written there by someone
    holding its password, with nothing recorded in the database, changes nothing; the same
    raise made by a writer's `/budget +5` reaches the run's gateway."""
    import redis as redis_lib

    sec = hostile.sec
    stack = sec.stack
    number = sec.start("budgeted-sleep")
    run = sec.run_for(number, {"running"}, timeout=60)
    stack.wait_for(
        lambda: any("sandbox-ready" in e["data"].get("line", "") for e in stack.events(run["id"])),
        30,
        "the agent's first line",
    )
    keys = stack.settings.redis
    client = redis_lib.Redis.from_url(
        keys.url, password=keys.password_value(), socket_connect_timeout=2
    )
    with client:
        client.set(keys.key("cancel", run["id"]), "mallory", ex=60)
        client.set(keys.key("budget", run["id"]), "1000", ex=60)
    time.sleep(3)  # the watch ticks every 200 ms and reads the database every 2 s
    assert [r["state"] for r in stack.runs() if r["id"] == run["id"]] == ["running"]
    raised = [e for e in stack.events(run["id"], "cost") if e["data"].get("source") == "budget"]
    assert raised == []
    stack.emulator.comment(stack.repo, number, "/budget +5", "alice")
    event = stack.wait_for(
        lambda: [e for e in stack.events(run["id"], "cost") if e["data"].get("source") == "budget"],
        30,
        "the budget raise reaching the run",
    )
    assert event[0]["data"]["budget_usd"] == 6.0  # the profile's $1 and the writer's $5
    stack.emulator.remove_label(stack.repo, number, "bosun:budgeted-sleep", "alice")
    sec.run_for(number, {"cancelled"}, timeout=30)
