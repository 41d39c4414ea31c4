"""Git plumbing on the emulator's bare repositories: refs, blobs, trees, commits, merges."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ZERO = "0" * 40
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

PRE_RECEIVE = """#!/bin/sh
# Refuses updates of branches the emulator marks as protected (GitHub's GH006 answer).
[ -z "$EMULATOR_PROTECTED" ] && exit 0
status=0
while read -r old new ref; do
  for branch in $EMULATOR_PROTECTED; do
    if [ "$ref" = "refs/heads/$branch" ]; then
      echo "error: GH006: Protected branch update failed for $ref." >&2
      echo "error: Changes must be made through a pull request." >&2
      status=1
    fi
  done
done
exit $status
"""


class GitError(Exception):
    pass


_SHA = re.compile(r"^[0-9a-f]{40}$")


def by_commit(function: F) -> F:
    """Remember answers that depend only on commits named by full SHA (git objects never
    change): a PR is rendered on every read and every webhook, like GitHub, which caches
    mergeability and diff stats per head too."""
    answers: dict[tuple[Any, ...], Any] = {}
    lock = threading.Lock()

    @functools.wraps(function)
    def wrapper(repo: Path, *shas: str) -> Any:
        if not all(_SHA.match(sha) for sha in shas):
            return function(repo, *shas)
        key = (str(repo), *shas)
        with lock:
            if key in answers:
                return answers[key]
        answer = function(repo, *shas)
        with lock:
            answers[key] = answer
        return answer

    return wrapper  # type: ignore[return-value]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME="GitHub",
        GIT_AUTHOR_EMAIL="noreply@github.com",
        GIT_COMMITTER_NAME="GitHub",
        GIT_COMMITTER_EMAIL="noreply@github.com",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=os.environ.get("HOME", "/tmp"),
    )
    return env


def git(
    repo: Path,
    *args: str,
    input_: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        input=input_,
        capture_output=True,
        env={**_env(), **(env or {})},
        check=False,
    )
    if check and result.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace')}")
    return result


def out(repo: Path, *args: str) -> str:
    return git(repo, *args).stdout.decode().strip()


def create_from(source: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "clone", "--bare", "--quiet", "--no-hardlinks", source, str(dest)],
        check=True,
        capture_output=True,
        env=_env(),
    )
    git(dest, "config", "http.receivepack", "true")
    git(dest, "config", "uploadpack.allowAnySHA1InWant", "true")
    hook = dest / "hooks" / "pre-receive"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(PRE_RECEIVE)
    hook.chmod(0o755)


def branches(repo: Path) -> dict[str, str]:
    text = out(repo, "for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads")
    return dict(line.split(" ", 1) for line in text.splitlines() if line)


def resolve(repo: Path, ref: str) -> str | None:
    result = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    return result.stdout.decode().strip() if result.returncode == 0 else None


@dataclass
class Entry:
    mode: str
    type: str
    sha: str
    size: int
    path: str


def entry(repo: Path, commit: str, path: str) -> Entry | None:
    """The tree entry at ``path`` (``""`` is the root tree) in ``commit``."""
    if not path:
        sha = out(repo, "rev-parse", f"{commit}^{{tree}}")
        return Entry("040000", "tree", sha, 0, "")
    result = git(repo, "ls-tree", "-l", commit, "--", path, check=False)
    line = result.stdout.decode().strip()
    if result.returncode != 0 or not line:
        return None
    meta, name = line.split("\t", 1)
    mode, kind, sha, size = meta.split()
    if name != path:
        return None
    return Entry(mode, kind, sha, 0 if size == "-" else int(size), name)


def tree(repo: Path, commit: str, path: str) -> list[Entry]:
    spec = f"{commit}:{path}" if path else f"{commit}^{{tree}}"
    entries = []
    for line in out(repo, "ls-tree", "-l", spec).splitlines():
        meta, name = line.split("\t", 1)
        mode, kind, sha, size = meta.split()
        full = f"{path}/{name}" if path else name
        entries.append(Entry(mode, kind, sha, 0 if size == "-" else int(size), full))
    return entries


def blob(repo: Path, sha: str) -> bytes:
    return git(repo, "cat-file", "blob", sha).stdout


def commit_files(
    repo: Path,
    parent: str | None,
    files: dict[str, str | None],
    message: str,
    author: str,
    email: str,
) -> str:
    """A new commit on top of ``parent`` with ``files`` written (``None`` deletes a file)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": email,
        }
        if parent:
            git(repo, "read-tree", parent, env=env)
        for path, content in files.items():
            if content is None:
                git(repo, "update-index", "--force-remove", "--", path, env=env)
                continue
            sha = git(repo, "hash-object", "-w", "--stdin", input_=content.encode()).stdout
            cacheinfo = f"100644,{sha.decode().strip()},{path}"
            git(repo, "update-index", "--add", "--cacheinfo", cacheinfo, env=env)
        tree_sha = git(repo, "write-tree", env=env).stdout.decode().strip()
    parents = ["-p", parent] if parent else []
    return (
        git(repo, "commit-tree", tree_sha, *parents, "-m", message, env=env).stdout.decode().strip()
    )


def update_ref(repo: Path, branch: str, new: str, old: str | None = None) -> None:
    git(repo, "update-ref", f"refs/heads/{branch}", new, *([old] if old else []))


@by_commit
def merge_tree(repo: Path, base: str, head: str) -> tuple[str | None, list[str]]:
    """Merge ``head`` into ``base``: the tree, or ``None`` and the conflicting paths."""
    result = git(repo, "merge-tree", "--write-tree", "--name-only", base, head, check=False)
    lines = result.stdout.decode().splitlines()
    if result.returncode == 0:
        return lines[0], []
    if result.returncode == 1:
        conflicts = []
        for line in lines[1:]:
            if not line:
                break
            conflicts.append(line)
        return None, conflicts
    raise GitError(result.stderr.decode(errors="replace"))


def commit_tree(
    repo: Path, tree_sha: str, parents: list[str], message: str, author: str, email: str
) -> str:
    args = [a for p in parents for a in ("-p", p)]
    env = {"GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": email}
    return git(repo, "commit-tree", tree_sha, *args, "-m", message, env=env).stdout.decode().strip()


@by_commit
def diff_stats(repo: Path, base: str, head: str) -> tuple[int, int, int, int]:
    """(commits, additions, deletions, changed files) of ``base...head``."""
    merge_base = git(repo, "merge-base", base, head, check=False).stdout.decode().strip() or base
    commits = int(out(repo, "rev-list", "--count", f"{merge_base}..{head}") or 0)
    additions = deletions = files = 0
    for line in out(repo, "diff", "--numstat", merge_base, head).splitlines():
        added, deleted, _ = line.split("\t", 2)
        files += 1
        additions += int(added) if added != "-" else 0
        deletions += int(deleted) if deleted != "-" else 0
    return commits, additions, deletions, files


@by_commit
def commit_info(repo: Path, sha: str) -> dict[str, str]:
    fmt = "%H%x00%T%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"
    fields = out(repo, "show", "-s", f"--format={fmt}", sha).split("\x00")
    keys = [
        "sha",
        "tree",
        "author_name",
        "author_email",
        "author_date",
        "committer_name",
        "committer_email",
        "committer_date",
        "message",
    ]
    return dict(zip(keys, fields, strict=True))


@by_commit
def changed_paths(repo: Path, old: str, new: str) -> dict[str, list[str]]:
    changes: dict[str, list[str]] = {"added": [], "removed": [], "modified": []}
    kinds = {"A": "added", "D": "removed"}
    for line in out(repo, "diff", "--name-status", "--no-renames", old, new).splitlines():
        status, path = line.split("\t", 1)
        changes[kinds.get(status[0], "modified")].append(path)
    return changes


@by_commit
def is_ancestor(repo: Path, old: str, new: str) -> bool:
    return git(repo, "merge-base", "--is-ancestor", old, new, check=False).returncode == 0
