"""Per-repository images: the operator's allowlist (pure), and a repository Dockerfile built on
the real engine — no network during the build, cached by content so the second run builds
nothing, refused bases and failed builds said plainly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.domain.images import (
    dockerfile_bases,
    image_allowed,
    refused_build,
    refused_image,
)
from bot.domain.repoconfig import ImageBuildConfig, RepoConfigError, parse_repo_config
from sandboxes.errors import ImageNotFound
from sandboxes.repoimage import BuildRequest, ImageBuildError, build, repo_tag
from tests.services import docker_client

ALLOWED = ["ghcr.io/acme/*", "python", "bosun-agent:latest", "localhost:5000/*"]


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/acme/agent:1.2", True),
        ("ghcr.io/acme/team/agent@sha256:" + "a" * 64, True),
        ("ghcr.io/acme-evil/agent:1", False),  # a prefix is not a string prefix
        ("ghcr.io/acme", False),
        ("python", True),
        ("python:3.12", True),  # no tag on the list: any tag
        ("docker.io/library/python:3.12", True),  # Docker's spelled-out name is the same image
        ("python-evil", False),
        ("evil/python", False),
        ("bosun-agent:latest", True),
        ("bosun-agent:other", False),  # a tag on the list: that tag only
        ("localhost:5000/x", True),
        ("localhost:5001/x", False),
        ("ghcr.io/acme/../evil", False),  # not a reference at all
        ("GHCR.io/acme/x", False),
        ("", False),
    ],
)
def test_the_allowlist(image: str, allowed: bool) -> None:
    assert image_allowed(image, ALLOWED) is allowed


def test_an_empty_allowlist_allows_nothing() -> None:
    assert not image_allowed("bosun-agent:latest", [])


def test_a_refusal_names_the_image_and_how_the_operator_allows_it() -> None:
    refusal = refused_image("ghcr.io/other/agent:2", ALLOWED)
    assert refusal is not None
    assert "`ghcr.io/other/agent:2`" in refusal.message and "no run starts" in refusal.message
    assert "`sandbox.allowed_images` (`BOSUN_SANDBOX__ALLOWED_IMAGES`)" in refusal.message
    assert "`ghcr.io/other/*`" in refusal.message
    assert refused_image("ghcr.io/acme/agent:2", ALLOWED) is None
    bad = refused_image("Not An Image", ALLOWED)
    assert bad is not None and "not a valid image reference" in bad.message


def test_dockerfile_bases_and_build_refusals() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM --platform=linux/amd64 bosun-agent:latest AS base\n"
        "RUN echo \\\n  hi\n"
        "FROM base\n"
        "from python:3.12 as tools\n"
        "FROM scratch\n"
    )
    assert dockerfile_bases(text) == ["bosun-agent:latest", "python:3.12"]
    off = refused_build(".bosun/Dockerfile", False, ["bosun-agent:latest"], ALLOWED)
    assert off is not None and "`sandbox.repo_dockerfiles`" in off.message
    assert refused_build(".bosun/Dockerfile", True, ["bosun-agent:latest"], ALLOWED) is None
    evil = refused_build("D", True, ["bosun-agent:latest", "internal/secrets:1"], ALLOWED)
    assert evil is not None and "`internal/secrets:1`" in evil.message
    args = refused_build("D", True, ["$BASE"], ALLOWED)
    assert args is not None and "no build arguments" in args.message
    assert refused_build("D", True, [], ALLOWED) is not None


def test_the_image_key_in_bosun_yml() -> None:
    assert parse_repo_config("image: ghcr.io/acme/agent:1\n").image == "ghcr.io/acme/agent:1"
    built = parse_repo_config("image:\n  dockerfile: .bosun/Dockerfile\n  context: .bosun\n")
    assert built.image == ImageBuildConfig(dockerfile=".bosun/Dockerfile", context=".bosun")
    for bad, where in (
        ("image:\n  dockerfile: ../etc/Dockerfile\n", "image.dockerfile"),
        ("image:\n  dockerfile: /Dockerfile\n", "image.dockerfile"),
        ("image:\n  dockerfile: D\n  network: host\n", "image.build.network"),
        ("image: 5\n", "image.reference"),
    ):
        with pytest.raises(RepoConfigError, match=where.replace(".", r"\.")):
            parse_repo_config(bad)


# --- building on the engine -------------------------------------------------------------

DOCKERFILE = (
    "FROM bosun-agent:latest\n"
    "USER root\n"
    "COPY tool.txt /opt/tool.txt\n"
    "RUN ls /sys/class/net > /opt/netifs && (getent hosts pypi.org || true) > /opt/dns\n"
)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


class Repo:
    """A repository with a Dockerfile, and its bare mirror as the worker keeps it."""

    def __init__(self, root: Path) -> None:
        self.work = root / "work"
        self.mirror = root / "mirror.git"
        self.work.mkdir(parents=True)
        _git(self.work, "init", "-q", "-b", "main")
        _git(self.work, "config", "user.email", "t@example.com")
        _git(self.work, "config", "user.name", "T")
        self.name = f"octo/img-{uuid.uuid4().hex[:8]}"

    def commit(self, files: dict[str, str]) -> str:
        for path, text in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-q", "-m", "change")
        if self.mirror.exists():
            _git(self.mirror, "fetch", "-q", str(self.work), "+main:main")
        else:
            subprocess.run(
                ["git", "clone", "-q", "--bare", str(self.work), str(self.mirror)], check=True
            )
        return _git(self.work, "rev-parse", "HEAD")

    def request(self, commit: str, **changes: Any) -> BuildRequest:
        values: dict[str, Any] = {
            "repo": self.name,
            "mirror": self.mirror,
            "commit": commit,
            "dockerfile": ".bosun/Dockerfile",
            "context": ".",
            "bases": ("bosun-agent:latest",),
            "memory_bytes": 512 * 1024 * 1024,
            "timeout_seconds": 300,
        }
        values.update(changes)
        return BuildRequest(**values)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    made = Repo(tmp_path)
    yield made
    client = docker_client()
    prefix = repo_tag(made.name, "x").split(":", 1)[0]
    for image in client.images.list(name=prefix):
        client.images.remove(image.id, force=True)
    client.close()


@pytest.mark.docker
async def test_a_dockerfile_is_built_without_network_once_per_content(repo: Repo) -> None:
    client = docker_client()
    client.images.get("bosun-agent:latest")  # the base: built by sandboxes/images/build.sh
    first_commit = repo.commit({".bosun/Dockerfile": DOCKERFILE, "tool.txt": "v1\n"})

    t0 = time.monotonic()
    first = await build(client, repo.request(first_commit))
    first_s = time.monotonic() - t0
    assert first.built and first.tag.startswith("bosun-repo/octo-img-")
    t0 = time.monotonic()
    again = await build(client, repo.request(first_commit))
    again_s = time.monotonic() - t0
    assert (again.built, again.tag, again.image_id) == (False, first.tag, first.image_id)
    print(f"repository image: built in {first_s:.2f} s, found by content in {again_s:.2f} s")

    def inside(tag: str, *argv: str) -> str:
        out = client.containers.run(tag, list(argv), remove=True, network_mode="none")
        return bytes(out).decode()

    assert inside(first.tag, "cat", "/opt/netifs").split() == ["lo"]  # --network none
    assert inside(first.tag, "cat", "/opt/dns") == ""  # no name resolves during the build
    assert inside(first.tag, "cat", "/opt/tool.txt") == "v1\n"

    # A commit that changes the context rebuilds (the next test: one that does not, reuses).
    changed = repo.commit({"tool.txt": "v2\n"})
    rebuilt = await build(client, repo.request(changed))
    assert rebuilt.built and rebuilt.tag != first.tag
    assert inside(rebuilt.tag, "cat", "/opt/tool.txt") == "v2\n"
    client.close()


@pytest.mark.docker
async def test_a_context_folder_keeps_its_image_while_the_rest_of_the_repo_moves(
    repo: Repo,
) -> None:
    client = docker_client()
    dockerfile = "FROM bosun-agent:latest\nCOPY tool.txt /opt/tool.txt\n"
    first = repo.commit({".bosun/Dockerfile": dockerfile, ".bosun/tool.txt": "v1\n"})
    request = repo.request(first, context=".bosun")
    built = await build(client, request)
    assert built.built
    moved = repo.commit({"src/app.py": "print('elsewhere')\n"})
    same = await build(client, repo.request(moved, context=".bosun"))
    assert (same.built, same.tag) == (False, built.tag)
    client.close()


@pytest.mark.docker
async def test_build_failures_say_why(repo: Repo) -> None:
    client = docker_client()
    commit = repo.commit(
        {
            ".bosun/Dockerfile": "FROM bosun-agent:latest\nRUN echo compiling && false\n",
            "Dockerfile.missing": "FROM bosun-missing-base:never\n",
        }
    )
    with pytest.raises(ImageBuildError, match="failed") as failed:
        await build(client, repo.request(commit))
    assert "compiling" in failed.value.log
    with pytest.raises(ImageNotFound, match="bosun-missing-base:never"):
        await build(
            client,
            repo.request(
                commit, dockerfile="Dockerfile.missing", bases=("bosun-missing-base:never",)
            ),
        )
    with pytest.raises(ImageBuildError, match="outside the build context"):
        await build(client, repo.request(commit, context="src"))
    with pytest.raises(ImageBuildError, match="not a folder"):
        await build(client, repo.request(commit, context="nowhere", dockerfile="nowhere/D"))
    client.close()


# --- a run started elsewhere (API, CLI, dashboard) is checked again by the pipeline ---------


class _Port:
    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    async def file_text(self, path: str, ref: str) -> str | None:
        return self.files.get(path)


def _bosun(tmp_path: Path, **sandbox: Any) -> Any:
    from types import SimpleNamespace

    from bot.settings import Settings
    from sandboxes.docker import DockerBackend

    settings = Settings.model_validate(
        {"data_dir": tmp_path, "sandbox": {"workdir": tmp_path / "work", **sandbox}}
    )
    return SimpleNamespace(settings=settings, backend=DockerBackend())


async def test_the_pipeline_refuses_an_image_a_run_started_elsewhere_asks_for(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from jobs.run.base import StepFailed
    from jobs.run.image import repository_image

    events: list[tuple[str, dict[str, Any]]] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data))

    repository = SimpleNamespace(full_name="octo/x", default_branch="main")
    bosun = _bosun(tmp_path, allowed_images=["ghcr.io/acme/*"])
    config = parse_repo_config("image: ghcr.io/evil/agent:1\n")
    with pytest.raises(StepFailed, match=r"`ghcr.io/evil/agent:1`.*no run starts"):
        await repository_image(bosun, _Port({}), repository, config, emit)
    assert events == [("policy", {"rule": "image", "decision": "refuse", "image": config.image})]

    built = parse_repo_config("image:\n  dockerfile: D\n")
    with pytest.raises(StepFailed, match="does not build repository images"):
        await repository_image(bosun, _Port({"D": "FROM x\n"}), repository, built, emit)
    builds = _bosun(tmp_path, allowed_images=["bosun-agent:latest"], repo_dockerfiles=True)
    with pytest.raises(StepFailed, match="`internal/secrets:1`"):
        port = _Port({"D": "FROM internal/secrets:1\n"})
        await repository_image(builds, port, repository, built, emit)
    with pytest.raises(StepFailed, match="which is not on `main`"):
        await repository_image(builds, _Port({}), repository, built, emit)
    assert await repository_image(bosun, _Port({}), repository, parse_repo_config(""), emit) is None


@pytest.mark.docker
async def test_an_allowed_image_missing_from_the_engine_is_not_pulled_unless_the_operator_says(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from jobs.run.base import StepFailed
    from jobs.run.image import repository_image

    async def emit(kind: str, data: dict[str, Any]) -> None:
        return None

    missing = f"bosun-not-here/{uuid.uuid4().hex[:8]}:1"
    bosun = _bosun(tmp_path, allowed_images=["bosun-not-here/*"])
    repository = SimpleNamespace(full_name="octo/x", default_branch="main")
    config = parse_repo_config(f"image: {missing}\n")
    with pytest.raises(StepFailed, match=r"`sandbox.image_pull` is `never`"):
        await repository_image(bosun, _Port({}), repository, config, emit)
    present = parse_repo_config("image: bosun-agent:latest\n")
    allowed = _bosun(tmp_path, allowed_images=["bosun-agent:latest"])
    assert await repository_image(allowed, _Port({}), repository, present, emit) == (
        "bosun-agent:latest"
    )


# --- a build with network: the run's egress proxy behind a forwarder container -------------

NETWORK_DOCKERFILE = (
    "FROM bosun-agent:latest\n"
    "USER root\n"
    # The namespace the RUN steps are in: loopback only, and the forwarder listening on 8789.
    "RUN ls /sys/class/net > /opt/netifs"
    " && grep -c ' 0100007F:2255 00000000:0000 0A' /proc/net/tcp > /opt/listener\n"
    "RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --disable-pip-version-check"
    " --trusted-host 127.0.0.1 --index-url INDEX_URL bosun-dep\n"
    # A host off the allowlist: refused by the proxy; the step tolerates it.
    "RUN (python3 -c \"import urllib.request; urllib.request.urlopen('http://denied.example/')\""
    " 2>&1 || true) | tail -n 1 > /opt/denied\n"
    "RUN env | grep -ci proxy > /opt/proxy-vars || true\n"
    # Around the proxy: the host's Redis on its loopback, and the internet.
    "RUN for target in \"'127.0.0.1', 6379\" \"'1.1.1.1', 443\"; do"
    ' python3 -c "import socket; socket.create_connection(($target), timeout=3)" 2>&1'
    " | tail -n 1; done > /opt/direct || true\n"
    "USER agent\n"
)


class Network:
    """A run's egress proxy for builds, as the pipeline makes it (``jobs.run.image``)."""

    def __init__(self, root: Path, allow: list[str], run_id: str) -> None:
        from bot.agents.egress import EGRESS_MOUNT, PROXY_PORT, EgressProxy, forwarder_argv
        from bot.domain.egress import effective_policy
        from sandboxes.docker import DockerBackend
        from sandboxes.repoimage import BuildNetwork
        from sandboxes.spec import BindMount, SandboxSpec

        self.run_id = run_id
        self.records: list[Any] = []
        self.forwarders: list[str] = []
        self.inspected: list[dict[str, Any]] = []
        directory = root / "build" / "egress"
        self.spec = SandboxSpec(
            run_id=run_id,
            image="bosun-agent:latest",
            workspace=root,
            memory="128m",
            pids=64,
            tmpfs_size="16m",
            mounts=(BindMount(source=directory, target=EGRESS_MOUNT),),
        )
        self.backend = DockerBackend()
        policy = effective_policy(allow, ["127.0.0.1"], [], [], [])
        self.proxy = EgressProxy(
            run_id, directory, policy, on_request=self.records.append, sandbox_gid=None
        )

        @contextlib.asynccontextmanager
        async def serve() -> AsyncIterator[None]:
            self.proxy.sandbox_gid = (await self.backend.host_ids(self.spec))[1]
            await self.proxy.start()
            try:
                yield
            finally:
                await self.proxy.stop()

        self.network = BuildNetwork(
            self.spec, tuple(forwarder_argv(["sleep", "600"])), PROXY_PORT, serve
        )

    def left(self, client: Any) -> list[str]:
        """Containers of this build still on the engine: its forwarder, and any container in
        its network namespace."""
        found = client.api.containers(all=True, filters={"label": f"bosun.run_id={self.run_id}"})
        names = [c["Names"][0] for c in found]
        for entry in client.api.containers(all=True):
            mode = (entry.get("HostConfig") or {}).get("NetworkMode", "")
            if any(mode == f"container:{f}" for f in self.forwarders):
                names.append(f"{entry['Id'][:12]} in {mode}")
        return names


@pytest.fixture
def networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], Network]:
    """Makes a build network allowing ``allow``; each remembers its forwarders' ids."""
    import sandboxes.repoimage as repoimage

    made: list[Network] = []
    remove = repoimage._remove_forwarder

    async def remembering(client: Any, container_id: str) -> None:
        made[-1].forwarders.append(container_id)
        made[-1].inspected.append(client.api.inspect_container(container_id))
        await remove(client, container_id)

    monkeypatch.setattr(repoimage, "_remove_forwarder", remembering)

    def make(allow: list[str]) -> Network:
        made.append(Network(tmp_path / f"run{len(made)}", allow, f"b-{uuid.uuid4().hex[:8]}"))
        return made[-1]

    return make


@pytest.mark.docker
async def test_a_build_reaches_the_allowlist_through_the_egress_proxy_and_nothing_else(
    repo: Repo, networks: Callable[[list[str]], Network]
) -> None:
    from tests.package_index import build_wheel, package_index

    client = docker_client()
    name, wheel = build_wheel("bosun-dep", "1.0", "VALUE = 42\n")
    with package_index({"bosun-dep": (name, wheel)}) as index:
        net = networks([f"127.0.0.1:{index.port}"])
        dockerfile = NETWORK_DOCKERFILE.replace("INDEX_URL", index.url)
        commit = repo.commit({".bosun/Dockerfile": dockerfile})
        t0 = time.monotonic()
        built = await build(client, repo.request(commit), net.network)
        seconds = time.monotonic() - t0
        print(f"repository image with network: built in {seconds:.2f} s")
        assert built.built and built.network
        assert index.sent[name] >= 1  # the wheel came from the index, through the proxy

    def inside(*argv: str) -> str:
        out = client.containers.run(built.tag, list(argv), remove=True, network_mode="none")
        return bytes(out).decode()

    assert inside("/opt/venv/bin/python", "-c", "import bosun_dep; print(bosun_dep.VALUE)") == (
        "42\n"
    )
    # The RUN steps were in the forwarder's namespace: loopback only, its listener there.
    assert inside("cat", "/opt/netifs").split() == ["lo"]
    assert inside("cat", "/opt/listener").strip() == "1"
    assert "HTTP Error 403" in inside("cat", "/opt/denied")
    assert inside("cat", "/opt/proxy-vars").strip() == "4"  # HTTP(S)_PROXY, http(s)_proxy
    assert inside("cat", "/opt/direct").splitlines() == [
        "ConnectionRefusedError: [Errno 111] Connection refused",  # not the host's loopback
        "OSError: [Errno 101] Network is unreachable",
    ]

    # Every request went through the proxy and was decided there.
    allowed = [(r.host, r.port) for r in net.records if r.allowed]
    assert allowed and set(allowed) == {("127.0.0.1", index.port)}
    denied = [(r.host, r.port, r.reason) for r in net.records if not r.allowed]
    assert denied == [("denied.example", 80, "not on the allowlist")]
    assert net.proxy.denied_hosts() == [("denied.example", 80, 1)]

    # The proxy's address is not kept in the image: not in its configuration, not its history.
    config = client.api.inspect_image(built.image_id)["Config"]
    assert not [v for v in config.get("Env") or [] if "8789" in v or "proxy" in v.lower()]
    steps = [h["CreatedBy"] for h in client.api.history(built.image_id)][:8]
    runs = [step for step in steps if "#(nop)" not in step]
    assert len(runs) == 5 and all(run.startswith("|0 /bin/sh -c ") for run in runs), steps
    assert not [step for step in steps if "127.0.0.1:8789" in step or "_PROXY=" in step.upper()]

    # The forwarder ran with the sandbox's hardening, Bosun's relay and the socket folder only.
    (forwarder,) = net.inspected
    host = forwarder["HostConfig"]
    assert forwarder["Config"]["User"] == "1000:1000" and forwarder["State"]["Running"]
    assert "/bosun-egress/forwarder.py" in forwarder["Config"]["Cmd"]
    assert (host["NetworkMode"], host["CapDrop"], host["ReadonlyRootfs"]) == ("none", ["ALL"], True)
    assert not host["Privileged"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert any(opt.startswith("seccomp=") for opt in host["SecurityOpt"])
    assert (host["PidsLimit"], host["Memory"], host["Runtime"]) == (64, 128 * 1024**2, "runc")
    binds = [(m["Destination"], m["RW"]) for m in forwarder["Mounts"]]
    assert binds == [("/bosun-egress", False)]

    # Nothing of the build's network is left: forwarder gone, proxy stopped, socket removed.
    assert len(net.forwarders) == 1 and net.left(client) == []
    assert not net.proxy.running and not net.proxy.socket_path.exists()

    # The same content again: found by its tag, nothing started.
    again = await build(client, repo.request(commit), net.network)
    assert (again.built, again.tag) == (False, built.tag) and len(net.forwarders) == 1
    client.close()


def test_the_digest_says_whether_the_build_had_network() -> None:
    from sandboxes.repoimage import content_digest

    plain = content_digest("tree", "D", ["sha256:base"])
    networked = content_digest("tree", "D", ["sha256:base"], network=True)
    with_args = content_digest("tree", "D", ["sha256:base"], network=True, args=[("V", "1")])
    staged = content_digest("tree", "D", ["sha256:base"], network=True, target="dev")
    assert len({plain, networked, with_args, staged}) == 4


@pytest.mark.docker
async def test_the_forwarder_is_gone_after_a_failure_a_time_out_and_a_cancel(
    repo: Repo, networks: Callable[[list[str]], Network]
) -> None:
    client = docker_client()
    network = networks(["127.0.0.1"])
    failing = repo.commit({".bosun/Dockerfile": "FROM bosun-agent:latest\nRUN echo no && false\n"})
    with pytest.raises(ImageBuildError, match="failed"):
        await build(client, repo.request(failing), network.network)
    assert network.inspected[0]["State"]["Running"] and network.left(client) == []
    assert not network.proxy.running

    # A RUN step that never ends: the time limit removes the forwarder, then the step's
    # container, which joined the forwarder's network namespace.
    slow = repo.commit({".bosun/Dockerfile": "FROM bosun-agent:latest\nRUN sleep 300\n"})
    t0 = time.monotonic()
    with pytest.raises(ImageBuildError, match="took longer than 4 s"):
        await build(client, repo.request(slow, timeout_seconds=4), network.network)
    assert time.monotonic() - t0 < 30
    assert network.left(client) == [] and not network.proxy.running

    # A cancelled run (`/cancel`, the worker stopping) cleans up the same way.
    started = asyncio.get_running_loop().create_future()
    original = network.proxy.start

    async def start() -> None:
        await original()
        started.set_result(None)

    network.proxy.start = start  # type: ignore[method-assign]
    changed = repo.commit({".bosun/Dockerfile": "FROM bosun-agent:latest\nRUN sleep 301\n"})
    task = asyncio.create_task(build(client, repo.request(changed), network.network))
    await started
    joined: list[str] = []
    for _ in range(300):  # until the RUN step's container is in the forwarder's namespace
        await asyncio.sleep(0.1)
        joined = [
            c["Id"]
            for c in client.api.containers()
            if (c.get("HostConfig") or {}).get("NetworkMode", "").startswith("container:")
            and "sleep 301" in json.dumps(c.get("Command"))
        ]
        if joined:
            break
    assert joined, "the RUN step never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(network.forwarders) == 3 and network.left(client) == []
    assert not client.api.containers(all=True, filters={"id": joined[0]})  # the step, removed
    assert not network.proxy.running
    client.close()


@pytest.mark.docker
async def test_a_build_reuses_only_its_own_repositorys_layers(tmp_path: Path) -> None:
    """A RUN step's layer is cached by its text: another repository with the same step must
    not get this one's layer (what the step fetched may differ), the repository itself does."""
    client = docker_client()
    dockerfile = (
        "FROM bosun-agent:latest\nUSER root\n"
        "RUN od -An -N8 -tx8 /dev/urandom > /opt/made-by\nCOPY tool.txt /opt/tool.txt\n"
    )
    first, second = Repo(tmp_path / "a"), Repo(tmp_path / "b")
    try:
        mine = await build(
            client, first.request(first.commit({".bosun/Dockerfile": dockerfile, "tool.txt": "1"}))
        )
        theirs = await build(
            client,
            second.request(second.commit({".bosun/Dockerfile": dockerfile, "tool.txt": "1"})),
        )
        again = await build(client, first.request(first.commit({"tool.txt": "2"})))
        assert mine.built and theirs.built and again.built

        def made_by(tag: str) -> str:
            out = client.containers.run(
                tag, ["cat", "/opt/made-by"], remove=True, network_mode="none"
            )
            return bytes(out).decode()

        assert made_by(again.tag) == made_by(mine.tag)  # its own earlier layer, reused
        assert made_by(theirs.tag) != made_by(mine.tag)  # never another repository's
    finally:
        for made in (first, second):
            prefix = repo_tag(made.name, "x").split(":", 1)[0]
            for image in client.images.list(name=prefix):
                client.images.remove(image.id, force=True)
        client.close()
