"""Per-repository sandbox images on the worker's engine: an allowed image made present by the
operator's pull rule, or an image built from a Dockerfile of the repository's default branch.

A build:

* reads its context from the host's bare mirror at one commit (``git archive`` of a tree: data
  only, no checkout, no hooks, nothing the agent wrote — the default branch is what people
  merged);
* runs with network ``none``, no pull, a memory limit and a time limit; the build's own
  containers are removed whatever happens;
* is cached by content: the image is tagged ``bosun-repo/<owner>-<name>:<digest>`` where the
  digest covers the context's git tree id, the Dockerfile's path and the ids of the base
  images, so the next run of the same content finds the tag and builds nothing.

Whatever the image says (``USER root``, ``ENTRYPOINT``...), the sandbox runs it with the
hardened flags of ``DockerBackend.create_kwargs``: the spec's non-root user, no capabilities,
read-only root, network none.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests.exceptions

from sandboxes.errors import ImageNotFound, SandboxError
from sandboxes.git import run_git

PullRule = Literal["never", "missing", "always"]
BUILD_LOG_LINES = 40
"""Lines of a failed build's output kept for the run's error artifact."""
MAX_CONTEXT_BYTES = 512 * 1024 * 1024
"""Largest build context (the archived folder) sent to the engine."""


class ImageBuildError(SandboxError):
    """A repository image could not be built; the message says why (the build's last lines
    are in ``log``, for the run's error artifact only: they quote repository data)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class BuildRequest:
    """What to build: ``dockerfile`` and ``context`` are repository paths at ``commit`` of the
    mirror ``mirror`` (a bare repository on the host)."""

    repo: str
    mirror: Path
    commit: str
    dockerfile: str
    context: str
    bases: tuple[str, ...]
    memory_bytes: int
    timeout_seconds: float


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    built: bool
    """False when the content-addressed tag was there already (nothing was built)."""
    seconds: float


def repo_tag(repo: str, digest: str) -> str:
    """``bosun-repo/<owner>-<name>:<digest>``, lower-case, only characters a tag allows."""
    name = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-")[:100] or "repo"
    return f"bosun-repo/{name}:{digest[:32]}"


def dockerfile_in_context(dockerfile: str, context: str) -> str | None:
    """The Dockerfile's path relative to the context folder, or None when it lies outside."""
    context = context.strip("/")
    if context in ("", "."):
        return dockerfile
    prefix = context + "/"
    return dockerfile[len(prefix) :] if dockerfile.startswith(prefix) else None


async def context_tree(request: BuildRequest) -> str:
    """The git tree id of the context folder at the commit (raises when it does not exist)."""
    folder = request.context.strip("/")
    spec = f"{request.commit}^{{tree}}" if folder in ("", ".") else f"{request.commit}:{folder}"
    git_dir = ["--git-dir", str(request.mirror)]
    result = await run_git([*git_dir, "rev-parse", "--verify", "--quiet", spec], check=False)
    tree = result.stdout.decode().strip()
    kind = await run_git([*git_dir, "cat-file", "-t", tree or "0" * 40], check=False)
    if result.returncode != 0 or kind.stdout.decode().strip() != "tree":
        raise ImageBuildError(
            f"the build context `{request.context}` is not a folder on the default branch"
        )
    return tree


async def context_archive(request: BuildRequest, tree: str) -> bytes:
    """The context folder as a tar (``git archive`` of its tree: data, no checkout)."""
    result = await run_git(
        ["--git-dir", str(request.mirror), "archive", "--format=tar", tree],
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise ImageBuildError("the build context could not be read from the repository")
    if len(result.stdout) > MAX_CONTEXT_BYTES:
        raise ImageBuildError(
            f"the build context is larger than {MAX_CONTEXT_BYTES // 1024**2} MB; point "
            "`image.context` at a smaller folder"
        )
    return bytes(result.stdout)


def content_digest(tree: str, dockerfile: str, base_ids: Sequence[str]) -> str:
    """What the image is built from, as one digest: same digest, same image."""
    text = "\n".join(["bosun-repo-image/1", tree, dockerfile, *base_ids])
    return hashlib.sha256(text.encode()).hexdigest()


def build_log(lines: list[dict[str, Any]]) -> str:
    text = "".join(str(item.get("stream") or item.get("error") or "") for item in lines)
    return "\n".join(text.splitlines()[-BUILD_LOG_LINES:])


async def ensure_present(client: docker.DockerClient, reference: str, pull: PullRule) -> str:
    """Make ``reference`` present on the engine as the operator's pull rule says; returns its
    image id. Raises ``ImageNotFound`` with what to do when it is not there."""

    def lookup() -> str | None:
        try:
            return str(client.images.get(reference).id)
        except docker.errors.ImageNotFound:
            return None

    def do_pull() -> str:
        return str(client.images.pull(reference).id)

    found = None if pull == "always" else await asyncio.to_thread(lookup)
    if found is not None:
        return found
    if pull == "never":
        raise ImageNotFound(
            f"the image `{reference}` is not on this worker's engine and "
            "`sandbox.image_pull` is `never`: an operator pulls or loads it "
            f"(`docker pull {reference}`), or sets `sandbox.image_pull` to `missing`"
        )
    try:
        return await asyncio.to_thread(do_pull)
    except docker.errors.APIError as exc:
        raise ImageNotFound(f"the image `{reference}` could not be pulled: {exc}") from exc


async def build(client: docker.DockerClient, request: BuildRequest) -> BuiltImage:
    """The repository's image, built unless its content-addressed tag exists already."""
    t0 = time.monotonic()
    inner = dockerfile_in_context(request.dockerfile, request.context)
    if inner is None:
        raise ImageBuildError(
            f"the Dockerfile `{request.dockerfile}` is outside the build context "
            f"`{request.context}`"
        )
    base_ids = [await ensure_present(client, base, "never") for base in request.bases]
    tree = await context_tree(request)
    tag = repo_tag(request.repo, content_digest(tree, request.dockerfile, base_ids))

    def existing() -> str | None:
        try:
            return str(client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None

    found = await asyncio.to_thread(existing)
    if found is not None:
        return BuiltImage(tag, found, built=False, seconds=round(time.monotonic() - t0, 3))
    archive = await context_archive(request, tree)

    def run_build() -> tuple[str | None, list[dict[str, Any]]]:
        lines: list[dict[str, Any]] = []
        image_id = None
        stream = client.api.build(
            fileobj=io.BytesIO(archive),
            custom_context=True,
            dockerfile=inner,
            tag=tag,
            network_mode="none",
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            timeout=int(request.timeout_seconds),
            container_limits={"memory": request.memory_bytes, "memswap": request.memory_bytes},
            labels={"bosun.repo-image": request.repo[:200]},
        )
        for item in stream:
            lines.append(item)
            del lines[:-200]
            if "error" in item:
                return None, lines
            aux = item.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                image_id = aux["ID"]
        return image_id, lines

    try:
        async with asyncio.timeout(request.timeout_seconds):
            image_id, lines = await asyncio.to_thread(run_build)
    except TimeoutError as exc:
        raise ImageBuildError(
            f"building the image from `{request.dockerfile}` took longer than "
            f"{request.timeout_seconds:.0f} s"
        ) from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ImageBuildError(f"the engine refused the build: {exc}") from exc
    if image_id is None:
        raise ImageBuildError(
            f"building the image from `{request.dockerfile}` failed; the build's last lines "
            "are in the run's error artifact",
            build_log(lines),
        )
    return BuiltImage(tag, image_id, built=True, seconds=round(time.monotonic() - t0, 3))
