"""Per-repository dependency caches on the host: a run's copy is writable by the sandbox user
during setup only, is never another repository's, is never a way to touch a host file, and
the caches stay within their caps (least recently used go first)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from sandboxes.caches import ECOSYSTEM_DIRS, Caches, repository_key

SANDBOX = (101000, 101000)  # a remapped sandbox user's host ids


def make(tmp_path: Path, **caps: int) -> Caches:
    return Caches(
        tmp_path / "caches",
        max_bytes=caps.get("max_bytes", 10**9),
        max_bytes_per_repository=caps.get("per_repository", 10**9),
    )


def cache_of(run_dir: Path) -> Path:
    """The run's cache folder (its run folder exists, as the prepare step makes it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / "cache"


def run_setup(caches: Caches, key: str, run_dir: Path, files: dict[str, bytes]) -> int:
    """What a run does: stage, let "setup" write, seal, publish."""
    target = cache_of(run_dir)
    caches.stage(key, target, SANDBOX)
    for name, data in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
        os.chmod(target / name, 0o600)  # as pip writes its cache files
    caches.seal(target)
    return caches.publish(key, target, run_dir.name)


def test_a_run_copy_is_the_sandbox_users_during_setup_and_roots_after(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the worker changes owners as root; run the tests as root")
    caches = make(tmp_path)
    key = repository_key(1, "octo/hello")
    run_setup(caches, key, tmp_path / "r1", {"pip/http/a": b"wheel"})

    target = cache_of(tmp_path / "r2")
    assert caches.stage(key, target, SANDBOX) is True
    for name in ECOSYSTEM_DIRS:
        info = (target / name).lstat()
        assert (info.st_uid, info.st_gid) == SANDBOX and stat.S_IMODE(info.st_mode) == 0o755
    published = (target / "pip/http/a").lstat()
    mode = stat.S_IMODE(published.st_mode)  # 0600 as written: readable to all, root's to write
    assert published.st_uid == 0 and mode & 0o444 == 0o444 and not mode & 0o022
    assert (target / "pip/http/a").read_bytes() == b"wheel"
    # The copy's file is a link to the published one: nobody but root may write it.
    assert published.st_nlink >= 2

    caches.seal(target)
    for path in [target, *target.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, path


def test_repositories_never_share_a_cache(tmp_path: Path) -> None:
    caches = make(tmp_path)
    one, other = repository_key(1, "octo/hello"), repository_key(2, "octo/other")
    assert one != other and "/" not in one
    run_setup(caches, one, tmp_path / "r1", {"pip/secret-wheel": b"x" * 10})
    target = cache_of(tmp_path / "r2")
    assert caches.stage(other, target, SANDBOX) is False
    assert [p for p in target.rglob("*") if p.is_file()] == []
    # A renamed repository keeps its id but gets a new key: nothing carries over by name.
    assert repository_key(1, "octo/renamed") != one


def test_links_the_setup_planted_are_never_followed(tmp_path: Path) -> None:
    host_file = tmp_path / "host-secret"
    host_file.write_text("secret")
    os.chmod(host_file, 0o640)
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "f").write_text("host")
    caches = make(tmp_path)
    key = repository_key(1, "octo/hello")
    target = cache_of(tmp_path / "r1")
    caches.stage(key, target, SANDBOX)
    os.symlink(host_file, target / "pip" / "to-file")
    os.symlink(host_dir, target / "npm" / "to-dir")
    os.mkfifo(target / "uv" / "fifo")
    caches.seal(target)
    caches.publish(key, target, "r1")
    assert stat.S_IMODE(host_file.stat().st_mode) == 0o640  # not chmodded through the link
    assert host_file.stat().st_uid == 0
    again = cache_of(tmp_path / "r2")
    caches.stage(key, again, SANDBOX)
    assert (again / "pip" / "to-file").is_symlink()
    assert (again / "npm" / "to-dir").is_symlink()
    assert stat.S_ISFIFO((again / "uv" / "fifo").lstat().st_mode)
    assert (host_dir / "f").read_text() == "host" and host_file.read_text() == "secret"
    caches.evict()
    assert host_file.exists() and (host_dir / "f").exists()


def test_caps_drop_an_oversized_cache_and_evict_the_least_recently_used(tmp_path: Path) -> None:
    caches = make(tmp_path, per_repository=200_000, max_bytes=300_000)
    big = repository_key(9, "octo/big")
    size = run_setup(caches, big, tmp_path / "r0", {"pip/big": os.urandom(250_000)})
    assert size > 200_000 and caches.sizes()[big][0] == 0  # measured, not kept

    keys = [repository_key(n, f"octo/r{n}") for n in (1, 2, 3)]
    for n, key in enumerate(keys):
        run_setup(caches, key, tmp_path / f"r{n + 1}", {"pip/w": os.urandom(120_000)})
        time.sleep(0.01)
    # The oldest is used again: the next one in line goes instead.
    caches.stage(keys[0], cache_of(tmp_path / "r9"), SANDBOX)
    removed = caches.evict(keep=keys[2])
    assert removed == [keys[1]]
    sizes = caches.sizes()
    assert sizes[keys[1]][0] == 0 and sizes[keys[0]][0] > 0 and sizes[keys[2]][0] > 0
    assert sum(size for size, _ in sizes.values()) <= 300_000


def test_publishing_replaces_the_earlier_generation(tmp_path: Path) -> None:
    caches = make(tmp_path)
    key = repository_key(1, "octo/hello")
    run_setup(caches, key, tmp_path / "ra", {"pip/a": b"a"})
    run_setup(caches, key, tmp_path / "rb", {"pip/b": b"b"})
    generations = sorted(p.name for p in (caches.root / key).iterdir() if p.name.startswith("gen-"))
    assert generations == ["gen-rb"]
    target = cache_of(tmp_path / "rc")
    caches.stage(key, target, SANDBOX)
    assert (target / "pip/a").read_bytes() == b"a" and (target / "pip/b").read_bytes() == b"b"


def test_lock_files_are_the_runs_own_and_uvs_folder_is_reopened_after_publishing(
    tmp_path: Path,
) -> None:
    """A tool's lock file (empty) is a new file of the run's, never the published one; after
    publishing, uv's folder is the sandbox user's again for the later phases (uv cannot read a
    read-only cache) while its files stay the published, root-owned ones."""
    caches = make(tmp_path)
    key = repository_key(1, "octo/hello")
    files = {"uv/.lock": b"", "uv/wheels-v5/x/1.0.lock": b"", "uv/archive-v0/a/m.py": b"42"}
    run_setup(caches, key, tmp_path / "r1", {**files, "npm/_cacache/index-v5/b": b"entry"})
    published = caches.root / key / "current"

    target = cache_of(tmp_path / "r2")
    caches.stage(key, target, SANDBOX)
    for lock in ("uv/.lock", "uv/wheels-v5/x/1.0.lock"):
        info = (target / lock).lstat()
        assert (info.st_uid, info.st_size, info.st_nlink) == (SANDBOX[0], 0, 1), lock
        assert (published / lock).lstat().st_uid == 0
    assert (target / "uv/archive-v0/a/m.py").lstat().st_nlink >= 2  # content stays linked

    caches.seal(target)
    caches.publish(key, target, "r2")
    caches.reopen(target, SANDBOX)
    for folder in [target / "uv", *(p for p in (target / "uv").rglob("*") if p.is_dir())]:
        assert folder.lstat().st_uid == SANDBOX[0], folder
    assert (target / "uv/.lock").lstat().st_uid == SANDBOX[0]
    module = (target / "uv/archive-v0/a/m.py").lstat()
    assert module.st_uid == 0 and not module.st_mode & 0o022 and module.st_nlink >= 2
    # Only uv's folder: the others stay sealed.
    assert (target / "npm").lstat().st_uid == 0 and (target / "pip").lstat().st_uid == 0
    # The published generation is untouched: root's folders and files.
    generation = published.resolve()
    for path in [generation, *generation.rglob("*")]:
        assert path.lstat().st_uid == 0, path


GIT_INDEX = "cargo/registry/index/mirror-1/.git"
CARGO_FILES = {
    f"{GIT_INDEX}/HEAD": b"ref: refs/heads/main\n",
    f"{GIT_INDEX}/config": b"[core]\n\tbare = false\n",
    f"{GIT_INDEX}/FETCH_HEAD": b"0123abcd\t\tbranch 'main'\n",
    f"{GIT_INDEX}/logs/HEAD": b"0000 0123 fetch\n",
    f"{GIT_INDEX}/objects/pack/pack-1.pack": b"PACK" * 100,
    "cargo/registry/index/mirror-1/.cache/bo/su/bosun-dep": b"index entry",
    "cargo/registry/cache/mirror-1/bosun-dep-1.0.0.crate": b"crate",
    "cargo/registry/src/mirror-1/bosun-dep-1.0.0/src/lib.rs": b"pub const VALUE: u32 = 42;",
    "cargo/git/db/dep-1/HEAD": b"ref: refs/heads/main\n",  # a bare repository
    "cargo/git/db/dep-1/FETCH_HEAD": b"4567\t\tbranch 'main'\n",
    "cargo/git/db/dep-1/objects/ab/cdef": b"object",
}


def test_gits_files_written_in_place_are_the_runs_own_and_cargos_repositories_reopened(
    tmp_path: Path,
) -> None:
    """git writes FETCH_HEAD and its reflogs in place: a run gets its own copy of a cached
    repository's files outside objects/ (cargo's second setup fetched its index into a root's
    FETCH_HEAD: "Permission denied"). After publishing, cargo's git repositories (its registry
    index, its git dependencies) are the sandbox user's folders again, since libgit2 opens no
    repository another user owns; everything else of cargo's stays sealed."""
    caches = make(tmp_path)
    key = repository_key(1, "octo/crate")
    run_setup(caches, key, tmp_path / "r1", CARGO_FILES)
    published = (caches.root / key / "current").resolve()

    target = cache_of(tmp_path / "r2")
    caches.stage(key, target, SANDBOX)
    own = [f"{GIT_INDEX}/FETCH_HEAD", f"{GIT_INDEX}/logs/HEAD", "cargo/git/db/dep-1/FETCH_HEAD"]
    for name in own:
        info = (target / name).lstat()
        assert (info.st_uid, info.st_nlink) == (SANDBOX[0], 1), name
        assert (target / name).read_bytes() == CARGO_FILES[name]
        assert (published / name).lstat().st_uid == 0
    linked = ("objects/pack/pack-1.pack", "config", "HEAD")  # git replaces these, by rename
    for name in [f"{GIT_INDEX}/{n}" for n in linked] + ["cargo/git/db/dep-1/objects/ab/cdef"]:
        info = (target / name).lstat()
        assert info.st_uid == 0 and info.st_nlink >= 2, name

    caches.seal(target)
    caches.publish(key, target, "r2")
    caches.reopen(target, SANDBOX)
    for top in ("cargo/registry/index", "cargo/git"):
        for folder in [target / top, *(p for p in (target / top).rglob("*") if p.is_dir())]:
            assert folder.lstat().st_uid == SANDBOX[0], folder
    fetch_head = (target / GIT_INDEX / "FETCH_HEAD").lstat()
    assert (fetch_head.st_uid, fetch_head.st_nlink) == (SANDBOX[0], 1)
    pack = (target / GIT_INDEX / "objects/pack/pack-1.pack").lstat()
    assert pack.st_uid == 0 and not pack.st_mode & 0o022 and pack.st_nlink >= 2
    cached = (target / "cargo/registry/index/mirror-1/.cache/bo/su/bosun-dep").lstat()
    assert cached.st_uid == 0 and cached.st_nlink >= 2
    for sealed in ("cargo", "cargo/registry", "cargo/registry/cache", "cargo/registry/src"):
        assert (target / sealed).lstat().st_uid == 0, sealed
    crate = target / "cargo/registry/src/mirror-1/bosun-dep-1.0.0/src/lib.rs"
    assert crate.lstat().st_uid == 0 and crate.parent.lstat().st_uid == 0
    generation = (caches.root / key / "current").resolve()  # r2's, published before reopen
    for path in [generation, *generation.rglob("*")]:
        assert path.lstat().st_uid == 0, path


def test_reopening_never_follows_a_link_on_the_way_to_a_reopened_folder(tmp_path: Path) -> None:
    """A setup that made ``cargo/registry`` a link to a host folder with an ``index`` in it:
    reopening hands nothing of that folder to the sandbox user."""
    host = tmp_path / "host"
    (host / "index" / "inner").mkdir(parents=True)
    (host / "index" / "inner" / "lock").write_bytes(b"")
    caches = make(tmp_path)
    key = repository_key(1, "octo/crate")
    target = cache_of(tmp_path / "r1")
    caches.stage(key, target, SANDBOX)
    (target / "cargo").mkdir(exist_ok=True)
    os.symlink(host, target / "cargo" / "registry")
    os.symlink(host, target / "cargo" / "git")
    caches.seal(target)
    caches.publish(key, target, "r1")
    caches.reopen(target, SANDBOX)
    for path in [host, *host.rglob("*")]:
        assert path.lstat().st_uid == 0, path
    assert (target / "cargo" / "registry").is_symlink()


def test_git_files_are_copied_as_what_they_are_never_through_a_link(tmp_path: Path) -> None:
    """A setup that planted a git folder whose reflog is a link to a host file and whose
    ``FETCH_HEAD`` is a FIFO: the next run's copy keeps the link as a link and the FIFO as a
    FIFO (nothing read through them, nothing blocks). A reflog of 1 MB is copied whole, one
    larger stays a link (copying is for the few lines git writes)."""
    host_file = tmp_path / "host-secret"
    host_file.write_text("secret")
    caches = make(tmp_path)
    key = repository_key(1, "octo/crate")
    target = cache_of(tmp_path / "r1")
    caches.stage(key, target, SANDBOX)
    git = target / "cargo/git/db/dep-1"
    (git / "objects").mkdir(parents=True)
    (git / "logs").mkdir()
    (git / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (git / "logs/refs").mkdir()
    reflog = os.urandom(1 << 20)
    (git / "logs/HEAD").write_bytes(reflog)
    (git / "logs/refs/huge").write_bytes(reflog + b"x")
    os.symlink(host_file, git / "logs/refs/main")
    os.mkfifo(git / "FETCH_HEAD")
    caches.seal(target)
    caches.publish(key, target, "r1")

    again = cache_of(tmp_path / "r2")
    caches.stage(key, again, SANDBOX)
    copy = again / "cargo/git/db/dep-1"
    link = copy / "logs/refs/main"
    assert link.is_symlink() and os.readlink(link) == str(host_file)
    assert stat.S_ISFIFO((copy / "FETCH_HEAD").lstat().st_mode)
    assert (copy / "logs/HEAD").read_bytes() == reflog
    assert (copy / "logs/HEAD").lstat().st_uid == SANDBOX[0]
    huge = (copy / "logs/refs/huge").lstat()
    assert huge.st_uid == 0 and huge.st_nlink >= 2
    caches.seal(again)
    caches.publish(key, again, "r2")
    caches.reopen(again, SANDBOX)
    assert link.is_symlink() and stat.S_ISFIFO((copy / "FETCH_HEAD").lstat().st_mode)
    assert host_file.read_text() == "secret" and host_file.lstat().st_uid == 0
