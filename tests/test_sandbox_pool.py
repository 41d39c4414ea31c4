"""The warm pool of started sandboxes (``sandboxes.pool``) on the real Docker engine: one
sandbox never goes to two runs, the pool refills when the engine takes its sandboxes away, an
idle sandbox past its time is replaced, and a claimed sandbox belongs to its run for the
reaper. (Same hardening as a fresh sandbox: tests/test_sandbox_docker.py; a pooled run
cancelled by its label: tests/test_security_sandbox.py.)"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker.errors
import pytest

from sandboxes.base import LABEL_MANAGED, Sandbox, SandboxStatus
from sandboxes.docker import DockerBackend
from sandboxes.git import GitIdentity
from sandboxes.pool import Claim, SandboxPool
from sandboxes.spec import BindMount, SandboxSpec
from sandboxes.workspace import WorkspaceManager
from tests.services import docker_client, missing

pytestmark = pytest.mark.docker

AGENT_IMAGE = "bosun-agent:latest"
TEST_ROOT = Path("/tmp/bosun-sandbox-tests")


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    try:
        client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        missing(AGENT_IMAGE, "build it with sandboxes/images/build.sh")
    yield client
    client.close()


@pytest.fixture
async def workspaces(engine: docker.DockerClient) -> AsyncIterator[WorkspaceManager]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    root = TEST_ROOT / f"pool-{uuid.uuid4().hex[:8]}"
    yield WorkspaceManager(root, identity=GitIdentity(name="t", email="t@example.com"))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def backend(engine: docker.DockerClient) -> AsyncIterator[DockerBackend]:
    backend = DockerBackend()
    yield backend
    await backend.close()


def run_spec(workspaces: WorkspaceManager, run_id: str) -> tuple[SandboxSpec, Path]:
    """A run's spec as the pipeline makes it: workspace and a read-only input folder, both in
    the run's folder."""
    run_dir = workspaces.run_dir(run_id)
    spec = SandboxSpec(
        run_id=run_id,
        image=AGENT_IMAGE,
        workspace=run_dir / "workspace",
        memory="128m",
        cpus=0.25,
        pids=64,
        tmpfs_size="8m",
        mounts=(BindMount(source=run_dir / "input", target="/bosun"),),
        labels={"repo": "octo_hello"},
    )
    return spec, run_dir


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def pool_containers(engine: docker.DockerClient, pool: SandboxPool) -> list[dict]:  # type: ignore[type-arg]
    found: list[dict] = engine.api.containers(  # type: ignore[type-arg]
        all=True, filters={"label": f"{LABEL_MANAGED}=true", "name": f"bosun-pool-{pool.id}-"}
    )
    return found


async def test_concurrent_claims_never_get_the_same_sandbox(
    engine: docker.DockerClient, backend: DockerBackend, workspaces: WorkspaceManager
) -> None:
    pool = SandboxPool(
        backend, workspaces.root / "pool", size=3, idle_seconds=600, check_seconds=3600
    )
    first, first_dir = run_spec(workspaces, "r-first")
    try:
        assert pool.claim(first, first_dir) is None  # a shape first seen: learnt, not ready
        await pool.fill()
        ready = {slot.sandbox.id for slot in pool.ready(first, first_dir)}
        assert len(ready) == 3

        async def one(index: int) -> Claim | None:
            await asyncio.sleep(0)  # every claimer is scheduled before any claims
            spec, run_dir = run_spec(workspaces, f"r-{index}")
            return pool.claim(spec, run_dir)

        claims = await asyncio.gather(*(one(i) for i in range(8)))
        taken = [claim.sandbox.id for claim in claims if claim is not None]
        assert sorted(taken) == sorted(ready), "every ready sandbox claimed exactly once"
        assert len({claim.folder for claim in claims if claim is not None}) == 3
        assert pool.ready() == []

        # Refilled with new sandboxes: a claimed one is never handed out again.
        await pool.fill()
        refilled = {slot.sandbox.id for slot in pool.ready()}
        assert len(refilled) == 3 and not refilled & ready
    finally:
        await pool.close()
    for sandbox_id in ready:  # claimed ones belong to their (here: absent) runs
        engine.api.remove_container(sandbox_id, force=True)
    assert pool_containers(engine, pool) == [], "close removes the ready sandboxes"


async def test_pool_refills_after_the_engine_took_its_sandboxes(
    engine: docker.DockerClient, backend: DockerBackend, workspaces: WorkspaceManager
) -> None:
    """A dockerd restart stops (or, with --rm style clean-up, removes) every container; the
    engine is shared by everyone on this host, so the test does to the pool's containers
    through the Docker API what a restart does to them: one is killed, one removed."""
    pool = SandboxPool(
        backend, workspaces.root / "pool", size=2, idle_seconds=600, check_seconds=0.2
    )
    spec, run_dir = run_spec(workspaces, "r-engine")
    try:
        assert pool.claim(spec, run_dir) is None  # starts the pool's own task
        await until(lambda: len(pool.ready(spec, run_dir)) == 2, 60, "the pool to fill")
        before = {slot.sandbox.id for slot in pool.ready()}
        killed, removed = sorted(before)
        engine.api.kill(killed)
        engine.api.remove_container(removed, force=True)

        def refilled() -> bool:
            ids = {slot.sandbox.id for slot in pool.ready()}
            return len(ids) == 2 and not ids & before

        await until(refilled, 60, "the pool to replace both sandboxes")
        for slot in pool.ready():
            assert await backend.status(slot.sandbox) == SandboxStatus.RUNNING
            assert slot.folder.is_dir()
        assert killed not in {c["Id"] for c in pool_containers(engine, pool)}  # cleaned up
        claim = pool.claim(spec, run_dir)
        assert claim is not None and claim.sandbox.id not in before
    finally:
        await pool.close()
    assert claim is not None
    engine.api.remove_container(claim.sandbox.id, force=True)


async def test_idle_sandbox_past_its_time_is_replaced(
    engine: docker.DockerClient, backend: DockerBackend, workspaces: WorkspaceManager
) -> None:
    pool = SandboxPool(
        backend, workspaces.root / "pool", size=1, idle_seconds=1.0, check_seconds=0.2
    )
    spec, run_dir = run_spec(workspaces, "r-idle")
    try:
        assert pool.claim(spec, run_dir) is None
        await until(lambda: len(pool.ready()) == 1, 60, "the pool to fill")
        (old,) = pool.ready()
        await until(
            lambda: [s.sandbox.id for s in pool.ready()] not in ([], [old.sandbox.id]),
            60,
            "the idle sandbox to be replaced",
        )
        with pytest.raises(docker.errors.NotFound):
            engine.api.inspect_container(old.sandbox.id)
        assert not old.folder.exists()
    finally:
        await pool.close()


async def test_claimed_sandbox_belongs_to_its_run(
    engine: docker.DockerClient, backend: DockerBackend, workspaces: WorkspaceManager
) -> None:
    """A claimed sandbox is named after its run: the reaper removes it as that run's (and
    leaves the pool's idle one alone), and ``remove_run`` (a run ended for a dead worker)
    finds it."""
    pool = SandboxPool(
        backend, workspaces.root / "pool", size=1, idle_seconds=600, check_seconds=3600
    )

    async def claimed(run_id: str) -> Sandbox:
        spec, run_dir = run_spec(workspaces, run_id)
        claim = pool.claim(spec, run_dir)
        if claim is None:  # a shape first seen
            await pool.fill()
            claim = pool.claim(spec, run_dir)
        assert claim is not None
        await workspaces.lay_out(run_id, adopt=claim.folder)
        sandbox = await backend.adopt(claim.sandbox, spec)
        assert sandbox.name.startswith(f"bosun-{run_id}-")
        assert (await backend.inspect(sandbox)).run_id == run_id
        return sandbox

    first, second = f"r{uuid.uuid4().hex[:10]}", f"r{uuid.uuid4().hex[:10]}"
    try:
        reaped = await claimed(first)
        await pool.fill()
        (idle,) = pool.ready()
        # Only containers the predicate says are over go; here: those of run ``first``.
        assert await backend.reap(lambda run_id: run_id != first) == [reaped.id]
        assert await backend.status(idle.sandbox) == SandboxStatus.RUNNING

        removed = await claimed(second)
        assert await backend.remove_run(second) == [removed.id]
        assert await backend.status(removed) == SandboxStatus.REMOVED
    finally:
        await pool.close()


async def test_pool_of_size_zero_starts_nothing(
    engine: docker.DockerClient, backend: DockerBackend, workspaces: WorkspaceManager
) -> None:
    pool = SandboxPool(backend, workspaces.root / "pool", size=0, idle_seconds=600)
    spec, run_dir = run_spec(workspaces, "r-none")
    assert pool.claim(spec, run_dir) is None
    await asyncio.sleep(0.3)
    assert pool.claim(spec, run_dir) is None
    assert pool.created == 0 and pool_containers(engine, pool) == []
    await pool.close()


async def test_a_shape_that_cannot_start_is_tried_again_later_not_every_round(
    engine: docker.DockerClient, workspaces: WorkspaceManager
) -> None:
    """An image that is missing (or an engine that is down) is not hammered: each failed start
    doubles the wait before the next; the run that asked starts its own sandbox meanwhile."""
    attempts: list[float] = []

    class Counting(DockerBackend):
        async def create(self, spec: SandboxSpec) -> Sandbox:
            attempts.append(time.monotonic())
            return await super().create(spec)

    backend = Counting()
    pool = SandboxPool(
        backend, workspaces.root / "pool", size=1, idle_seconds=600, check_seconds=0.05
    )
    spec, run_dir = run_spec(workspaces, "r-missing")
    spec = spec.model_copy(update={"image": "bosun-absent:nope"})
    try:
        assert pool.claim(spec, run_dir) is None
        await asyncio.sleep(2.0)  # 40 rounds of 0.05 s; waits of 0.1, 0.2, 0.4, 0.8 s
        assert 2 <= len(attempts) <= 6, attempts
        assert pool.ready() == [] and pool.created == 0
        assert not list((workspaces.root / "pool" / pool.id).glob("*"))  # no folder left
    finally:
        await pool.close()
        await backend.close()


async def test_a_ready_sandbox_sees_nothing_of_the_run_that_claimed_its_neighbour(
    engine: docker.DockerClient, backend: DockerBackend, workspaces: WorkspaceManager
) -> None:
    """Each pooled sandbox binds only its own empty folders: what one run writes into the
    sandbox it claimed never shows in the one the next run will get, and the claimed one
    sees its run's files."""
    pool = SandboxPool(
        backend, workspaces.root / "pool", size=2, idle_seconds=600, check_seconds=3600
    )
    spec, run_dir = run_spec(workspaces, "r-first")
    try:
        assert pool.claim(spec, run_dir) is None
        await pool.fill()
        claim = pool.claim(spec, run_dir)
        assert claim is not None
        await workspaces.lay_out("r-first", adopt=claim.folder)
        (run_dir / "workspace" / "secret.txt").write_text("run one's data\n")
        (run_dir / "input").mkdir(exist_ok=True)
        (run_dir / "input" / "prompt.md").write_text("run one's prompt\n")
        claimed = await backend.adopt(claim.sandbox, spec)
        (neighbour,) = pool.ready()
        for sandbox, expect in ((neighbour.sandbox, ""), (claimed, "secret.txt\nprompt.md\n")):
            listing = await backend.exec(
                sandbox, ["sh", "-c", "ls -A /workspace; ls -A /bosun"], timeout=30
            )
            assert listing.check().text() == expect, sandbox.name
        await backend.remove(claimed)
    finally:
        await pool.close()
