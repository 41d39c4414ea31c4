"""The images Bosun runs on, started on the real engine: the Debian base, the agent sandbox image
(offline-built by sandboxes/images/build.sh) and, on request, the service image."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.services import docker_client, missing

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("BOSUN_BASE_IMAGE", "debian:bookworm-slim")
AGENT_IMAGE = os.environ.get("BOSUN_AGENT_IMAGE", "bosun-agent:latest")


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    client = docker_client()
    yield client
    client.close()


def need_image(engine: Any, ref: str, hint: str) -> Any:
    try:
        return engine.images.get(ref)
    except docker.errors.ImageNotFound:
        missing(ref, hint)


def run(
    engine: Any, image: str, command: list[str], **kwargs: Any
) -> tuple[int, str, dict[str, Any]]:
    """Run COMMAND in a fresh container with no network; return exit code, output, inspect data."""
    container = engine.containers.create(
        image, command, network_mode="none", labels={"bosun.test": "images"}, **kwargs
    )
    try:
        container.start()
        status = container.wait(timeout=60)
        output = container.logs(stdout=True, stderr=True).decode()
        container.reload()
        return int(status["StatusCode"]), output, container.attrs
    finally:
        container.remove(force=True)


def test_base_image_runs_with_no_network(engine: Any) -> None:
    need_image(engine, BASE_IMAGE, "scripts/make_base_image.sh")
    code, output, attrs = run(engine, BASE_IMAGE, ["ls", "/sys/class/net"])
    assert code == 0, output
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert output.split() == ["lo"], f"interfaces besides loopback: {output!r}"


def test_agent_image_runs_as_the_agent_user_in_the_workspace(engine: Any) -> None:
    image = need_image(engine, AGENT_IMAGE, "sandboxes/images/build.sh")
    assert image.attrs["Config"]["WorkingDir"] == "/workspace"
    assert not image.attrs["Config"]["Entrypoint"], "the agent image must not wrap commands"
    code, output, attrs = run(engine, AGENT_IMAGE, ["sh", "-c", "id -u; id -g; echo $HOME; pwd"])
    assert code == 0, output
    assert output.split() == ["1000", "1000", "/home/agent", "/workspace"]
    assert attrs["HostConfig"]["NetworkMode"] == "none"


def test_agent_image_has_git_and_python_that_work_offline(engine: Any) -> None:
    need_image(engine, AGENT_IMAGE, "sandboxes/images/build.sh")
    script = (
        "set -e; ls /sys/class/net; cd /workspace; git init -q .; echo hi > a.txt; git add a.txt;"
        " git -c user.name=agent -c user.email=agent@example.com commit -qm first;"
        " git log --format=%s;"
        " python3 -c 'import ssl, sqlite3, venv, sys; print(sys.version_info[:2])'"
    )
    code, output, _ = run(engine, AGENT_IMAGE, ["bash", "-c", script])
    assert code == 0, output
    assert output.split("\n")[:3] == ["lo", "first", "(3, 11)"]


def test_agent_image_is_built_from_the_current_sources(engine: Any) -> None:
    """build.sh labels the image with a hash of its build context and base image: a stale image
    means someone changed sandboxes/images/agent without rebuilding (bootstrap rebuilds it)."""
    image = need_image(engine, AGENT_IMAGE, "sandboxes/images/build.sh")
    base_id = need_image(engine, BASE_IMAGE, "scripts/make_base_image.sh").id
    expected = subprocess.run(
        [
            "bash",
            "-c",
            'source scripts/lib.sh && tree_hash sandboxes/images/agent "$1" online=0',
            "-",
            base_id,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert image.labels.get("bosun.context-hash") == expected, (
        "bosun-agent:latest is stale: run sandboxes/images/build.sh --if-changed"
    )


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    os.environ.get("BOSUN_TEST_BUILD_SERVICE_IMAGE") != "1",
    reason="building the service image takes minutes; set BOSUN_TEST_BUILD_SERVICE_IMAGE=1",
)
def test_service_image_builds_offline_and_serves_healthz(engine: Any) -> None:
    tag = f"bosun-test-service:{uuid.uuid4().hex[:8]}"
    need_image(engine, BASE_IMAGE, "scripts/make_base_image.sh")
    build = subprocess.run(
        ["scripts/build_service_image.sh", "--tag", tag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    container = None
    try:
        image = engine.images.get(tag)
        assert image.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"
        container = engine.containers.run(tag, detach=True, network_mode="none")
        probe = [
            "python",
            "-c",
            "import os, urllib.request; print(os.getuid());"
            " print(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).read())",
        ]
        deadline = time.monotonic() + 60
        while True:
            result = container.exec_run(probe)
            if result.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.exit_code == 0, result.output.decode()
        uid, body = result.output.decode().split("\n")[:2]
        assert uid != "0"
        assert '"status":"ok"' in body
    finally:
        if container is not None:
            container.remove(force=True)
        engine.images.remove(tag, force=True)
