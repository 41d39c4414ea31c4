"""Git smart HTTP against the emulator: clone and push with an installation token, GitHub's
refusals (401/403) otherwise, push side effects, and GH006 on a protected branch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.emulator.world import World

pytest_plugins = ["tests.emulator.fixtures"]


def run_git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_AUTHOR_NAME": "Bot",
        "GIT_AUTHOR_EMAIL": "bot@example.com",
        "GIT_COMMITTER_NAME": "Bot",
        "GIT_COMMITTER_EMAIL": "bot@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(cwd or Path.cwd()),
    }
    return subprocess.run(
        ["git", "-c", "credential.helper=", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def token_for(world: World, **body: object) -> str:
    gh = world.app_github()
    return gh.rest.apps.create_installation_access_token(
        world.repo.installation_id, **body
    ).parsed_data.token  # type: ignore[arg-type]


def authed(url: str, token: str) -> str:
    return url.replace("http://", f"http://x-access-token:{token}@")


def test_clone_push_and_what_the_api_then_reports(github_world: World, tmp_path: Path) -> None:
    em = github_world.emulator
    em.push("octo/hello", "feature", {"a.txt": "1\n"}, user="alice")
    pr = em.open_pull("octo/hello", "Feature", head="feature", user="alice")
    token = token_for(github_world)
    work = tmp_path / "clone"
    cloned = run_git("clone", authed(github_world.repo.clone_url, token), str(work))
    assert cloned.returncode == 0, cloned.stderr
    assert (work / "README.md").read_text() == "# Hello\n"

    assert run_git("checkout", "feature", cwd=work).returncode == 0
    (work / "a.txt").write_text("2\n")
    run_git("commit", "-qam", "Change a", cwd=work)
    pushed = run_git("push", "origin", "feature", cwd=work)
    assert pushed.returncode == 0, pushed.stderr
    new_head = run_git("rev-parse", "HEAD", cwd=work).stdout.strip()

    gh = github_world.installation_github()
    assert gh.rest.pulls.get("octo", "hello", pr).parsed_data.head.sha == new_head
    ref = gh.rest.git.get_ref("octo", "hello", "heads/feature").parsed_data
    assert ref.object_.sha == new_head
    content = gh.rest.repos.get_content("octo", "hello", "a.txt", ref="feature").parsed_data
    import base64

    assert base64.b64decode(content.content) == b"2\n"  # type: ignore[union-attr]
    sync = [
        d for d in em.deliveries() if (d["event"], d["action"]) == ("pull_request", "synchronize")
    ]
    assert [d["payload"]["after"] for d in sync] == [new_head]
    pushes = [d for d in em.deliveries() if d["event"] == "push"]
    assert pushes[-1]["payload"]["head_commit"]["message"] == "Change a"

    run_git("checkout", "-qb", "bosun/new", cwd=work)
    assert run_git("push", "origin", "bosun/new", cwd=work).returncode == 0
    assert "bosun/new" in em.state("octo", "hello")["branches"]


def test_refusals_without_or_with_bad_tokens(github_world: World, tmp_path: Path) -> None:
    url = github_world.repo.clone_url
    missing = run_git("ls-remote", url)
    assert missing.returncode != 0
    assert (
        "could not read Username" in missing.stderr
        or "401" in missing.stderr
        or ("Authentication failed" in missing.stderr)
    )
    wrong = run_git("ls-remote", authed(url, "ghs_" + "x" * 36))
    assert wrong.returncode != 0
    assert "403" in wrong.stderr

    token = token_for(github_world)
    assert run_git("ls-remote", authed(url, token)).returncode == 0
    github_world.emulator.fault("expire_tokens")
    expired = run_git("ls-remote", authed(url, token))
    assert expired.returncode != 0
    assert "403" in expired.stderr


def test_token_for_another_repository_is_refused(github_world: World, tmp_path: Path) -> None:
    em = github_world.emulator
    other = em.create_repo("octo", "other", str(github_world.source))
    token = token_for(github_world, repositories=["hello"])
    assert run_git("ls-remote", authed(github_world.repo.clone_url, token)).returncode == 0
    refused = run_git("ls-remote", authed(other.clone_url, token))
    assert refused.returncode != 0
    assert "403" in refused.stderr
    read_only = token_for(github_world, permissions={"contents": "read"})
    work = tmp_path / "ro"
    assert (
        run_git("clone", "-q", authed(github_world.repo.clone_url, read_only), str(work)).returncode
        == 0
    )
    run_git("commit", "-q", "--allow-empty", "-m", "x", cwd=work)
    push = run_git("push", "origin", "main", cwd=work)
    assert push.returncode != 0
    assert "403" in push.stderr


def test_protected_branch_rejects_pushes_like_github(github_world: World, tmp_path: Path) -> None:
    em = github_world.emulator
    token = token_for(github_world)
    work = tmp_path / "clone"
    run_git("clone", "-q", authed(github_world.repo.clone_url, token), str(work))
    before = em.state("octo", "hello")["branches"]["main"]
    em.fault("protected_branch", repo="octo/hello", branch="main", count=1)
    run_git("commit", "-q", "--allow-empty", "-m", "direct", cwd=work)
    rejected = run_git("push", "origin", "main", cwd=work)
    assert rejected.returncode != 0
    assert "remote: error: GH006: Protected branch update failed for refs/heads/main." in (
        rejected.stderr
    )
    assert em.state("octo", "hello")["branches"]["main"] == before
    assert not [d for d in em.deliveries() if d["event"] == "push"]

    accepted = run_git("push", "origin", "main", cwd=work)  # the fault was count-limited
    assert accepted.returncode == 0, accepted.stderr
    assert em.state("octo", "hello")["branches"]["main"] != before
