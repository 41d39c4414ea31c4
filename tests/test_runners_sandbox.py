"""The agent CLIs in the real hardened sandbox: they start, and each adapter's own invocation
runs the real CLI end to end against a model stub (inside the sandbox on 127.0.0.1, where the
gateway's forwarder will be) and edits the workspace."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker.errors
import pytest

from bot.agents.runners import RunnerEvent, get_runner
from bot.profiles import ProfileConfig
from sandboxes.base import Sandbox, open_sandbox
from sandboxes.docker import DockerBackend
from sandboxes.output import LineSplitter, OutputChunk
from sandboxes.spec import BindMount, SandboxSpec
from tests.services import docker_client, missing

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("BOSUN_AGENT_IMAGE", "bosun-agent:latest")
ROOT = Path(__file__).resolve().parent.parent
TEST_ROOT = Path("/tmp/bosun-runner-tests")
PORT = 8788


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    client = docker_client()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        missing(IMAGE, "build it with sandboxes/images/build.sh")
    yield client
    client.close()


@pytest.fixture
def dirs(engine) -> Iterator[tuple[Path, Path]]:  # type: ignore[no-untyped-def]
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    base = TEST_ROOT / uuid.uuid4().hex[:8]
    workspace, inputs = base / "workspace", base / "bosun"
    workspace.mkdir(parents=True)
    shutil.copytree(
        ROOT / "tests" / "modelstubs",
        inputs / "modelstubs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (inputs / "prompt.md").write_text("Create hello.txt saying hello.\n")
    for path in [base, inputs, *inputs.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield workspace, inputs
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def sandbox(dirs: tuple[Path, Path]) -> AsyncIterator[tuple[DockerBackend, Sandbox]]:
    workspace, inputs = dirs
    backend = DockerBackend()
    spec = SandboxSpec(
        run_id=f"runner-{uuid.uuid4().hex[:8]}",
        image=IMAGE,
        workspace=workspace,
        timeout_seconds=120,
        mounts=(BindMount(source=inputs, target="/bosun"),),
    )
    uid, gid = await backend.host_ids(spec)
    os.chown(workspace, uid, gid)
    async with open_sandbox(backend, spec) as box:
        yield backend, box
    await backend.close()


@pytest.mark.parametrize(
    ("cli", "expected"), [("claude", "(Claude Code)"), ("codex", "codex-cli"), ("node", "v22.")]
)
async def test_cli_starts_in_the_hardened_sandbox(
    sandbox: tuple[DockerBackend, Sandbox], cli: str, expected: str
) -> None:
    backend, box = sandbox
    result = await backend.exec(box, [cli, "--version"], timeout=60)
    assert result.exit_code == 0, result.text()
    assert expected in result.stdout.decode()
    ident = await backend.exec(box, ["sh", "-c", "id -u; touch /usr/x 2>/dev/null || echo ro"])
    assert ident.stdout.decode().split() == ["1000", "ro"]


WRITE = {"file_path": "/workspace/hello.txt", "content": "hello\n"}
CASES = {
    "claude-code": (
        "anthropic",
        [{"tool": "Write", "arguments": WRITE}, {"text": "Wrote hello.txt."}],
        "claude-sonnet-4-5",
    ),
    "codex": (
        "openai",
        [
            {"tool": "exec_command", "arguments": {"cmd": "printf 'hello\\n' > hello.txt"}},
            {"text": "Wrote hello.txt."},
        ],
        "gpt-5-codex",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_adapter_runs_the_real_cli_against_a_model_stub(
    sandbox: tuple[DockerBackend, Sandbox], dirs: tuple[Path, Path], name: str
) -> None:
    backend, box = sandbox
    workspace, inputs = dirs
    api, turns, model = CASES[name]
    (inputs / "turns.json").write_text(json.dumps(turns))
    (inputs / "turns.json").chmod(0o644)
    stub_log = bytearray()

    async def on_stub_output(chunk: OutputChunk) -> None:
        if chunk.stream == "stderr":
            stub_log.extend(chunk.data)

    stub = asyncio.create_task(
        backend.exec(
            box,
            [
                "python3",
                "-m",
                "modelstubs",
                api,
                "--port",
                str(PORT),
                "--script",
                "/bosun/turns.json",
            ],
            env={"PYTHONPATH": "/bosun", "PYTHONDONTWRITEBYTECODE": "1"},
            timeout=110,
            on_output=on_stub_output,
        )
    )
    try:
        probe = (
            "import socket,time\n"
            "for _ in range(100):\n"
            f"    try: socket.create_connection(('127.0.0.1', {PORT}), 1).close(); break\n"
            "    except OSError: time.sleep(0.1)\n"
        )
        await backend.exec(box, ["python3", "-c", probe], timeout=30)
        runner = get_runner(name)
        invocation = runner.invocation(
            ProfileConfig(runner=name, model=model, max_turns=5),  # type: ignore[arg-type]
            gateway_url=f"http://127.0.0.1:{PORT}",
        )
        events: list[RunnerEvent] = []

        async def on_line(stream: str, line: str) -> None:
            events.extend(runner.parse_line(stream, line))

        splitter = LineSplitter(on_line)
        result = await backend.exec(
            box, invocation.command(), env=invocation.env, workdir="/workspace", on_output=splitter
        )
        await splitter.flush()
    finally:
        stub.cancel()
        await asyncio.gather(stub, return_exceptions=True)
    outcome = runner.outcome(result.exit_code, events)
    # The model API saw only the dummy key, on every request.
    seen = [json.loads(line) for line in stub_log.decode().splitlines() if line.startswith("{")]
    assert seen and {entry["key"].removeprefix("Bearer ") for entry in seen} == {"bosun-gateway"}
    assert outcome.success, result.text()[-2000:]
    assert (workspace / "hello.txt").read_text() == "hello\n"
    assert outcome.summary == "Wrote hello.txt."
    assert outcome.session_id and outcome.tokens_in > 0 and outcome.tokens_out > 0
    assert [e.data["phase"] for e in events if e.kind == "tool"][:2] == ["call", "result"]
