"""The sandbox image of a run: the repository's own (``image:`` in ``.github/bosun.yml``), else
its dev container's (``image`` or ``build`` of the default branch's devcontainer.json), else the
profile's.

An image is one the operator allows, made present by the pull rule, or one built from a
Dockerfile of the default branch (``sandboxes.repoimage``). A build's ``RUN`` steps reach the
network through the run's egress proxy — the setup phase's allowlist, requests logged as
``egress`` events with phase ``build``, refused hosts listed on the PR and the check run — or
have no network at all when the run's allowlist is empty.

``image:`` is the repository's policy: the start of a run already refused a repository whose
image is not allowed (one comment on the issue, no run: ``jobs.deliveries.process``); this
checks again for runs started elsewhere (API, CLI, dashboard, a retry after the operator
narrowed the list) and fails them saying why, as it fails a run whose image cannot be built.
A dev container is not Bosun's policy file: whatever keeps its image from being used (not
allowed, builds off, a failed build), the run goes on with the profile's image and says why
(a ``policy`` event and the ``image`` row of the status comment and check run).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from bot.agents.egress import (
    EGRESS_MOUNT,
    PROXY_PORT,
    EgressProxy,
    forwarder_argv,
    socket_dir,
)
from bot.db.models import Repository
from bot.domain.devcontainer import Devcontainer
from bot.domain.display import shown
from bot.domain.images import (
    ImageRefusal,
    base_problem,
    devcontainer_problem,
    dockerfile_bases,
    refused_build,
    refused_image,
)
from bot.domain.repoconfig import ImageBuildConfig, RepoConfig
from bot.forge.port import Forge
from bot.settings import Settings
from jobs.context import JobContext
from jobs.run.base import StepFailed
from jobs.run.setup import SetupSteps
from sandboxes.docker import DockerBackend
from sandboxes.errors import ImageNotFound, SandboxError
from sandboxes.git import run_git
from sandboxes.repoimage import (
    BuildNetwork,
    BuildRequest,
    BuiltImage,
    ImageBuildError,
    build,
    ensure_present,
)
from sandboxes.spec import BindMount, SandboxSpec

log = structlog.get_logger("jobs.run.image")

Emit = Callable[[str, dict[str, Any]], Awaitable[Any]]

POLICY_FILE = ".github/bosun.yml"

_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _bytes(size: str) -> int:
    size = size.strip().lower()
    unit = size[-1] if size[-1] in _UNITS else "b"
    return int(float(size.rstrip("bkmg")) * _UNITS[unit])


class ImageRefused(Exception):
    """The Dockerfile read from the mirror cannot be built (its ``FROM`` lines); the message
    says why."""


@dataclass(frozen=True)
class Wanted:
    """A Dockerfile build, wherever it was asked for."""

    dockerfile: str
    context: str
    source: str
    """``.github/bosun.yml`` or the devcontainer.json's path."""
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None


@dataclass(frozen=True)
class Chosen:
    """The image a run uses instead of its profile's, and the ``image`` row's note."""

    image: str
    note: str


async def image_refusal(
    settings: Settings, port: Forge, config: RepoConfig, default_branch: str
) -> ImageRefusal | None:
    """Why the repository's ``image:`` cannot be used, or None (no ``image:``, or allowed).
    A Dockerfile is read from the default branch to check its ``FROM`` images."""
    sandbox = settings.sandbox
    wanted = config.image
    if wanted is None:
        return None
    if isinstance(wanted, str):
        return refused_image(wanted, sandbox.allowed_images)
    if not sandbox.repo_dockerfiles:
        return refused_build(wanted.dockerfile, False, [], sandbox.allowed_images)
    text = await port.file_text(wanted.dockerfile, default_branch)
    if text is None:
        return ImageRefusal(
            wanted.dockerfile,
            f"`image.dockerfile` names `{wanted.dockerfile}`, which is not on `{default_branch}`.",
        )
    bases = dockerfile_bases(text)
    return refused_build(wanted.dockerfile, True, bases, sandbox.allowed_images)


async def repository_image(
    bosun: JobContext,
    port: Forge,
    repository: Repository,
    config: RepoConfig,
    emit: Emit,
    *,
    network: BuildNetwork | None = None,
) -> str | None:
    """The image this run's sandbox uses instead of its profile's, or None."""
    chosen = await choose_repository_image(bosun, port, repository, config, emit, network)
    return chosen.image if chosen is not None else None


async def choose_repository_image(
    bosun: JobContext,
    port: Forge,
    repository: Repository,
    config: RepoConfig,
    emit: Emit,
    network: BuildNetwork | None,
) -> Chosen | None:
    """``image:`` of ``.github/bosun.yml``, allowed and present or built; anything in the way
    fails the run (``StepFailed``) saying why."""
    if config.image is None:
        return None
    backend = bosun.backend
    settings = bosun.settings
    refusal = await image_refusal(settings, port, config, repository.default_branch)
    if refusal is not None:
        await emit("policy", {"rule": "image", "decision": "refuse", "image": refusal.image})
        raise StepFailed(refusal.message)
    if not isinstance(backend, DockerBackend):
        if isinstance(config.image, str):
            return Chosen(config.image, f"{shown(config.image, code=True)} ({POLICY_FILE})")
        return None
    allowed = settings.sandbox.allowed_images
    try:
        if isinstance(config.image, str):
            await ensure_present(backend.client, config.image, settings.sandbox.image_pull)
            await emit("policy", {"rule": "image", "decision": "allow", "image": config.image})
            return Chosen(config.image, f"{shown(config.image, code=True)} ({POLICY_FILE})")
        wanted = Wanted(config.image.dockerfile, config.image.context, POLICY_FILE)

        def check(text: str | None, bases: list[str]) -> str | None:
            refused = refused_build(wanted.dockerfile, True, bases, allowed)
            return refused.message if refused is not None else None

        built = await build_image(bosun, port, repository, wanted, emit, network, check)
        return Chosen(built.tag, _built_note(built, wanted))
    except ImageRefused as exc:
        await emit("policy", {"rule": "image", "decision": "refuse", "image": wanted.dockerfile})
        raise StepFailed(str(exc)) from exc
    except ImageBuildError as exc:
        raise StepFailed(
            f"the repository's sandbox image could not be built: {exc}", detail=exc.log or None
        ) from exc
    except ImageNotFound as exc:
        raise StepFailed(f"the repository's sandbox image is not available: {exc}") from exc
    except SandboxError as exc:
        raise StepFailed(f"the repository's sandbox image could not be prepared: {exc}") from exc


def _built_note(built: BuiltImage, wanted: Wanted) -> str:
    how = f"built in {built.seconds:.1f}s" if built.built else "cached"
    network = "network through the egress proxy" if built.network else "no network"
    return (
        f"`{built.tag}` from {shown(wanted.dockerfile, code=True)} ({wanted.source}; {how}, "
        f"{network})"
    )


async def build_image(
    bosun: JobContext,
    port: Forge,
    repository: Repository,
    wanted: Wanted,
    emit: Emit,
    network: BuildNetwork | None,
    check: Callable[[str | None, list[str]], str | None],
) -> BuiltImage:
    """Build ``wanted`` from the default branch's head in the worker's mirror. ``check`` sees
    the Dockerfile as the build will read it (None: not there) and its ``FROM`` images, and
    says why it may not be built (raised as ``ImageRefused``)."""
    backend = bosun.backend
    assert isinstance(backend, DockerBackend)
    settings = bosun.settings.sandbox
    mirrors = bosun.workspaces.mirrors
    auth = await port.git_auth_header()
    branch = repository.default_branch
    async with mirrors.locked(repository.full_name) as mirror:
        await mirrors.update_locked(mirror, port.clone_url(), auth_header=auth, branches=(branch,))
        head = await run_git(["--git-dir", str(mirror), "rev-parse", f"refs/heads/{branch}"])
        commit = head.stdout.decode().strip()
        # The Dockerfile as the build will read it: its FROM lines are checked again here.
        blob = await run_git(
            ["--git-dir", str(mirror), "cat-file", "blob", f"{commit}:{wanted.dockerfile}"],
            check=False,
        )
        text = blob.stdout.decode(errors="replace") if blob.returncode == 0 else None
        bases = dockerfile_bases(text or "")
        refusal = check(text, bases)
        if refusal is not None:
            raise ImageRefused(refusal)
        request = BuildRequest(
            repo=repository.full_name,
            mirror=mirror,
            commit=commit,
            dockerfile=wanted.dockerfile,
            context=wanted.context,
            bases=tuple(bases),
            memory_bytes=_bytes(settings.image_build_memory),
            timeout_seconds=settings.image_build_timeout_seconds,
            args=wanted.args,
            target=wanted.target,
        )
        built = await build(backend.client, request, network)
    await emit(
        "policy",
        {
            "rule": "image",
            "decision": "build" if built.built else "cached",
            "image": built.tag,
            "dockerfile": wanted.dockerfile,
            "source": wanted.source,
            "commit": request.commit,
            "network": "proxy" if built.network else "none",
            "seconds": built.seconds,
        },
    )
    log.info(
        "repo_image_ready",
        tag=built.tag,
        built=built.built,
        seconds=built.seconds,
        network=built.network,
    )
    return built


class ImageSteps(SetupSteps):
    """Choosing the run's image (before the sandbox is made), building it when it must be."""

    async def _choose_image(self) -> None:
        """The repository's image, else its dev container's, else the profile's; the sandbox
        is made from it."""
        chosen: Chosen | None
        if self.config.image is not None:
            network = (
                await self._build_network()
                if isinstance(self.config.image, ImageBuildConfig)
                else None
            )
            chosen = await choose_repository_image(
                self.bosun, self.port, self.repository, self.config, self.events.emit, network
            )
        else:
            chosen = await self._devcontainer_image()
        if chosen is None:
            return
        self.profile = self.profile.model_copy(update={"image": chosen.image})
        self.view.phase("image", "done", chosen.note)
        self.reporter.changed()

    def _profile_image(self) -> str:
        return self.profile.image or self.settings.sandbox.image

    async def _devcontainer_image(self) -> Chosen | None:
        """The dev container's image when the operator's rules let the run use it; otherwise
        None, and the run says why."""
        devcontainer = await self._devcontainer()
        if devcontainer is None:
            if self.devcontainer_problem is not None and self.config.setup is not None:
                await self._default_image(self.devcontainer_problem, None)  # setup says nothing
            return None
        if devcontainer.image is None and devcontainer.build is None and not devcontainer.compose:
            return None
        sandbox = self.settings.sandbox
        problem = devcontainer_problem(
            devcontainer, sandbox.repo_dockerfiles, sandbox.allowed_images
        )
        if problem is not None:
            await self._default_image(problem, devcontainer)
            return None
        backend = self.bosun.backend
        source = devcontainer.path
        try:
            if devcontainer.build is None:
                image = devcontainer.image
                assert image is not None
                if isinstance(backend, DockerBackend):
                    await ensure_present(backend.client, image, sandbox.image_pull)
                decision = {"rule": "image", "decision": "allow", "image": image, "source": source}
                await self.events.emit("policy", decision)
                return Chosen(image, f"{shown(image, code=True)} (the dev container's, {source})")
            if not isinstance(backend, DockerBackend):
                return None
            spec = devcontainer.build
            wanted = Wanted(spec.dockerfile, spec.context, source, spec.args, spec.target)
            allowed = sandbox.allowed_images

            def check(text: str | None, bases: list[str]) -> str | None:
                if text is None:
                    return (
                        f"the dev container's Dockerfile {shown(wanted.dockerfile, code=True)} "
                        f"({source}) is not on `{self.repository.default_branch}`"
                    )
                found = base_problem(wanted.dockerfile, bases, allowed)
                return found.message if found is not None else None

            network = await self._build_network()
            built = await build_image(
                self.bosun, self.port, self.repository, wanted, self.events.emit, network, check
            )
            return Chosen(built.tag, _built_note(built, wanted))
        except ImageRefused as exc:
            await self._default_image(str(exc).rstrip("."), devcontainer)
        except ImageBuildError as exc:
            if exc.log:
                await self.artifact("image-build", exc.log)
            await self._default_image(
                f"the dev container's image could not be built: {exc}".replace(
                    "the run's error artifact", "the run's `image-build` artifact"
                ),
                devcontainer,
            )
        except (ImageNotFound, SandboxError) as exc:
            await self._default_image(
                f"the dev container's image is not available: {exc}", devcontainer
            )
        return None

    async def _default_image(self, why: str, devcontainer: Devcontainer | None) -> None:
        """The dev container's image is not used: the run goes on with the profile's image and
        says why (a ``policy`` event, the ``image`` row)."""
        note = f"{why}; the run uses the profile's image `{self._profile_image()}`"
        wanted = None
        if devcontainer is not None:
            wanted = devcontainer.build.dockerfile if devcontainer.build else devcontainer.image
        await self.events.emit(
            "policy",
            {
                "rule": "image",
                "decision": "default",
                "source": devcontainer.path if devcontainer is not None else None,
                "image": wanted,
                "message": note,
            },
        )
        self.view.phase("image", "skipped", note)
        self.reporter.changed()

    async def _build_network(self) -> BuildNetwork | None:
        """The build's network: the run's egress proxy (the setup phase's allowlist) behind a
        forwarder container; None (no network) when the allowlist is empty or the backend is
        not Docker."""
        backend = self.bosun.backend
        policy = await self._egress_policy()
        if not policy.rules or not isinstance(backend, DockerBackend):
            return None
        sandbox = self.settings.sandbox
        folder = self._run_dir() / "build"
        directory = socket_dir(folder)
        spec = SandboxSpec(
            run_id=self.run.id,
            image=sandbox.image,
            workspace=folder,  # not mounted: the forwarder has no workspace
            user=sandbox.user,
            seccomp_profile=sandbox.seccomp_profile,
            timeout_seconds=sandbox.image_build_timeout_seconds,
            mounts=(BindMount(source=directory, target=EGRESS_MOUNT),),
            labels={"repo": self.repository.full_name.replace("/", "_")},
            memory="128m",  # the forwarder's limits: Bosun's relay and nothing else
            cpus=0.5,
            pids=64,
            tmpfs_size="16m",
        )
        _uid, gid = await backend.host_ids(spec)
        egress = self.settings.egress
        proxy = EgressProxy(
            self.run.id,
            directory,
            policy,
            on_request=self._on_build_egress,
            sandbox_gid=gid,
            max_connections=egress.max_connections,
            connect_timeout=egress.connect_timeout_seconds,
        )
        self.build_egress = proxy

        @contextlib.asynccontextmanager
        async def serve() -> AsyncIterator[None]:
            await proxy.start()
            try:
                yield
            finally:
                await proxy.stop()
                await asyncio.to_thread(shutil.rmtree, folder, True)
                self.view.egress_denied = self._denied()
                self.reporter.changed()

        lifetime = str(sandbox.image_build_timeout_seconds + 120)  # removed long before
        argv = tuple(forwarder_argv(["sleep", lifetime]))
        return BuildNetwork(spec=spec, argv=argv, port=PROXY_PORT, serve=serve)
