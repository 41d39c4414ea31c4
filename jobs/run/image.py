"""The sandbox image of a run, when its repository names one (``image:`` in
``.github/bosun.yml``): an image the operator allows, made present by the pull rule, or one
built from the repository's Dockerfile on its default branch (``sandboxes.repoimage``).

The start of a run already refused a repository whose image is not allowed (one comment on the
issue, no run: ``jobs.deliveries.process``); this checks again for runs started elsewhere (API,
CLI, dashboard, a retry after the operator narrowed the list) and fails them saying why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bot.db.models import Repository
from bot.domain.images import ImageRefusal, dockerfile_bases, refused_build, refused_image
from bot.domain.repoconfig import ImageBuildConfig, RepoConfig
from bot.forge.port import Forge
from bot.settings import Settings
from jobs.context import JobContext
from jobs.run.base import StepFailed
from sandboxes.docker import DockerBackend
from sandboxes.errors import ImageNotFound, SandboxError
from sandboxes.git import run_git
from sandboxes.repoimage import BuildRequest, ImageBuildError, build, ensure_present

log = structlog.get_logger("jobs.run.image")

Emit = Callable[[str, dict[str, Any]], Awaitable[Any]]

_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _bytes(size: str) -> int:
    size = size.strip().lower()
    unit = size[-1] if size[-1] in _UNITS else "b"
    return int(float(size.rstrip("bkmg")) * _UNITS[unit])


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
) -> str | None:
    """The image this run's sandbox uses instead of its profile's, or None."""
    if config.image is None:
        return None
    backend = bosun.backend
    settings = bosun.settings
    refusal = await image_refusal(settings, port, config, repository.default_branch)
    if refusal is not None:
        await emit("policy", {"rule": "image", "decision": "refuse", "image": refusal.image})
        raise StepFailed(refusal.message)
    if not isinstance(backend, DockerBackend):
        return config.image if isinstance(config.image, str) else None
    try:
        if isinstance(config.image, str):
            await ensure_present(backend.client, config.image, settings.sandbox.image_pull)
            await emit("policy", {"rule": "image", "decision": "allow", "image": config.image})
            return config.image
        return await _build(bosun, port, repository, config.image, emit)
    except ImageBuildError as exc:
        raise StepFailed(
            f"the repository's sandbox image could not be built: {exc}", detail=exc.log or None
        ) from exc
    except ImageNotFound as exc:
        raise StepFailed(f"the repository's sandbox image is not available: {exc}") from exc
    except SandboxError as exc:
        raise StepFailed(f"the repository's sandbox image could not be prepared: {exc}") from exc


async def _build(
    bosun: JobContext,
    port: Forge,
    repository: Repository,
    wanted: ImageBuildConfig,
    emit: Emit,
) -> str:
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
        text = blob.stdout.decode(errors="replace") if blob.returncode == 0 else ""
        bases = dockerfile_bases(text)
        refusal = refused_build(wanted.dockerfile, True, bases, settings.allowed_images)
        if refusal is not None:
            await emit("policy", {"rule": "image", "decision": "refuse", "image": refusal.image})
            raise StepFailed(refusal.message)
        request = BuildRequest(
            repo=repository.full_name,
            mirror=mirror,
            commit=commit,
            dockerfile=wanted.dockerfile,
            context=wanted.context,
            bases=tuple(bases),
            memory_bytes=_bytes(settings.image_build_memory),
            timeout_seconds=settings.image_build_timeout_seconds,
        )
        built = await build(backend.client, request)
    await emit(
        "policy",
        {
            "rule": "image",
            "decision": "build" if built.built else "cached",
            "image": built.tag,
            "dockerfile": wanted.dockerfile,
            "commit": request.commit,
            "seconds": built.seconds,
        },
    )
    log.info("repo_image_ready", tag=built.tag, built=built.built, seconds=built.seconds)
    return built.tag
