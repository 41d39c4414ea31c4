"""The Docker backend against the real engine: hardening verified by inspecting the running
container and from inside it, streaming, exit codes, deadlines, stop, output caps, reaping."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker.errors
import pytest

from sandboxes.base import (
    LABEL_MANAGED,
    LABEL_RUN_ID,
    POOL_PREFIX,
    Sandbox,
    SandboxStatus,
    open_sandbox,
    owner_run,
)
from sandboxes.docker import DockerBackend
from sandboxes.errors import ImageNotFound, SandboxStartError, SandboxTimeout
from sandboxes.git import GitIdentity
from sandboxes.output import LineSplitter, OutputChunk
from sandboxes.pool import SandboxPool
from sandboxes.seccomp import BUNDLED_PATH
from sandboxes.spec import SandboxSpec
from sandboxes.workspace import WorkspaceManager
from tests.services import docker_client, missing

pytestmark = pytest.mark.docker

AGENT_IMAGE = "bosun-agent:latest"
TEST_ROOT = Path("/tmp/bosun-sandbox-tests")


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    client = docker_client()
    try:
        client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        missing(AGENT_IMAGE, "build it with sandboxes/images/build.sh")
    yield client
    client.close()


@pytest.fixture(scope="module")
async def backend(engine) -> AsyncIterator[DockerBackend]:  # type: ignore[no-untyped-def]
    backend = DockerBackend()
    yield backend
    await backend.close()


@pytest.fixture(scope="module")
def workspace_dir(engine) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"ws-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def sandbox(backend: DockerBackend, workspace_dir: Path) -> AsyncIterator[Sandbox]:
    spec = SandboxSpec(
        run_id=f"t-{uuid.uuid4().hex[:8]}",
        image=AGENT_IMAGE,
        workspace=workspace_dir,
        memory="256m",
        cpus=0.5,
        pids=128,
        tmpfs_size="32m",
        timeout_seconds=20,
        output_limit_bytes=10_000,
        env={"GREETING": "hello"},
    )
    uid, gid = await backend.host_ids(spec)
    os.chown(workspace_dir, uid, gid)
    async with open_sandbox(backend, spec) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
async def pooled_sandbox(backend: DockerBackend, sandbox: Sandbox) -> AsyncIterator[Sandbox]:
    """A sandbox of the same spec as ``sandbox``, but started ahead by a warm pool and claimed
    the way a run claims it: its folder becomes the run's, then it is handed over."""
    root = TEST_ROOT / f"pool-{uuid.uuid4().hex[:8]}"
    workspaces = WorkspaceManager(root, identity=GitIdentity(name="t", email="t@example.com"))
    run_id = f"t-{uuid.uuid4().hex[:8]}"
    run_dir = workspaces.run_dir(run_id)
    spec = sandbox.spec.model_copy(update={"run_id": run_id, "workspace": run_dir / "workspace"})
    pool = SandboxPool(backend, root / "pool", size=1, idle_seconds=600, check_seconds=3600)
    try:
        assert pool.claim(spec, run_dir) is None  # a shape first seen: learnt, filled from now
        await pool.fill()
        claim = pool.claim(spec, run_dir)
        assert claim is not None
        await workspaces.lay_out(run_id, adopt=claim.folder)
        os.chown(spec.workspace, *await backend.host_ids(spec))
        pooled = await backend.adopt(claim.sandbox, spec)
        try:
            yield pooled
        finally:
            await backend.remove(pooled)
    finally:
        await pool.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["fresh", "pooled"])
def either(request: pytest.FixtureRequest) -> Sandbox:
    """The inspection tests run on a fresh sandbox and on a pooled one."""
    name = "sandbox" if request.param == "fresh" else "pooled_sandbox"
    found: Sandbox = request.getfixturevalue(name)
    return found


async def test_container_is_hardened_as_inspected(engine, either: Sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = either
    attrs = engine.api.inspect_container(sandbox.id)
    host = attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert host["SecurityOpt"][0] == "no-new-privileges:true"
    (seccomp,) = host["SecurityOpt"][1:]  # Bosun's own profile, passed as JSON text
    assert json.loads(seccomp.removeprefix("seccomp=")) == json.loads(BUNDLED_PATH.read_text())
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "none"
    assert host["Privileged"] is False
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 128
    assert host["Init"] is True
    assert attrs["Config"]["User"] == "1000:1000"
    assert set(host["Tmpfs"]) == {"/tmp", "/home/agent"}
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/workspace"}
    assert mounts["/workspace"]["RW"] is True
    assert not any("docker.sock" in m["Source"] for m in attrs["Mounts"])
    assert attrs["Config"]["Labels"][LABEL_MANAGED] == "true"
    assert owner_run(attrs["Config"]["Labels"], attrs["Name"]) == sandbox.spec.run_id
    pooled = attrs["Config"]["Labels"][LABEL_RUN_ID].startswith(POOL_PREFIX)
    assert pooled == (sandbox.spec.run_id != attrs["Config"]["Labels"][LABEL_RUN_ID])


async def test_pooled_sandbox_matches_a_fresh_one_in_everything_but_names(
    engine,  # type: ignore[no-untyped-def]
    sandbox: Sandbox,
    pooled_sandbox: Sandbox,
) -> None:
    """Field by field: what the engine enforces is identical; only the name, the run label,
    the creation time and the workspace folder's host path differ."""
    fresh = engine.api.inspect_container(sandbox.id)
    pooled = engine.api.inspect_container(pooled_sandbox.id)

    def enforced(attrs: dict) -> dict:  # type: ignore[type-arg]
        host = {k: v for k, v in attrs["HostConfig"].items() if k != "Mounts"}
        mounts = [{**m, "Source": "-"} for m in attrs["HostConfig"].get("Mounts") or []]
        config = {k: v for k, v in attrs["Config"].items() if k not in {"Labels"}}
        labels = {
            k: v
            for k, v in attrs["Config"]["Labels"].items()
            if k not in {LABEL_RUN_ID, "bosun.created"}
        }
        return {
            "host": host,
            "mounts": mounts,
            "config": config,
            "labels": labels,
            "image": attrs["Image"],
            "apparmor": attrs["AppArmorProfile"],
            "driver": attrs["Driver"],
        }

    assert enforced(pooled) == enforced(fresh)
    assert pooled["State"]["Running"] is True


async def test_pooled_workspace_follows_its_folder_to_the_run(
    backend: DockerBackend, pooled_sandbox: Sandbox
) -> None:
    """The slot folder the pooled sandbox was bound to became the run's folder after it
    started: what the worker writes there now is what the sandbox sees, and the reverse."""
    marker = f"checkout-{uuid.uuid4().hex[:8]}"
    (pooled_sandbox.spec.workspace / "host.txt").write_text(marker)
    inside = await backend.exec(pooled_sandbox, ["cat", "/workspace/host.txt"])
    assert inside.check().text() == marker
    await backend.exec(pooled_sandbox, ["sh", "-c", "echo agent > /workspace/agent.txt"])
    assert (pooled_sandbox.spec.workspace / "agent.txt").read_text() == "agent\n"


async def test_process_inside_has_no_privileges(backend: DockerBackend, either: Sandbox) -> None:
    sandbox = either
    status = (await backend.exec(sandbox, ["cat", "/proc/self/status"])).check().text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    uid = (await backend.exec(sandbox, ["id", "-u"])).check().text().strip()
    assert uid == "1000"
    net = (await backend.exec(sandbox, ["ls", "/sys/class/net"])).check().text().split()
    assert net == ["lo"]


PTRACE_PID1 = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
print(libc.ptrace(16, 1, None, None), os.strerror(ctypes.get_errno()))
"""


async def test_ptrace_is_refused_by_the_seccomp_profile(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    out = (await backend.exec(sandbox, ["python3", "-c", PTRACE_PID1])).check().text()
    assert out.strip() == "-1 Operation not permitted"
    threads = "import threading; t = threading.Thread(target=print, args=('ok',)); t.start()"
    assert (await backend.exec(sandbox, ["python3", "-c", threads])).check().text() == "ok\n"


def test_seccomp_profile_choice_reaches_the_engine(tmp_path: Path) -> None:
    backend = DockerBackend()

    def opts(**fields: str) -> list[str]:
        spec = SandboxSpec(run_id="r1", image="i", workspace=tmp_path, **fields)
        security_opt: list[str] = backend.create_kwargs(spec, "n")["security_opt"]
        return security_opt

    assert opts(seccomp_profile="default") == ["no-new-privileges:true"]
    custom = tmp_path / "profile.json"
    custom.write_text('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}')
    assert opts(seccomp_profile=str(custom))[1] == (
        'seccomp={"defaultAction":"SCMP_ACT_ERRNO","syscalls":[]}'
    )
    missing_file = str(tmp_path / "nope.json")
    with pytest.raises(SandboxStartError, match=r"nope\.json"):
        opts(seccomp_profile=missing_file)


async def test_only_workspace_and_tmpfs_are_writable(
    backend: DockerBackend, sandbox: Sandbox, workspace_dir: Path
) -> None:
    etc = await backend.exec(sandbox, ["touch", "/etc/x"])
    assert etc.exit_code != 0
    assert b"Read-only file system" in etc.output
    usr = await backend.exec(sandbox, ["touch", "/usr/local/x"])
    assert usr.exit_code != 0
    for path in ("/tmp/x", "/home/agent/x", "/workspace/x"):
        (await backend.exec(sandbox, ["sh", "-c", f"echo data > {path}"])).check()
    assert (workspace_dir / "x").read_text() == "data\n"
    # /tmp runs what is built there (`go test`); home stays noexec, Docker's default
    (await backend.exec(sandbox, ["sh", "-c", "cp /bin/true /tmp/t && /tmp/t"])).check()
    home = await backend.exec(sandbox, ["sh", "-c", "cp /bin/true /home/agent/t && /home/agent/t"])
    assert home.exit_code != 0
    big = await backend.exec(sandbox, ["sh", "-c", "head -c 40000000 /dev/zero > /tmp/big"])
    assert big.exit_code != 0  # the 32m tmpfs is full


async def test_environment_holds_only_what_the_spec_passed(
    engine,
    backend: DockerBackend,
    sandbox: Sandbox,  # type: ignore[no-untyped-def]
) -> None:
    image_env = engine.images.get(AGENT_IMAGE).attrs["Config"].get("Env") or []
    os.environ["BOSUN_TEST_HOST_SECRET"] = "must-not-leak"
    try:
        result = await backend.exec(sandbox, ["env"], env={"EXTRA": "1"})
    finally:
        del os.environ["BOSUN_TEST_HOST_SECRET"]
    names = {line.split("=", 1)[0] for line in result.check().text().splitlines()}
    from_image = {entry.split("=", 1)[0] for entry in image_env}
    assert names == {"PATH", "HOSTNAME", "HOME", "PWD", "GREETING", "EXTRA"} | from_image
    assert "must-not-leak" not in result.text()


async def test_output_streams_in_order_before_exit(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    seen: list[tuple[str, str, float]] = []

    async def on_line(stream: str, line: str) -> None:
        seen.append((stream, line, time.monotonic()))

    splitter = LineSplitter(on_line)  # type: ignore[arg-type]
    script = "for i in 1 2 3; do echo out$i; sleep 0.3; done; echo oops >&2; exit 7"
    result = await backend.exec(sandbox, ["sh", "-c", script], on_output=splitter)
    finished = time.monotonic()
    await splitter.flush()
    assert result.exit_code == 7
    assert not result.ok
    assert [(s, line) for s, line, _ in seen] == [
        ("stdout", "out1"), ("stdout", "out2"), ("stdout", "out3"), ("stderr", "oops"),
    ]  # fmt: skip
    assert seen[0][2] < finished - 0.5  # the first line arrived while the command still ran
    assert result.stdout == b"out1\nout2\nout3\n"
    assert result.stderr == b"oops\n"


async def test_first_output_survives_a_client_slow_to_read_the_engines_answer(
    backend: DockerBackend, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy host the engine's answer to `exec start` and the command's first frames reach
    the client together, and http.client buffers them with the headers: read from the socket
    under it, they were lost (an agent's first lines, and the pid line that lets a deadline
    kill just the command). Reading through that buffer keeps them."""
    begin = http.client.HTTPResponse.begin

    def late(self: http.client.HTTPResponse) -> None:
        time.sleep(0.3)  # the first frames are written meanwhile
        begin(self)

    monkeypatch.setattr(http.client.HTTPResponse, "begin", late)
    for _ in range(3):
        result = await backend.exec(sandbox, ["sh", "-c", "echo first; echo err >&2; exit 3"])
        assert (result.exit_code, result.stdout, result.stderr) == (3, b"first\n", b"err\n")
    timed = await backend.exec(sandbox, ["sh", "-c", "echo started; sleep 100"], timeout=1.5)
    assert timed.timed_out and timed.stdout == b"started\n"
    # The pid line was seen, so only the command was killed: the sandbox still runs.
    assert (await backend.exec(sandbox, ["echo", "alive"])).check().text() == "alive\n"


async def test_missing_command_reports_127(backend: DockerBackend, sandbox: Sandbox) -> None:
    result = await backend.exec(sandbox, ["no-such-program", "--flag"])
    assert result.exit_code == 127
    assert b"no-such-program" in result.output


async def test_argv_is_not_shell_interpreted(backend: DockerBackend, sandbox: Sandbox) -> None:
    result = await backend.exec(sandbox, ["echo", "$HOME; rm -rf /workspace", "`id`"])
    assert result.check().text() == "$HOME; rm -rf /workspace `id`\n"


async def test_deadline_kills_the_command_and_its_children(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    started = time.monotonic()
    result = await backend.exec(sandbox, ["sh", "-c", "sleep 100 & sleep 100"], timeout=1)
    assert time.monotonic() - started < 4
    assert result.timed_out
    with pytest.raises(SandboxTimeout):
        result.check()
    script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
    left = (await backend.exec(sandbox, ["sh", "-c", script])).check().text()
    assert "sleep infinity" in left
    assert "sleep 100" not in left  # the command and its background child are gone


async def test_output_flood_is_truncated_with_a_note(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    chunks: list[OutputChunk] = []

    async def collect(chunk: OutputChunk) -> None:
        chunks.append(chunk)

    result = await backend.exec(
        sandbox, ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' x"], on_output=collect
    )
    assert result.exit_code == 0
    assert result.truncated
    assert result.truncated_bytes == 5_000_000 - 10_000
    assert result.output.count(b"x") == 10_000
    assert result.output.endswith(b"[output truncated after 10000 bytes]\n")
    assert sum(len(c.data) for c in chunks) == len(result.output)


async def test_memory_limit_reports_oom(backend: DockerBackend, sandbox: Sandbox) -> None:
    hog = ["python3", "-c", "x = bytearray(400 * 1024 * 1024); print(len(x))"]
    result = await backend.exec(sandbox, hog)
    assert result.oom_killed
    assert result.exit_code == 137
    alive = await backend.exec(sandbox, ["true"])
    assert alive.ok and not alive.oom_killed


async def test_copy_in_and_out(backend: DockerBackend, sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "bundle"
    source.mkdir()
    (source / "a.txt").write_text("alpha")
    await backend.copy_in(sandbox, source, "/workspace")
    owner = await backend.exec(sandbox, ["stat", "-c", "%u %s", "/workspace/bundle/a.txt"])
    assert owner.check().text().split() == ["1000", "5"]
    (await backend.exec(sandbox, ["sh", "-c", "echo beta > /workspace/bundle/b.txt"])).check()
    copied = await backend.copy_out(sandbox, "/workspace/bundle", tmp_path / "out")
    assert (copied / "a.txt").read_text() == "alpha"
    assert (copied / "b.txt").read_text() == "beta\n"


async def test_stop_ends_a_running_exec_within_two_seconds(
    backend: DockerBackend, workspace_dir: Path
) -> None:
    spec = SandboxSpec(run_id="stop-test", image=AGENT_IMAGE, workspace=workspace_dir)
    async with open_sandbox(backend, spec) as sandbox:
        task = asyncio.create_task(backend.exec(sandbox, ["sleep", "1000"]))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await backend.stop(sandbox, timeout=1)
        result = await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 2
        assert result.cancelled
        assert not result.ok
        assert await backend.status(sandbox) == SandboxStatus.EXITED
    assert await backend.status(sandbox) == SandboxStatus.REMOVED


async def test_reaper_removes_orphans_and_keeps_live_runs(
    backend: DockerBackend,
    workspace_dir: Path,
    engine,  # type: ignore[no-untyped-def]
) -> None:
    tag = uuid.uuid4().hex[:6]
    orphan = await backend.create(
        SandboxSpec(run_id=f"orphan-{tag}", image=AGENT_IMAGE, workspace=workspace_dir)
    )
    live = await backend.create(
        SandboxSpec(run_id=f"live-{tag}", image=AGENT_IMAGE, workspace=workspace_dir)
    )
    unmanaged = engine.containers.create(AGENT_IMAGE, ["true"], network_mode="none")
    try:
        live_runs = {f"live-{tag}"}
        young = await backend.reap(lambda run_id: run_id in live_runs or tag not in run_id,
                                   max_age=3600)  # fmt: skip
        assert young == []  # too young to reap
        removed = await backend.reap(lambda run_id: run_id in live_runs or tag not in run_id)
        assert removed == [orphan.id]
        assert await backend.status(orphan) == SandboxStatus.REMOVED
        assert await backend.status(live) == SandboxStatus.CREATED
        unmanaged.reload()
        assert unmanaged.status == "created"
    finally:
        await backend.remove(live)
        unmanaged.remove(force=True)


async def test_missing_image_names_the_build_script(
    backend: DockerBackend, workspace_dir: Path
) -> None:
    spec = SandboxSpec(run_id="noimage", image="bosun-no-such-image:1", workspace=workspace_dir)
    with pytest.raises(ImageNotFound, match=r"sandboxes/images/build\.sh"):
        await backend.create(spec)
