"""End to end: a repository's dev container image. Its Dockerfile is built on the worker with
network only through the run's egress proxy (a package installed from a loopback index, a host
off the allowlist refused and listed on the PR and the check run), the run's sandbox is made
from it and the gate uses what the build installed; a dev container image the operator does
not allow leaves the run on the profile's image, saying why.

Bosun web + worker + real Redis + real Docker + the GitHub emulator over loopback.
"""

from __future__ import annotations

import json
from typing import Any

from sandboxes.repoimage import repo_tag
from tests.package_index import build_wheel, package_index
from tests.services import docker_client
from tests.stack import BosunStack, StackPlace, open_stack
from tests.test_e2e_setup import APP, TESTS, check_run_of, run_once

DEVCONTAINER = """// the dev container: its image is built from the Dockerfile next to it
{
  "name": "app",
  "build": {"dockerfile": "Dockerfile", "context": ".."},
  "runArgs": ["--network=host", "--privileged"],  // never used: the sandbox's flags are Bosun's
}
"""
DOCKERFILE = (
    "FROM bosun-agent:latest\n"
    "USER root\n"
    "COPY app.py /opt/app-at-build.py\n"
    # The forwarder's namespace, whatever runArgs say: loopback only.
    'RUN test "$(ls /sys/class/net)" = lo\n'
    "RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --disable-pip-version-check"
    " --trusted-host 127.0.0.1 --index-url INDEX_URL bosun-dep\n"
    "RUN (python3 -c \"import urllib.request; urllib.request.urlopen('http://denied.example/')\""
    " 2>&1 || true) | tail -n 1\n"
    "USER agent\n"
)
CONFIG = (
    "gates:\n"
    "  - name: test\n"
    '    run: ["/opt/venv/bin/python", "-m", "unittest", "-v"]\n'
    "  - name: offline\n"
    "    run: "
    + json.dumps(
        ["python3", "-c", "import os; n = os.listdir('/sys/class/net'); assert n == ['lo'], n"]
    )
    + "\n"
)
AGENT = (
    "import pathlib; pathlib.Path('/workspace/app.py').write_text("
    "'import bosun_dep\\n\\n\\ndef answer():\\n    return bosun_dep.VALUE\\n')"
)


def image_row(summary: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith("| image |"))


def left_containers(run_id: str) -> list[str]:
    client = docker_client()
    try:
        found = client.api.containers(all=True, filters={"label": f"bosun.run_id={run_id}"})
        return [c["Names"][0] for c in found]
    finally:
        client.close()


def test_a_dev_container_is_built_through_the_egress_proxy_or_left_for_the_default_image(
    place: StackPlace,
) -> None:
    name, wheel = build_wheel("bosun-dep", "1.0", "VALUE = 42\n")
    with (
        package_index({"bosun-dep": (name, wheel)}) as index,
        open_stack(
            *place,
            profiles={"default": {"runner": "script", "command": ["python3", "-c", AGENT]}},
            egress={"allow": [f"127.0.0.1:{index.port}"], "private_hosts": ["127.0.0.1"]},
            sandbox={"repo_dockerfiles": True, "allowed_images": ["bosun-agent:latest"]},
        ) as stack,
    ):
        seen: set[str] = set()
        try:
            built_run(stack, seen, index.url, index.port)
            failed_build_run(stack, seen)
            default_run(stack, seen)
        finally:
            client = docker_client()
            prefix = repo_tag(stack.repo, "x").split(":", 1)[0]
            for image in client.images.list(name=prefix):
                client.images.remove(image.id, force=True)
            client.close()


def built_run(stack: BosunStack, seen: set[str], index_url: str, index_port: int) -> None:
    files = {
        ".devcontainer/devcontainer.json": DEVCONTAINER,
        ".devcontainer/Dockerfile": DOCKERFILE.replace("INDEX_URL", index_url),
        ".github/bosun.yml": CONFIG,
        "app.py": APP,
        "test_app.py": TESTS,
    }
    run = run_on(stack, files, "Use the dependency", seen)

    # The image: built from the dev container's Dockerfile, with the proxy as its network.
    policy = [e["data"] for e in stack.events(run["id"], "policy")]
    (decision,) = [p for p in policy if p["rule"] == "image" and p["decision"] == "build"]
    assert decision["source"] == ".devcontainer/devcontainer.json"
    assert decision["dockerfile"] == ".devcontainer/Dockerfile"
    assert decision["network"] == "proxy" and decision["image"].startswith("bosun-repo/")
    egress = [e["data"] for e in stack.events(run["id"], "egress")]
    assert {e["phase"] for e in egress} == {"build"}
    assert {(e["host"], e["port"]) for e in egress if e["allowed"]} == {("127.0.0.1", index_port)}
    assert [(e["host"], e["port"]) for e in egress if not e["allowed"]] == [("denied.example", 80)]

    # The sandbox ran on it: the gate imported what the build installed, with no network.
    gates = {e["data"]["name"]: e["data"] for e in stack.events(run["id"], "gate_result")}
    assert gates["test"]["passed"] is True, stack.artifacts(run["id"])["gate:test"].read_text()
    assert gates["offline"]["passed"] is True, stack.artifacts(run["id"])["gate:offline"]

    # The PR and the check run: green, the image named, the host the build was refused listed.
    check = check_run_of(stack, stack.repo, run["head_sha"])
    assert check["conclusion"] == "success"
    row = image_row(check["output"]["summary"])
    assert "✅ done" in row and decision["image"] in row and "network through the egress" in row
    assert "`denied.example:80`" in check["output"]["summary"]
    pr = next(p for p in stack.state()["pulls"] if p["pull"]["head"] == run["branch"])
    assert "`denied.example:80`" in pr["body"] and "Blocked network requests" in pr["body"]

    # Nothing of the build's network is left: its forwarder container went with the build.
    assert left_containers(run["id"]) == []


def run_on(stack: BosunStack, files: dict[str, str], title: str, seen: set[str]) -> dict[str, Any]:
    """Push ``files`` to the default branch, then label a new issue and wait for its run."""
    stack.emulator.push(stack.repo, "main", files, user="alice")
    return run_once(stack, stack.repo, title, seen)


def image_decision(stack: BosunStack, run_id: str) -> dict[str, Any]:
    """The run's one policy event about its image."""
    (decision,) = [
        e["data"] for e in stack.events(run_id, "policy") if e["data"]["rule"] == "image"
    ]
    return decision


def failed_build_run(stack: BosunStack, seen: set[str]) -> None:
    """A dev container whose build fails: the run goes on with the profile's image."""
    dockerfile = "FROM bosun-agent:latest\nRUN echo compiling-the-dev-container && false\n"
    files = {".devcontainer/Dockerfile": dockerfile, ".github/bosun.yml": "gates: []\n"}
    run = run_on(stack, files, "Edit with a broken dev container build", seen)
    decision = image_decision(stack, run["id"])
    assert decision["decision"] == "default" and decision["image"] == ".devcontainer/Dockerfile"
    assert "could not be built" in decision["message"]
    assert "`image-build` artifact" in decision["message"]
    log = stack.artifacts(run["id"])["image-build"].read_text()
    assert "compiling-the-dev-container" in log
    check = check_run_of(stack, stack.repo, run["head_sha"])
    row = image_row(check["output"]["summary"])
    assert "⏭️ skipped" in row and "`bosun-agent:latest`" in row
    assert left_containers(run["id"]) == []


def default_run(stack: BosunStack, seen: set[str]) -> None:
    devcontainer = '{"image": "node:20", "postCreateCommand": "echo from-the-dev-container"}'
    files = {".devcontainer/devcontainer.json": devcontainer, ".github/bosun.yml": "gates: []\n"}
    run = run_on(stack, files, "Use the dependency without an image", seen)

    decision = image_decision(stack, run["id"])
    assert decision["decision"] == "default" and decision["image"] == "node:20"
    assert "`node:20`" in decision["message"] and "`sandbox.allowed_images`" in decision["message"]
    assert "the run uses the profile's image `bosun-agent:latest`" in decision["message"]
    assert stack.events(run["id"], "egress") == []  # nothing was built
    # Its create commands still ran, on the profile's image.
    assert "from-the-dev-container" in stack.artifacts(run["id"])["setup"].read_text()

    check = check_run_of(stack, stack.repo, run["head_sha"])
    row = image_row(check["output"]["summary"])
    assert "⏭️ skipped" in row and "`node:20`" in row and "`bosun-agent:latest`" in row
    issue = next(
        i for i in stack.state()["issues"] if i["title"] == "Use the dependency without an image"
    )
    status = [c["body"] for c in issue["comments"] if "<!-- bosun:status -->" in c["body"]]
    assert len(status) == 1 and "| image | ⏭️ skipped |" in status[0] and "`node:20`" in status[0]


def test_an_offline_build_an_allowed_dev_container_image_and_a_broken_file_named(
    place: StackPlace,
) -> None:
    with open_stack(
        *place,
        profiles={"default": {"runner": "script", "command": ["python3", "-c", AGENT]}},
        egress={"allow": []},
        sandbox={"repo_dockerfiles": True, "allowed_images": ["bosun-agent:latest"]},
    ) as stack:
        seen: set[str] = set()
        # No forwarder: the RUN step is alone on its loopback, nothing listens on 8789.
        dockerfile = (
            "FROM bosun-agent:latest\n"
            'RUN test "$(ls /sys/class/net)" = lo && ! grep -q " 0100007F:2255 " /proc/net/tcp'
            ' && test -z "$HTTP_PROXY"\n'
        )
        devcontainer = '{"build": {"dockerfile": "Dockerfile"}}'
        files = {
            ".devcontainer/devcontainer.json": devcontainer,
            ".devcontainer/Dockerfile": dockerfile,
            ".github/bosun.yml": "gates: []\n",
        }
        try:
            run = run_on(stack, files, "Build offline", seen)
            decision = image_decision(stack, run["id"])
            assert (decision["decision"], decision["network"]) == ("build", "none"), decision
            check = check_run_of(stack, stack.repo, run["head_sha"])
            assert "no network)" in image_row(check["output"]["summary"])
            assert stack.events(run["id"], "egress") == []

            # An image the operator allows: used as it is.
            allowed = '{"image": "bosun-agent:latest"}'
            files = {".devcontainer/devcontainer.json": allowed}
            run = run_on(stack, files, "Edit on the dev container's image", seen)
            decision = image_decision(stack, run["id"])
            assert decision == {
                "rule": "image",
                "decision": "allow",
                "image": "bosun-agent:latest",
                "source": ".devcontainer/devcontainer.json",
            }
            check = check_run_of(stack, stack.repo, run["head_sha"])
            assert "(the dev container's" in image_row(check["output"]["summary"])

            # `setup: []` in the policy file: the broken dev container is named on the image row.
            broken = '{"build": {"dockerfile": "/etc/Dockerfile"}}'
            files = {".devcontainer/devcontainer.json": broken, ".github/bosun.yml": "setup: []\n"}
            run = run_on(stack, files, "Edit with a broken dev container", seen)
            decision = image_decision(stack, run["id"])
            assert decision["decision"] == "default"
            assert "build.dockerfile must be relative" in decision["message"]
            check = check_run_of(stack, stack.repo, run["head_sha"])
            row = image_row(check["output"]["summary"])
            assert (
                "⏭️ skipped" in row
                and "must be relative" in row
                and "| setup |" not in (check["output"]["summary"])
            )
        finally:
            client = docker_client()
            prefix = repo_tag(stack.repo, "x").split(":", 1)[0]
            for image in client.images.list(name=prefix):
                client.images.remove(image.id, force=True)
            client.close()
