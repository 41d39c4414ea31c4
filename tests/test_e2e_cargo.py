"""End to end: a Rust project's dependencies through the run's egress proxy into the
repository's cargo cache (``CARGO_HOME``), and offline from it afterwards.

Setup's ``cargo fetch`` reads a registry's index and downloads a ``.crate`` (and, with cargo
0.66, a git dependency) through the proxy, from a registry on the host; the agent builds with
``cargo build --offline`` on the sealed cache and cannot change a cached file; a gate runs
``cargo test --offline``; the repository's next run downloads nothing; another repository's
run sees none of it. Twice: Debian bookworm's cargo 0.66 reading a git index (the test tool
image), and its cargo-web 1.96 reading a sparse index (the test Rust image).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.agent_probes import PRELUDE
from tests.package_index import CargoRegistry, build_crate, cargo_registry
from tests.stack import BosunStack, StackPlace, open_stack
from tests.test_e2e_setup import run_once, setup_step
from tests.tool_image import rust_image, tool_image

PADDING = 1_500_000
"""Incompressible bytes in the crate: about 0.75 s at the registry's 2 MB/s, which the cache
saves."""

CARGO_TOML = """[package]
name = "fixture"
version = "0.1.0"
edition = "2021"

[dependencies]
bosun-dep = "1.0"
GIT_DEPENDENCY"""
# crates.io replaced by the registry, as an operator's mirror of it is configured.
CARGO_CONFIG = """[source.crates-io]
replace-with = "mirror"

[source.mirror]
registry = "INDEX_URL"
"""
MAIN = """fn answer() -> u32 {
    unimplemented!()
}

fn main() {
    println!("{}", answer());
}

#[cfg(test)]
mod tests {
    #[test]
    fn answer_is_42() {
        assert_eq!(super::answer(), 42);
    }
}
"""
GIT_DEP = {
    "Cargo.toml": b'[package]\nname = "bosun-git-dep"\nversion = "0.1.0"\nedition = "2021"\n',
    "src/lib.rs": b"pub const OFFSET: u32 = 2;\n",
}

# The agent: makes the change, builds it from the sealed cache alone (a fresh target folder),
# then tries to change what the repository's cache holds. The registry index's and git
# dependencies' folders are this run's (cargo's libgit2 opens no repository another user
# owns) and so are git's FETCH_HEAD and reflogs in them (git writes those in place): nothing
# in them is the repository's.
AGENT = (
    PRELUDE
    + r"""
git_dep = "bosun-git-dep" in pathlib.Path("/workspace/Cargo.toml").read_text()
main = pathlib.Path("/workspace/src/main.rs")
main.write_text(main.read_text().replace(
    "unimplemented!()", "bosun_dep::VALUE + " + ("bosun_git_dep::OFFSET" if git_dep else "2")
))
subprocess.run(["rm", "-rf", "target"], check=True, cwd="/workspace")
done = subprocess.run(
    ["cargo", "build", "--offline"], capture_output=True, text=True, cwd="/workspace"
)
print("cargo build", done.returncode, done.stdout[-2000:], done.stderr[-3000:])
results["cargo_build"] = done.returncode
if done.returncode == 0:
    ran = subprocess.run(["target/debug/fixture"], capture_output=True, text=True, cwd="/workspace")
    results["fixture"] = ran.stdout.strip()
cargo = "/bosun-cache/cargo"
source = first(cargo + "/registry/src/*/bosun-dep-1.0.0/src/lib.rs")
attempt("src_write", lambda: open(source, "a").write("pub const EVIL: u32 = 1;\n"))
crate = first(cargo + "/registry/cache/*/bosun-dep-1.0.0.crate")
attempt("crate_write", lambda: open(crate, "ab").write(b"x"))
attempt("registry_new_file", lambda: open(cargo + "/registry/cache/planted", "w"))
attempt("cargo_new_file", lambda: open(cargo + "/planted", "w"))
git_index = bool(glob.glob(cargo + "/registry/index/*/.git"))
# a git object of the git index, or a file of the sparse index's cache
cached = first(cargo + "/registry/index/*/" + (".git/objects/**" if git_index else ".cache/**"))
attempt("index_file_write", lambda: open(cached, "ab").write(b"x"))
def replace():  # the same bytes: the run's copy stays usable for the gate
    data = pathlib.Path(cached).read_bytes()
    os.unlink(cached)
    pathlib.Path(cached).write_bytes(data)
attempt("index_file_replace", replace)
if git_index:  # git writes FETCH_HEAD in place: the run's own copy; config is replaced
    fetch_head = first(cargo + "/registry/index/*/.git/FETCH_HEAD")
    attempt("fetch_head_write", lambda: open(fetch_head, "a").write("# appended\n"))
    config = first(cargo + "/registry/index/*/.git/config")
    attempt("index_config_write", lambda: open(config, "a").write("# appended\n"))
if git_dep:
    checkout = first(cargo + "/git/checkouts/**/src/lib.rs")
    attempt("git_dep_write", lambda: open(checkout, "a").write("pub const EVIL: u32 = 1;\n"))
print("probes: " + json.dumps(results, sort_keys=True))
"""
)


@dataclass(frozen=True)
class Cargo:
    """A cargo to test, and how it reads the registry's index."""

    image: Callable[[], str]
    sparse: bool
    git_dependency: bool = True

    def index_url(self, registry: CargoRegistry) -> str:
        return registry.sparse_url if self.sparse else registry.index_url


CARGOS = {
    # Debian bookworm's cargo 0.66: a git index, and libgit2's owner check on its repositories.
    "cargo-0.66-git-index": Cargo(tool_image, sparse=False),
    # Debian bookworm's cargo-web 1.96: the sparse index crates.io serves today, cargo's
    # last-use database. No git dependency: its libgit2 calls fail against the system's
    # libgit2 1.5 ("invalid version 0 on git_proxy_options", with or without a proxy, and
    # even with net.git-fetch-with-cli), a flaw of the package.
    "cargo-1.96-sparse-index": Cargo(rust_image, sparse=True, git_dependency=False),
}


def cargo_config() -> str:
    return (
        "setup:\n"
        "  - echo cache-files-before=$(find /bosun-cache -type f | wc -l)\n"
        "  - cargo fetch\n"
        "gates:\n"
        "  - name: test\n"
        '    run: ["cargo", "test", "--offline"]\n'
    )


def seed(stack: BosunStack, repo: str, registry: CargoRegistry, cargo: Cargo) -> None:
    git_dependency = ""
    if cargo.git_dependency:
        git_dependency = f'bosun-git-dep = {{ git = "{registry.git_url("bosun-git-dep")}" }}\n'
    files = {
        ".github/bosun.yml": cargo_config(),
        ".gitignore": "/target/\nCargo.lock\n",
        ".cargo/config.toml": CARGO_CONFIG.replace("INDEX_URL", cargo.index_url(registry)),
        "Cargo.toml": CARGO_TOML.replace("GIT_DEPENDENCY", git_dependency),
        "src/main.rs": MAIN,
    }
    stack.emulator.push(repo, "main", files, user="alice")


@pytest.mark.parametrize("cargo", list(CARGOS.values()), ids=list(CARGOS))
def test_cargo_fetches_through_the_proxy_and_builds_offline_from_the_cache_afterwards(
    place: StackPlace,
    cargo: Cargo,
) -> None:
    image = cargo.image()
    crate = build_crate("bosun-dep", "1.0.0", "pub const VALUE: u32 = 40;\n", PADDING)
    crate_file = "bosun-dep-1.0.0.crate"
    with cargo_registry({("bosun-dep", "1.0.0"): crate}, {"bosun-git-dep": GIT_DEP}) as registry:
        profiles = {
            "default": {"runner": "script", "command": ["python3", "-c", AGENT], "image": image}
        }
        caches = place.work_root / "caches"
        with open_stack(
            *place,
            profiles=profiles,
            egress={
                "allow": [f"{registry.host}:{registry.port}"],
                "private_hosts": ["127.0.0.1", registry.host],
            },
            caches={"dir": caches},
        ) as stack:
            seen: set[str] = set()
            seed(stack, stack.repo, registry, cargo)
            first = run_once(stack, stack.repo, "Answer 42", seen)
            setup_text = stack.artifacts(first["id"])["setup"].read_text()
            assert "cache-files-before=0" in setup_text, setup_text
            assert registry.sent[crate_file] == 1
            cold = setup_step(stack, first["id"], 2, registry.port)
            assert cold[1] >= PADDING, cold
            egress = [e["data"] for e in stack.events(first["id"], "egress")]
            assert egress and all(
                e["allowed"] and e["phase"] == "setup" and e["host"] == registry.host
                for e in egress
            ), egress

            # The agent built offline from the sealed cache; it could change no cached file,
            # and what it changed in the index's folder (a replaced file, FETCH_HEAD) stayed in
            # its own run.
            transcript = stack.artifacts(first["id"])["transcript"].read_text()
            line = next(x for x in transcript.splitlines() if x.startswith("probes: "))
            probes = json.loads(line.removeprefix("probes: "))
            git_files = {}
            if not cargo.sparse:
                git_files = {"fetch_head_write": "open", "index_config_write": "PermissionError"}
            if cargo.git_dependency:
                git_files["git_dep_write"] = "PermissionError"
            assert probes == {
                "cargo_build": 0,
                "fixture": "42",
                "src_write": "PermissionError",
                "crate_write": "PermissionError",
                "registry_new_file": "PermissionError",
                "cargo_new_file": "PermissionError",
                "index_file_write": "PermissionError",
                "index_file_replace": "open",
                **git_files,
            }, transcript
            (key,) = [p for p in caches.iterdir() if p.is_dir()]
            published = (key / "current" / "cargo").resolve()
            if cargo.sparse:  # the last-use database setup wrote, sealed before the agent built
                assert (published / ".global-cache").is_file()
            for path in [published, *published.rglob("*")]:
                info = path.lstat()
                assert info.st_uid == 0 and not info.st_mode & 0o022, path
                if path.name == "FETCH_HEAD" and "registry/index" in str(path):
                    assert "# appended" not in path.read_text(), path

            # The gate tested the agent's change offline, on the read-only cache.
            (gate,) = stack.events(first["id"], "gate_result")
            log = stack.artifacts(first["id"])["gate:test"].read_text()
            assert gate["data"]["passed"] is True, log
            assert "test tests::answer_is_42 ... ok" in log, log

            # The repository's second run: nothing downloaded again.
            second = run_once(stack, stack.repo, "Answer 42 again", seen)
            assert registry.sent[crate_file] == 1
            warm = setup_step(stack, second["id"], 2, registry.port)
            assert warm[1] < 10_000, warm
            (gate,) = stack.events(second["id"], "gate_result")
            assert gate["data"]["passed"] is True, stack.artifacts(second["id"])["gate:test"]
            print(
                f"cargo fetch: cold {cold[0]:.2f}s ({cold[1]} B), "
                f"warm {warm[0]:.2f}s ({warm[1]} B); load {os.getloadavg()[0]:.1f}"
            )

            # Another repository's run sees none of it and downloads again.
            other = place.world.emulator.create_repo("octo", "other", str(place.world.source))
            place.world.emulator.add_user("alice", other.full_name, "write")
            seed(stack, other.full_name, registry, cargo)
            third = run_once(stack, other.full_name, "Answer 42 elsewhere", seen)
            assert "cache-files-before=0" in stack.artifacts(third["id"])["setup"].read_text()
            assert registry.sent[crate_file] == 2
