"""The gateway end to end with a real hardened sandbox (network none, read-only root, uid 1000
remapped): the agent's SDK-style request goes to 127.0.0.1:8788 inside the container, through
the forwarder and the mounted Unix socket, to the stub upstream on the host's loopback."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from bot.agents.gateway import (
    DUMMY_KEY,
    FORWARDER_PORT,
    ModelGateway,
    Upstream,
    UsageRecord,
    agent_env,
    forwarder_argv,
    sandbox_mount,
    socket_dir,
)
from sandboxes.base import Sandbox, open_sandbox
from sandboxes.docker import DockerBackend
from sandboxes.spec import SandboxSpec
from tests.services import docker_client, missing
from tests.test_gateway_stub import ANTHROPIC_USAGE, StubUpstream, start_stub, stop_stub

pytestmark = pytest.mark.docker

AGENT_IMAGE = "bosun-agent:latest"
ROOT = Path("/tmp/bgw-sbx")
REAL_ANTHROPIC = "sk-ant-api03-SANDBOXREAL-" + "c" * 40
REAL_OPENAI = "sk-proj-SANDBOXREAL-" + "d" * 40
KEYS = {"ANTHROPIC_API_KEY": REAL_ANTHROPIC, "OPENAI_API_KEY": REAL_OPENAI}

STREAM_CLIENT = r"""
import http.client, json, os, time, urllib.parse
base = urllib.parse.urlsplit(os.environ["ANTHROPIC_BASE_URL"])
def call(method, path, body, headers):
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
    conn.request(method, path, json.dumps(body), {"content-type": "application/json", **headers})
    return conn.getresponse()
headers = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}
body = {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 8, "messages": []}
t0 = time.monotonic()
r = call("POST", base.path + "/v1/messages?beta=true", body, {**headers, "x-stub-pause": "1.5"})
first = r.read1(65536)
t1 = time.monotonic()
rest = r.read()
t2 = time.monotonic()
out = {"status": r.status, "first": first.decode(), "rest": rest.decode(),
       "first_at": t1 - t0, "end_at": t2 - t0, "refused": {}}
for path in (base.path + "/v1/messages/batches", "/gemini/v1beta/models", "/openai/v1/files"):
    resp = call("POST", path, {}, headers)
    out["refused"][path] = [resp.status, json.loads(resp.read())["error"]["type"]]
print(json.dumps(out))
"""

DUMP_CLIENT = r"""
import http.client, json, os
conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]), timeout=30)
conn.request("POST", "/anthropic/v1/messages", json.dumps({"model": "claude", "messages": []}),
             {"x-api-key": os.environ["ANTHROPIC_API_KEY"]})
print("status", conn.getresponse().status)
print("env", json.dumps(dict(os.environ)))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    print(pid, name, f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError as exc:
                print(pid, name, "unreadable", exc)
for root, dirs, files in os.walk("/bosun-gw"):
    for name in files:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                print("file", path, f.read().decode(errors="replace"))
        except OSError as exc:
            print("file", path, "unreadable", exc)
"""

STARTUP_CLIENT = r"""
import socket, subprocess, sys, time
t0 = time.monotonic()
child = subprocess.Popen([sys.executable, "-I", "/bosun-gw/forwarder.py", "--port", "8799"])
while True:
    try:
        socket.create_connection(("127.0.0.1", 8799), timeout=1).close()
        break
    except OSError:
        time.sleep(0.002)
print(time.monotonic() - t0)
child.terminate()
sys.exit(child.wait())
"""


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
def stub() -> Iterator[StubUpstream]:
    stub, server, thread = start_stub()
    yield stub
    stop_stub(server, thread)


@pytest.fixture(scope="module")
async def backend(engine) -> AsyncIterator[DockerBackend]:  # type: ignore[no-untyped-def]
    backend = DockerBackend()
    yield backend
    await backend.close()


@pytest.fixture(scope="module")
def run_dir(engine) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    ROOT.mkdir(mode=0o755, exist_ok=True)
    path = ROOT / uuid.uuid4().hex[:8]
    (path / "workspace").mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def records() -> list[UsageRecord]:
    return []


@pytest.fixture(scope="module")
def routes(stub: StubUpstream) -> dict[str, Upstream]:
    return {
        "anthropic": Upstream(api="anthropic", base_url=stub.url),
        "openai": Upstream(api="openai", base_url=stub.url),
    }


@pytest.fixture(scope="module")
async def sandbox(
    backend: DockerBackend,
    run_dir: Path,
    routes: dict[str, Upstream],
    records: list[UsageRecord],
) -> AsyncIterator[Sandbox]:
    spec = SandboxSpec(
        run_id=f"gw-{uuid.uuid4().hex[:8]}",
        image=AGENT_IMAGE,
        workspace=run_dir / "workspace",
        memory="256m",
        cpus=1,
        pids=128,
        tmpfs_size="32m",
        timeout_seconds=60,
        env=agent_env(routes, FORWARDER_PORT),
        mounts=(sandbox_mount(socket_dir(run_dir)),),
    )
    uid, gid = await backend.host_ids(spec)
    os.chown(spec.workspace, uid, gid)
    gateway = ModelGateway(
        spec.run_id,
        socket_dir(run_dir),
        routes,
        environ=KEYS,
        sandbox_gid=gid,
        on_usage=records.append,
    )
    async with gateway, open_sandbox(backend, spec) as sandbox:
        yield sandbox


async def run(backend: DockerBackend, sandbox: Sandbox, argv: list[str], **kw: Any) -> Any:
    result = await backend.exec(sandbox, argv, timeout=60, **kw)
    return result


async def test_agent_request_reaches_the_upstream_streaming_with_the_real_key(
    backend: DockerBackend, sandbox: Sandbox, stub: StubUpstream, records: list[UsageRecord]
) -> None:
    before = len(records)
    result = await run(backend, sandbox, forwarder_argv(["python3", "-c", STREAM_CLIENT]))
    assert result.exit_code == 0, result.text
    out = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert out["status"] == 200
    # The first chunk reached the agent while the stub was still paused mid-stream.
    assert "message_start" in out["first"] and "message_stop" not in out["first"]
    assert "message_stop" in out["rest"]
    assert out["first_at"] < 1.2 and out["end_at"] - out["first_at"] >= 1.0
    # Everything outside the allow-list was refused by the gateway, never forwarded.
    assert {tuple(v) for v in out["refused"].values()} == {(403, "forbidden")}
    streamed = [s for s in stub.requests() if s.query == "beta=true"]
    assert streamed and streamed[-1].headers["x-api-key"] == REAL_ANTHROPIC
    assert not [s for s in stub.requests() if s.path in ("/v1/messages/batches", "/v1/files")]
    (record,) = records[before:]
    assert record.usage.output_tokens == ANTHROPIC_USAGE["output"]
    assert record.usage.input_tokens == ANTHROPIC_USAGE["input"] and record.streamed


async def test_nothing_in_the_sandbox_holds_the_real_key(
    engine,  # type: ignore[no-untyped-def]
    backend: DockerBackend,
    sandbox: Sandbox,
    stub: StubUpstream,
) -> None:
    argv = forwarder_argv(["python3", "-c", DUMP_CLIENT])
    result = await run(backend, sandbox, argv, env={"PORT": str(FORWARDER_PORT)})
    assert result.exit_code == 0, result.text
    dump = result.output.decode(errors="replace")
    # The dump did cover the environment, the process list and the mounted files...
    assert "status 200" in dump
    assert DUMMY_KEY in dump and "forwarder.py" in dump and "file /bosun-gw/forwarder.py" in dump
    # ...and the upstream got the real key for that very request, yet the sandbox never had it.
    assert stub.requests()[-1].headers["x-api-key"] == REAL_ANTHROPIC
    for secret in KEYS.values():
        assert secret not in dump
        assert secret[:24] not in dump
    config = engine.api.inspect_container(sandbox.id)["Config"]
    assert not [e for e in config["Env"] or [] if any(k in e for k in KEYS.values())]


async def test_forwarder_relays_exit_status_and_listens_fast(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    result = await run(backend, sandbox, forwarder_argv(["sh", "-c", "exit 3"]))
    assert result.exit_code == 3
    result = await run(backend, sandbox, forwarder_argv(["sh", "-c", "kill -TERM $$"]))
    assert result.exit_code == 128 + 15
    result = await run(backend, sandbox, ["python3", "-I", "-c", STARTUP_CLIENT])
    assert result.exit_code == 0, result.text
    seconds = float(result.stdout.decode().strip().splitlines()[-1])
    assert seconds < 0.5  # spawn to listening; about 40-90 ms on an idle 2-core host


async def test_a_missing_gateway_socket_answers_502(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    client = (
        "import http.client; c = http.client.HTTPConnection('127.0.0.1', 8788, timeout=10);"
        "c.request('GET', '/anthropic/v1/models'); r = c.getresponse(); print(r.status, r.read())"
    )
    argv = forwarder_argv(["python3", "-c", client])
    argv[argv.index("--socket") + 1] = "/bosun-gw/absent.sock"
    result = await run(backend, sandbox, argv)
    assert result.exit_code == 0, result.text
    assert b"502" in result.stdout and b"gateway_unavailable" in result.stdout
