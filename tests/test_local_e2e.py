"""End to end on a local repository (no GitHub): Bosun's web and worker for real (Docker
sandbox, script agent), driven through the REST API and the ``bosun`` CLI as a user would.

The agent of the test stack (``tests.stack.EDIT_AGENT``) appends to README.md and writes
src/feature.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.entrypoints.localtoken import write_local_token
from bot.profiles import DEFAULT_PROFILES
from tests.stack import PROFILES, BosunStack, StackPlace, open_stack
from tests.test_api import make_token
from tests.test_localrepo import git, snapshot

BOSUN = str(Path(sys.executable).parent / "bosun")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.docker


def user_repo(parent: Path, name: str = "project", config: str | None = None) -> Path:
    """A user's project on ``main``: README.md, src/app.py (and .bosun.yml when given)."""
    path = parent / name
    path.mkdir(parents=True)
    path.chmod(0o755)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# Project\n")
    (path / "src").mkdir()
    (path / "src" / "app.py").write_text("print('app')\n")
    if config is not None:
        (path / ".bosun.yml").write_text(config)
    git(path, "add", ".")
    git(path, "commit", "-qm", "start")
    return path


def api(stack: BosunStack) -> httpx.Client:
    token = make_token(stack, f"t{time.monotonic_ns()}", "admin")
    return httpx.Client(
        base_url=f"{stack.url}/api/v1",
        headers={"Authorization": f"Bearer {token}", "X-Bosun-Client": "cli"},
        timeout=60,
    )


def add(client: httpx.Client, path: Path, **extra: Any) -> dict[str, Any]:
    answer = client.post("/repositories", json={"path": str(path), **extra})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def add_task(client: httpx.Client, repo: str, title: str, **extra: Any) -> dict[str, Any]:
    answer = client.post("/tasks", json={"repository": repo, "title": title, **extra})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def start(client: httpx.Client, repo: str, number: int, **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/runs", json={"repository": repo, "issue_number": number, **extra}, params={"wait": 20}
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def wait_state(
    client: httpx.Client, run_id: str, states: set[str], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if run["state"] in states:
            return run
        time.sleep(0.2)
    raise AssertionError(f"{run_id} not in {states} after {timeout}s: {run}")


def act(client: httpx.Client, run_id: str, verb: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"/runs/{run_id}/{verb}", json=body, params={"wait": 25})
    assert answer.status_code in (200, 409), answer.text
    return dict(answer.json())


def rev(path: Path, ref: str) -> str:
    return git(path, "rev-parse", "--verify", "--quiet", ref).strip()


def test_a_run_leaves_the_users_checkout_alone_and_approval_merges(
    stack: BosunStack, tmp_path: Path
) -> None:
    """A dirty working copy with a feature branch checked out: the run writes its branch in
    the repository and nothing else; approving merges it into main as a merge commit, still
    without touching the checkout."""
    path = user_repo(tmp_path)
    git(path, "switch", "-q", "-c", "my-feature")
    (path / "src" / "app.py").write_text("print('half-done work')\n")
    (path / "scratch.txt").write_text("untracked\n")
    (path / "staged.txt").write_text("staged\n")
    git(path, "add", "staged.txt")
    before = snapshot(path)
    main = rev(path, "main")
    with api(stack) as client:
        repo = add(client, path)
        assert (repo["full_name"], repo["kind"], repo["default_branch"]) == (
            "local/project",
            "local",
            "main",
        )
        again = client.post("/repositories", json={"path": str(path), "name": "other"})
        assert again.status_code == 409 and "already added as local/project" in again.text
        task = add_task(
            client,
            "local/project",
            "Add the feature",
            body="Write src/feature.py.",
            acceptance=["feature() returns 42"],
            focus=["src/**", "README.md"],
        )
        assert (task["kind"], task["issue_number"]) == ("local", 1)
        run = start(client, "local/project", 1)
        ready = wait_state(client, run["id"], {"review_ready", "failed"})
        assert ready["state"] == "review_ready", ready
        branch = ready["branch"]
        assert branch == "bosun/1-add-the-feature"
        assert snapshot(path) == before  # work tree, index and HEAD as they were
        head = rev(path, branch)
        assert head == ready["head_sha"]
        assert git(path, "show", f"{branch}:src/feature.py") == "def feature():\n    return 42\n"
        prompt = git(path, "show", f"{branch}:prompt-seen.txt")
        assert "- [ ] feature() returns 42" in prompt and "Focus: src/**, README.md" in prompt

        approved = act(client, run["id"], "approve")
        assert approved["outcome"] == "accepted", approved
        merged = wait_state(client, run["id"], {"merged", "review_ready"})
        assert merged["state"] == "merged", merged
    tip = rev(path, "main")
    assert git(path, "rev-list", "--parents", "-n1", tip).split()[1:] == [main, head]
    lines = (stack.settings.data_dir / "metrics.jsonl").read_text().splitlines()
    ended = [json.loads(line) for line in lines if run["id"] in line]
    assert [(m["state"], m["files_changed"]) for m in ended] == [("merged", 3)]
    assert git(path, "show", "main:src/feature.py").startswith("def feature")
    assert snapshot(path) == before


def test_approval_refuses_when_main_moved_under_the_reviewed_files_and_partial_merges(
    stack: BosunStack, tmp_path: Path
) -> None:
    """main (checked out, clean) changes README.md after the run: approving the whole run is
    refused naming README.md and nothing moves; approving only src/feature.py merges exactly
    that file, and the checked-out main follows."""
    path = user_repo(tmp_path)
    with api(stack) as client:
        add(client, path)
        add_task(client, "local/project", "Two files")
        run = start(client, "local/project", 1)
        ready = wait_state(client, run["id"], {"review_ready", "failed"})
        assert ready["state"] == "review_ready", ready
        (path / "README.md").write_text("# Project, renamed by its owner\n")
        git(path, "commit", "-qam", "rename")
        moved = rev(path, "main")
        refused = act(client, run["id"], "approve")
        assert refused["outcome"] == "accepted"  # the approval counts; the merge does not
        back = wait_state(client, run["id"], {"review_ready", "merged"})
        assert back["state"] == "review_ready"
        events = client.get(f"/runs/{run['id']}/events", params={"kind": "status"}).json()
        why = events["items"][-1]["data"]["reason"]
        assert "conflicts on `README.md`" in why, why
        assert rev(path, "main") == moved
        assert git(path, "status", "--porcelain") == ""

        partial = act(client, run["id"], "approve", paths=["src/feature.py"])
        assert partial["outcome"] == "accepted", partial
        merged = wait_state(client, run["id"], {"merged", "review_ready"})
        assert merged["state"] == "merged", merged
    assert git(path, "show", "main:README.md") == "# Project, renamed by its owner\n"
    assert git(path, "show", "main:src/feature.py").startswith("def feature")
    assert (path / "src" / "feature.py").exists()  # the clean checkout followed
    assert git(path, "status", "--porcelain") == ""
    changed = git(path, "diff", "--name-only", moved, "main").split()
    assert changed == ["src/feature.py"]


def test_reject_deletes_the_branch_when_configured(stack: BosunStack, tmp_path: Path) -> None:
    path = user_repo(tmp_path, config="branch:\n  delete_on_reject: true\n")
    main = rev(path, "main")
    with api(stack) as client:
        add(client, path)
        add_task(client, "local/project", "Not wanted")
        run = start(client, "local/project", 1)
        ready = wait_state(client, run["id"], {"review_ready", "failed"})
        assert rev(path, ready["branch"])
        rejected = act(client, run["id"], "reject", reason="not now")
        assert rejected["outcome"] == "accepted", rejected
        wait_state(client, run["id"], {"rejected"})
    assert git(path, "branch", "--list", "bosun/*") == ""
    assert rev(path, "main") == main
    lines = (stack.settings.data_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["state"] for line in lines if run["id"] in line] == ["rejected"]


def test_bad_input_is_refused_with_the_fix_and_leaves_no_row(
    stack: BosunStack, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with api(stack) as client:
        for path, words in (
            (plain, "is not a git repository"),
            (tmp_path / "absent", "does not exist"),
            (user_repo(tmp_path, "r") / ".git", "give the working copy's folder"),
        ):
            answer = client.post("/repositories", json={"path": str(path)})
            assert answer.status_code == 409 and words in answer.json()["detail"], answer.text
        branchless = client.post(
            "/repositories", json={"path": str(tmp_path / "r"), "default_branch": "trunk"}
        )
        assert branchless.status_code == 409 and "no branch `trunk`" in branchless.text
        assert stack.db("SELECT full_name FROM repositories") == []

        add(client, user_repo(tmp_path, "project"))
        unknown = client.post(
            "/tasks", json={"repository": "local/project", "title": "x", "profile": "nope"}
        )
        assert unknown.status_code == 409 and "no profile 'nope'" in unknown.text
        assert stack.db("SELECT id FROM tasks") == []
        missing = start_refused(client, "local/project", 7)
        assert "has no task #7" in missing

        add_task(client, "local/project", "Gone before it runs")
        shutil.rmtree(tmp_path / "project")
        gone = start_refused(client, "local/project", 1)
        assert "does not exist" in gone


def start_refused(client: httpx.Client, repo: str, number: int) -> str:
    answer = client.post(
        "/runs", json={"repository": repo, "issue_number": number}, params={"wait": 20}
    )
    assert answer.status_code == 409, answer.text
    return str(answer.json()["detail"])


def test_a_repository_removed_while_its_run_waits_fails_the_run_clearly(
    stack: BosunStack, tmp_path: Path
) -> None:
    """The run is queued behind another with overlapping focus paths; the repository's folder
    goes away meanwhile: the run fails saying so, and nothing else breaks."""
    path = user_repo(tmp_path)
    with api(stack) as client:
        add(client, path)
        add_task(client, "local/project", "Slow one", focus=["src/**"], profile="slow")
        add_task(client, "local/project", "Waiting one", focus=["src/app.py"])
        first = start(client, "local/project", 1)
        wait_state(client, first["id"], {"running"})
        second = start(client, "local/project", 2)
        time.sleep(1.0)
        assert client.get(f"/runs/{second['id']}").json()["state"] == "queued"
        moved = tmp_path / "moved-away"
        path.rename(moved)
        act(client, first["id"], "cancel")
        failed = wait_state(client, second["id"], {"failed", "review_ready"})
    assert failed["state"] == "failed"
    assert "the local repository cannot be used" in failed["reason"]
    assert str(path) in failed["reason"] and "does not exist" in failed["reason"]


@pytest.fixture
def demo_stack(place: StackPlace) -> Iterator[BosunStack]:
    """The test stack with the profile a fresh install has: ``demo`` (bot.profiles)."""
    profiles = {**PROFILES, "demo": DEFAULT_PROFILES["demo"].model_dump(exclude_none=True)}
    with open_stack(*place, profiles=profiles) as running:
        yield running


def readme_tour() -> list[str]:
    """The commands of the README's local tour, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it on a repository of your own", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_tour_ends_with_a_merged_commit(demo_stack: BosunStack, tmp_path: Path) -> None:
    """The README's three commands, run by a shell on the Bosun host as a newcomer would
    (no token: the one `bosun up` writes for this host), on their own repository."""
    commands = readme_tour()
    assert len(commands) == 3 and all(c.startswith(".venv/bin/bosun ") for c in commands)
    home = tmp_path / "home"
    path = user_repo(home / "src", "hello")
    main = rev(path, "main")
    asyncio.run(write_local_token(demo_stack.settings))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "BOSUN_URL": demo_stack.url,
        "BOSUN_DATA_DIR": str(demo_stack.settings.data_dir),
    }
    for command in commands:
        line = command.replace(".venv/bin/bosun", BOSUN, 1)
        done = subprocess.run(
            ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    tip = rev(path, "main")
    assert tip != main and git(path, "rev-list", "--parents", "-n1", tip).split()[2:] != []
    assert git(path, "show", "main:BOSUN-DEMO.md").endswith("- Say hello in the notes\n")
    assert (path / "BOSUN-DEMO.md").exists()  # the clean checked-out main followed
    assert git(path, "status", "--porcelain") == ""
    assert "bosun/1-say-hello-in-the-notes" in git(path, "branch", "--list", "bosun/*")


def test_retry_with_feedback_continues_the_branch_and_status_shows_the_lineage(
    stack: BosunStack, tmp_path: Path
) -> None:
    path = user_repo(tmp_path)
    with api(stack) as client:
        add(client, path)
        add_task(client, "local/project", "Twice")
        first = start(client, "local/project", 1)
        ready = wait_state(client, first["id"], {"review_ready", "failed"})
        retried = act(client, first["id"], "retry", feedback="Also mention the tests.")
        assert retried["outcome"] == "accepted" and retried["new_run_id"], retried
        second = wait_state(client, retried["new_run_id"], {"review_ready", "failed"})
        assert second["state"] == "review_ready", second
        assert second["parent_run_id"] == first["id"] and second["branch"] == ready["branch"]
        assert client.get(f"/runs/{first['id']}").json()["state"] == "rejected"
    head = rev(path, second["branch"])
    assert git(path, "merge-base", "--is-ancestor", ready["head_sha"], head) == ""
    prompt = git(path, "show", f"{head}:prompt-seen.txt")
    assert "Also mention the tests." in prompt
    token = make_token(stack, "status-reader", "read")
    shown = subprocess.run(
        [BOSUN, "status", second["id"], "--format", "json"],
        env={"PATH": os.environ["PATH"], "BOSUN_URL": stack.url, "BOSUN_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status = json.loads(shown.stdout)
    assert status["run"]["parent_run_id"] == first["id"]
    assert status["run"]["lineage"]["parent"] == first["id"]
    assert status["manifest"]["run_id"] == second["id"]
    assert "approvals" in status["run"] and "gates" in status["run"]
