"""Per-repository sandbox images on the worker's engine: an allowed image made present by the
operator's pull rule, or an image built from a Dockerfile of the repository's default branch.

A build:

* reads its context from the host's bare mirror at one commit (``git archive`` of a tree: data
  only, no checkout, no hooks, nothing the agent wrote — the default branch is what people
  merged);
* runs with no pull, a memory limit and a time limit; the build's own containers are removed
  whatever happens;
* has the network ``BuildNetwork`` gives it, else none: its ``RUN`` steps join the network
  namespace of a *forwarder container* (the hardened sandbox flags, network ``none``, running
  only the in-sandbox forwarder, which relays ``127.0.0.1:<port>`` to the run's egress proxy
  through a Unix socket), and get Docker's predefined proxy build arguments pointing there, so
  ``pip``, ``apt``, ``npm``, ``curl`` reach what the proxy allows and nothing else. The forwarder
  and every container that joined it are removed when the build ends, fails, times out or is
  cancelled;
* reuses layers of the repository's own earlier images only (``own_images``), never another
  repository's;
* is cached by content: the image is tagged ``bosun-repo/<owner>-<name>:<digest>`` where the
  digest covers the context's git tree id, the Dockerfile's path, the ids of the base images,
  the build arguments and target, and whether the build had a network, so the next run of the
  same content finds the tag and builds nothing.

Whatever the image says (``USER root``, ``ENTRYPOINT``...), the sandbox runs it with the
hardened flags of ``DockerBackend.create_kwargs``: the spec's non-root user, no capabilities,
read-only root, network none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests.exceptions

from sandboxes.docker import DockerBackend
from sandboxes.errors import ImageNotFound, SandboxError
from sandboxes.git import run_git
from sandboxes.spec import WORKSPACE_MOUNT, SandboxSpec

PullRule = Literal["never", "missing", "always"]
BUILD_LOG_LINES = 40
"""Lines of a failed build's output kept for the run's error artifact."""
MAX_CONTEXT_BYTES = 512 * 1024 * 1024
"""Largest build context (the archived folder) sent to the engine."""
DIGEST_VERSION = "bosun-repo-image/2"
"""Changes when what an image is built from changes meaning (2: builds may have a network)."""
CACHE_SOURCES = 8
"""How many of a repository's latest images its build may reuse layers of."""
FORWARDER_READY_SECONDS = 15.0
"""How long the forwarder container may take to listen."""


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
    args: tuple[tuple[str, str], ...] = ()
    """Build arguments (a dev container's ``build.args``)."""
    target: str | None = None
    """The stage to build (a dev container's ``build.target``)."""


@dataclass(frozen=True)
class BuildNetwork:
    """The network of a build: ``RUN`` steps join the network namespace of a forwarder
    container started from ``spec`` (its image, user, limits and the bind of the proxy's socket
    folder; never its workspace, runtime or command) running ``argv``, the forwarder that
    listens on ``127.0.0.1:port``. ``serve`` keeps the host side (the egress proxy) listening
    while the forwarder runs."""

    spec: SandboxSpec
    argv: tuple[str, ...]
    port: int
    serve: Callable[[], AbstractAsyncContextManager[object]]

    def build_args(self) -> dict[str, str]:
        """Docker's predefined proxy arguments: usable by ``RUN`` without an ``ARG`` line and
        kept out of the image's history and configuration."""
        url = f"http://127.0.0.1:{self.port}"
        return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url}


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    built: bool
    """False when the content-addressed tag was there already (nothing was built)."""
    seconds: float
    network: bool = False
    """Whether the build's ``RUN`` steps had the egress proxy (digest: the cached image's)."""


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


def content_digest(
    tree: str,
    dockerfile: str,
    base_ids: Sequence[str],
    *,
    network: bool = False,
    args: Sequence[tuple[str, str]] = (),
    target: str | None = None,
) -> str:
    """What the image is built from, as one digest: same digest, same image."""
    parts = [
        DIGEST_VERSION,
        tree,
        dockerfile,
        *base_ids,
        f"network={'proxy' if network else 'none'}",
    ]
    parts += [f"target={target or ''}", *(f"arg:{name}={value}" for name, value in args)]
    text = "\n".join(part.replace("\n", " ") for part in parts)
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


async def build(
    client: docker.DockerClient, request: BuildRequest, network: BuildNetwork | None = None
) -> BuiltImage:
    """The repository's image, built unless its content-addressed tag exists already; with
    ``network``, its ``RUN`` steps reach what the run's egress proxy allows."""
    t0 = time.monotonic()
    inner = dockerfile_in_context(request.dockerfile, request.context)
    if inner is None:
        raise ImageBuildError(
            f"the Dockerfile `{request.dockerfile}` is outside the build context "
            f"`{request.context}`"
        )
    base_ids = [await ensure_present(client, base, "never") for base in request.bases]
    tree = await context_tree(request)
    digest = content_digest(
        tree,
        request.dockerfile,
        base_ids,
        network=network is not None,
        args=request.args,
        target=request.target,
    )
    tag = repo_tag(request.repo, digest)

    def existing() -> str | None:
        try:
            return str(client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None

    found = await asyncio.to_thread(existing)
    if found is not None:
        seconds = round(time.monotonic() - t0, 3)
        return BuiltImage(tag, found, built=False, seconds=seconds, network=network is not None)
    archive = await context_archive(request, tree)
    if network is None:
        image_id, lines = await _run_build(client, request, inner, tag, archive, "none", {})
    else:
        async with network.serve(), forwarder(client, network) as container:
            image_id, lines = await _run_build(
                client, request, inner, tag, archive, f"container:{container}", network.build_args()
            )
    if image_id is None:
        raise ImageBuildError(
            f"building the image from `{request.dockerfile}` failed; the build's last lines "
            "are in the run's error artifact",
            build_log(lines),
        )
    seconds = round(time.monotonic() - t0, 3)
    return BuiltImage(tag, image_id, built=True, seconds=seconds, network=network is not None)


async def _run_build(
    client: docker.DockerClient,
    request: BuildRequest,
    inner: str,
    tag: str,
    archive: bytes,
    network_mode: str,
    proxy_args: dict[str, str],
) -> tuple[str | None, list[dict[str, Any]]]:
    """Run the engine's build; ``(image id or None when it failed, its last output lines)``."""

    def run() -> tuple[str | None, list[dict[str, Any]]]:
        lines: list[dict[str, Any]] = []
        image_id = None
        stream = client.api.build(
            fileobj=io.BytesIO(archive),
            custom_context=True,
            dockerfile=inner,
            tag=tag,
            network_mode=network_mode,
            buildargs={**dict(request.args), **proxy_args},
            use_config_proxy=False,  # never the worker's own proxy settings
            cache_from=own_images(client, request.repo),
            target=request.target,
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
            return await asyncio.to_thread(run)
    except TimeoutError as exc:
        raise ImageBuildError(
            f"building the image from `{request.dockerfile}` took longer than "
            f"{request.timeout_seconds:.0f} s"
        ) from exc
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ImageBuildError(f"the engine refused the build: {exc}") from exc


def own_images(client: docker.DockerClient, repo: str) -> list[str]:
    """The repository's own images (its latest ``CACHE_SOURCES``), the only ones whose layers
    its build may reuse. Given as the build's cache sources, the engine's builder takes a
    cached step only from their history, never another repository's layer: a ``RUN`` step's
    layer is cached by its text alone, and what it fetched through the proxy may differ from
    one repository to the next. With none (a repository's first build) a name that does not
    exist stands in, so nothing is reused."""
    name = repo_tag(repo, "x").split(":", 1)[0]
    found = sorted(
        client.images.list(name=name),
        key=lambda image: str(image.attrs.get("Created")),
        reverse=True,
    )
    tags = [tag for image in found for tag in image.tags if tag.startswith(f"{name}:")]
    return tags[:CACHE_SOURCES] or [f"{name}:none"]


@contextlib.asynccontextmanager
async def forwarder(client: docker.DockerClient, network: BuildNetwork) -> AsyncIterator[str]:
    """A forwarder container for one build, listening; yields its id. On the way out it is
    removed, then every container that joined its network namespace (a ``RUN`` step still
    running after a failure, a time-out or a cancel): once it is gone no new one can join."""
    name = f"bosun-{network.spec.run_id}-build-{secrets.token_hex(3)}"
    kwargs = DockerBackend().create_kwargs(network.spec, name)
    kwargs["mounts"] = [m for m in kwargs["mounts"] if m.get("Target") != WORKSPACE_MOUNT]
    kwargs.update(
        command=list(network.argv),
        working_dir="/",
        runtime=None,  # runc: a RUN step joins its namespace, where the forwarder must listen
    )
    container_id: str | None = None
    try:
        try:
            created = await asyncio.to_thread(client.containers.create, **kwargs)
            container_id = str(created.id)
            await asyncio.to_thread(client.api.start, container_id)
        except docker.errors.ImageNotFound as exc:
            raise ImageBuildError(
                f"the build's network needs the image `{network.spec.image}` (the forwarder) "
                "on the worker's engine"
            ) from exc
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"the build's network could not be started: {exc}") from exc
        await _listening(client, container_id, network)
        yield container_id
    finally:
        if container_id is not None:
            await asyncio.shield(_remove_forwarder(client, container_id))


async def _listening(client: docker.DockerClient, container_id: str, network: BuildNetwork) -> None:
    """Wait until the forwarder listens on its port (its ``/proc/net/tcp``, read in it)."""
    wanted = f"0100007F:{network.port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + FORWARDER_READY_SECONDS

    def table() -> tuple[str, str]:
        state = client.api.inspect_container(container_id).get("State") or {}
        if not state.get("Running"):
            logs = client.api.logs(container_id, stdout=True, stderr=True, tail=5)
            return "exited", bytes(logs).decode(errors="replace").strip()
        exec_id = client.api.exec_create(
            container_id, ["cat", "/proc/net/tcp"], user=network.spec.user
        )["Id"]
        return "running", bytes(client.api.exec_start(exec_id)).decode(errors="replace")

    while True:
        try:
            state, text = await asyncio.to_thread(table)
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"the build's network could not be started: {exc}") from exc
        if state == "exited":
            raise ImageBuildError(
                "the build's network could not be started: its forwarder stopped "
                f"({text[-300:] or 'no output'}); the image `{network.spec.image}` needs python3"
            )
        if wanted in text:
            return
        if time.monotonic() > deadline:
            raise ImageBuildError(
                f"the build's network could not be started: its forwarder did not listen "
                f"within {FORWARDER_READY_SECONDS:.0f} s"
            )
        await asyncio.sleep(0.05)


async def _remove_forwarder(client: docker.DockerClient, container_id: str) -> None:
    def remove() -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container_id, force=True, v=True)
        for entry in client.api.containers(all=True):
            mode = (entry.get("HostConfig") or {}).get("NetworkMode")
            if mode == f"container:{container_id}":
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.api.remove_container(entry["Id"], force=True, v=True)

    with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
        await asyncio.to_thread(remove)
