"""An agent image with uv, npm, Go and cargo, as an operator's image for Python, Node, Go and
Rust projects has.

``bosun-agent:latest`` has ``python3`` and ``node`` but neither uv, npm, Go nor cargo.
``tool_image()`` builds ``bosun-test-tools:<hash>`` from it, with the network off: uv's static
binary (from its PyPI wheel, fetched with ``pip download``) in ``/usr/local/bin``, npm (pure
JavaScript, its registry tarball) under ``/opt/npm`` with an ``npm`` wrapper, and Debian
bookworm's ``golang-go`` and ``cargo`` (cargo 0.66, rustc 1.63 and the C toolchain rustc links with;
their .debs fetched on the host by ``sandboxes/images/fetch_debs.sh``, as the agent image's
are). uv and npm are pinned by hash and kept in ``.cache/test-assets`` between runs; the image
is tagged by what went into it (the base image's id included), so it is built once per machine
(about 45 s, most of it unpacking Go and Rust) and rebuilt when the agent image is.
``rust_image()`` builds ``bosun-test-rust:<hash>`` the same way with Debian's newer cargo.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import docker

from tests.services import docker_client, missing

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".cache" / "test-assets"
BASE = "bosun-agent:latest"
REPOSITORY = "bosun-test-tools"

UV_VERSION = "0.13.10"
UV_WHEEL = f"uv-{UV_VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
UV_SHA256 = "7cc9c41b43d583e34c781fd3446405b06e9c5fa2db468ce2a534d353db6429e5"
NPM_VERSION = "11.6.2"
NPM_INTEGRITY = (
    "sha512-7iKzNfy8lWYs3zq4oFPa8EXZz5xt9gQNKJZau3B1ErLBb6bF7sBJ00x09485DOvRT2l5G"
    "erbl3VlZNT57MxJVA=="
)
NPM_TARBALL = f"https://registry.npmjs.org/npm/-/npm-{NPM_VERSION}.tgz"

DEBS = ("golang-go", "cargo")
DOCKERFILE = f"""FROM {BASE}
USER root
COPY debs/ /tmp/debs/
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
COPY uv npm /usr/local/bin/
ADD npm.tgz /opt/npm/
USER 1000:1000
"""
NPM_WRAPPER = '#!/bin/sh\nexec node /opt/npm/package/bin/npm-cli.js "$@"\n'


def _pip() -> list[str]:
    """The host's pip: the system Python's, else (a machine set up with uv only) uv's ``uvx``."""
    try:
        subprocess.run(["python3", "-m", "pip", "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ["uvx", "pip"]
    return ["python3", "-m", "pip"]


def _uv_wheel() -> bytes:
    path = ASSETS / UV_WHEEL
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != UV_SHA256:
        ASSETS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            argv = [
                *_pip(), "download", "--no-deps", "--only-binary", ":all:",
                "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                "--disable-pip-version-check", "-d", folder, f"uv=={UV_VERSION}",
            ]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                missing("uv's wheel", f"pip download failed: {done.stderr.strip()[-500:]}")
            data = (Path(folder) / UV_WHEEL).read_bytes()
        if hashlib.sha256(data).hexdigest() != UV_SHA256:
            raise AssertionError(f"{UV_WHEEL} does not have the pinned sha256")
        path.write_bytes(data)
    return path.read_bytes()


def _npm_tarball() -> bytes:
    path = ASSETS / f"npm-{NPM_VERSION}.tgz"

    def pinned(data: bytes) -> bool:
        digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
        return f"sha512-{digest}" == NPM_INTEGRITY

    if not path.is_file() or not pinned(path.read_bytes()):
        ASSETS.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(NPM_TARBALL, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            missing("npm's tarball", f"{NPM_TARBALL}: {exc}")
        if not pinned(data):
            raise AssertionError(f"{NPM_TARBALL} does not have the pinned integrity")
        path.write_bytes(data)
    return path.read_bytes()


def _built(
    repository: str,
    dockerfile: str,
    debs: tuple[str, ...],
    pinned: str,
    files: Callable[[], dict[str, tuple[bytes, int]]],
) -> str:
    """``repository:<hash>`` built from ``dockerfile`` with ``debs`` (and their dependencies)
    in ``debs/`` and ``files()`` (name -> bytes and mode) in its context, unless the engine has
    it; tagged by what goes into it (``pinned``: the hashes of the files)."""
    client = docker_client()
    try:
        base = client.images.get(BASE).id
        key = hashlib.sha256(f"{dockerfile}{debs}{pinned}{base}".encode())
        tag = f"{repository}:{key.hexdigest()[:16]}"
        try:
            client.images.get(tag)
            return tag
        except Exception:  # noqa: BLE001 - not built yet
            pass
        with tempfile.TemporaryDirectory() as folder:
            context = Path(folder)
            (context / "Dockerfile").write_text(dockerfile)
            fetch = [str(ROOT / "sandboxes/images/fetch_debs.sh"), str(context / "debs"), BASE]
            done = subprocess.run(
                [*fetch, *debs], capture_output=True, text=True, timeout=600, check=False
            )
            if done.returncode != 0:
                missing("Debian's packages", f"fetch_debs.sh failed: {done.stderr.strip()[-500:]}")
            for name, (data, mode) in files().items():
                (context / name).write_bytes(data)
                (context / name).chmod(mode)
            client.images.build(path=folder, tag=tag, network_mode="none", rm=True)
        for image in client.images.list(name=repository):  # earlier builds, unless in use
            for old in image.tags:
                if old != tag:
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(old)
        return tag
    finally:
        client.close()


def tool_image() -> str:
    """The image's tag, built first if the engine does not have it."""

    def files() -> dict[str, tuple[bytes, int]]:
        with zipfile.ZipFile(io.BytesIO(_uv_wheel())) as wheel:
            uv = wheel.read(f"uv-{UV_VERSION}.data/scripts/uv")
        return {
            "uv": (uv, 0o755),
            "npm": (NPM_WRAPPER.encode(), 0o755),
            "npm.tgz": (_npm_tarball(), 0o644),
        }

    pinned = f"{NPM_WRAPPER}{UV_SHA256}{NPM_INTEGRITY}"
    return _built(REPOSITORY, DOCKERFILE, DEBS, pinned, files)


RUST_REPOSITORY = "bosun-test-rust"
RUST_DEBS = ("cargo-web",)
"""Debian bookworm's newer Rust (cargo and rustc 1.96 from bookworm-security, which conflicts
with ``cargo``): a cargo of today, with the sparse index and the last-use database."""
RUST_DOCKERFILE = f"""FROM {BASE}
USER root
COPY debs/ /tmp/debs/
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
USER 1000:1000
"""


def rust_image() -> str:
    """The agent image with Debian's ``cargo-web`` (cargo 1.96), built once per machine (about
    20 s)."""
    return _built(RUST_REPOSITORY, RUST_DOCKERFILE, RUST_DEBS, "", dict)


if __name__ == "__main__":
    print(tool_image(), rust_image(), file=sys.stdout)
