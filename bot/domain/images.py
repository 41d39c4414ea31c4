"""Per-repository images (SPEC §6): which image a repository may run its sandboxes on.
Pure: the repository's ``image:`` and the operator's allowlist come in as arguments.

An allowlist entry is an exact image reference (``ghcr.io/acme/agent:1.2``; without a tag or
digest it allows every tag and digest of that image) or a prefix ending in ``*``
(``ghcr.io/acme/*``). References are compared as written after Docker's normalisation of the
implicit registry and library (``python`` is ``docker.io/library/python``), so ``python`` on
the list never lets ``python-evil`` or ``evil/python`` through.

A repository Dockerfile is allowed only when the operator turned builds on, and then every
``FROM`` it names must itself be allowed: a build can copy anything out of its base image, so
the base is what the operator vouches for.

A dev container's image (``image`` or ``build`` of its devcontainer.json, used when
``.github/bosun.yml`` names no ``image:``) follows the same rules, but it is not Bosun's policy
file: what keeps it from being used is a note on the run, which goes on with the profile's
image, not a refusal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.domain.devcontainer import Devcontainer
from bot.domain.display import shown

SETTING = "sandbox.allowed_images"
SETTING_ENV = "BOSUN_SANDBOX__ALLOWED_IMAGES"
BUILD_SETTING = "sandbox.repo_dockerfiles"
BUILD_SETTING_ENV = "BOSUN_SANDBOX__REPO_DOCKERFILES"

_REFERENCE = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def normalise(reference: str) -> str:
    """``reference`` with Docker's implicit registry and ``library/`` spelled out."""
    first, slash, _rest = reference.partition("/")
    if not slash:
        return f"docker.io/library/{reference}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{reference}"
    return reference


def _name(reference: str) -> str:
    """The repository part of a reference: without ``:tag`` and ``@digest``."""
    without_digest = reference.split("@", 1)[0]
    head, _, last = without_digest.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def valid_reference(reference: str) -> bool:
    return bool(_REFERENCE.match(reference)) and len(reference) <= 255


def image_allowed(reference: str, allowlist: Sequence[str]) -> bool:
    """Whether ``reference`` matches an entry of ``allowlist``."""
    if not valid_reference(reference):
        return False
    wanted = normalise(reference)
    for entry in allowlist:
        if entry.endswith("*"):
            stem = entry[:-1]
            registry_only = "/" not in stem and ("." in stem or ":" in stem)
            if wanted.startswith(stem if registry_only else normalise(stem)):
                return True
            continue
        allowed = normalise(entry)
        if wanted == allowed:
            return True
        if _name(allowed) == allowed and _name(wanted) == allowed:
            return True  # an entry without tag or digest: any tag or digest of that image
    return False


@dataclass(frozen=True)
class ImageRefusal:
    """Why a repository's image is not used, said once on the issue."""

    image: str
    message: str


def refused_image(image: str, allowlist: Sequence[str]) -> ImageRefusal | None:
    """None when the repository may run on ``image``; else what to tell its people."""
    if image_allowed(image, allowlist):
        return None
    if not valid_reference(image):
        return ImageRefusal(
            image,
            f"`image: {image[:200]}` in `.github/bosun.yml` is not a valid image reference "
            "(e.g. `ghcr.io/acme/agent:1.2`). Fix it on the default branch, then try again.",
        )
    return ImageRefusal(
        image,
        f"This repository asks for the sandbox image `{image}` (`image:` in "
        "`.github/bosun.yml`), which this Bosun server does not allow, so no run starts. An "
        f"operator allows it by adding it, or a prefix such as `{_example_prefix(image)}`, to "
        f"`{SETTING}` (`{SETTING_ENV}`); or remove `image:` to use the default image.",
    )


def refused_build(
    dockerfile: str, enabled: bool, bases: Sequence[str], allowlist: Sequence[str]
) -> ImageRefusal | None:
    """None when the repository may build its image from ``dockerfile`` (whose ``FROM``
    images are ``bases``); else what to tell its people."""
    if not enabled:
        return ImageRefusal(
            dockerfile,
            f"This repository asks for a sandbox image built from `{dockerfile}` (`image:` in "
            "`.github/bosun.yml`), but this Bosun server does not build repository images, so "
            f"no run starts. An operator allows it with `{BUILD_SETTING}` "
            f"(`{BUILD_SETTING_ENV}=true`); or remove `image:` to use the default image.",
        )
    problem = base_problem(dockerfile, bases, allowlist)
    if problem is None:
        return None
    if problem.base is not None:
        return ImageRefusal(
            dockerfile,
            f"`{dockerfile}` builds from `{problem.base[:200]}`, which this Bosun server does not "
            "allow, so no run starts. An operator allows it by adding it, or a prefix such "
            f"as `{_example_prefix(problem.base)}`, to `{SETTING}` (`{SETTING_ENV}`).",
        )
    return ImageRefusal(dockerfile, problem.message)


@dataclass(frozen=True)
class BaseProblem:
    message: str
    base: str | None = None
    """The base image that is not allowed (None: the ``FROM`` lines themselves are the
    problem)."""


def base_problem(
    dockerfile: str, bases: Sequence[str], allowlist: Sequence[str]
) -> BaseProblem | None:
    """What keeps the Dockerfile's ``FROM`` images (``bases``) from being built, or None."""
    if not bases:
        return BaseProblem(f"`{dockerfile}` has no `FROM` line Bosun can read.")
    for base in bases:
        if "$" in base:
            return BaseProblem(
                f"`{dockerfile}` builds `FROM {base[:200]}`: Bosun needs the base image "
                "written out (no build arguments), to check it against the allowed images."
            )
        if not image_allowed(base, allowlist):
            return BaseProblem(
                f"`{dockerfile}` builds from {shown(base[:200], code=True)}, which this Bosun "
                f"server does not allow (an operator adds it, or a prefix such as "
                f"{shown(_example_prefix(base), code=True)}, to `{SETTING}`)",
                base,
            )
    return None


PROXY_ARGS = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"})
"""Docker's predefined proxy build arguments (any case): Bosun sets the proxy of a build."""


def devcontainer_problem(
    devcontainer: Devcontainer, builds: bool, allowlist: Sequence[str]
) -> str | None:
    """Why the dev container's image cannot be used (before its Dockerfile is read), or None.
    The caller adds that the run uses the profile's image instead."""
    where = devcontainer.path
    if devcontainer.compose:
        return f"`{where}` describes a Docker Compose dev container, which Bosun does not build"
    build = devcontainer.build
    if build is not None:
        if not builds:
            return (
                f"the dev container (`{where}`) builds its image from "
                f"{shown(build.dockerfile, code=True)}, but this Bosun server does not build "
                f"repository images (an operator allows it with `{BUILD_SETTING}`)"
            )
        for name, value in build.args:
            if name.lower() in PROXY_ARGS:
                return (
                    f"`{where}` sets the build argument `{name}`: a build's proxy is Bosun's "
                    "(its egress proxy), not the repository's"
                )
            if "${" in value:
                return (
                    f"`{where}` build argument `{name}` uses a dev container variable "
                    "(`${...}`), which Bosun does not substitute"
                )
        return None
    image = devcontainer.image
    if image is None:
        return None
    if not valid_reference(image):
        return (
            f"the dev container's image {shown(image[:200], code=True)} (`{where}`) is not a "
            "valid image reference"
        )
    if not image_allowed(image, allowlist):
        return (
            f"the dev container's image {shown(image, code=True)} (`{where}`) is not allowed on "
            f"this Bosun server (an operator adds it, or a prefix such as "
            f"{shown(_example_prefix(image), code=True)}, to `{SETTING}`)"
        )
    return None


_FROM = re.compile(r"^\s*FROM\s+(?P<args>.+)$", re.IGNORECASE)


def dockerfile_bases(text: str) -> list[str]:
    """The images a Dockerfile builds ``FROM``, stages it names itself left out."""
    stages: set[str] = set()
    bases: list[str] = []
    joined = re.sub(r"\\\r?\n", " ", text)
    for line in joined.splitlines():
        match = _FROM.match(line)
        if match is None:
            continue
        words = [w for w in match.group("args").split() if not w.startswith("--")]
        if not words:
            continue
        image = words[0]
        if len(words) >= 3 and words[1].casefold() == "as":
            stages.add(words[2].casefold())
        if image.casefold() in stages or image == "scratch":
            continue
        bases.append(image)
    return bases


def _example_prefix(image: str) -> str:
    head = image.split("@", 1)[0].rsplit("/", 1)[0] if "/" in image else ""
    return f"{head}/*" if head else f"{image.split(':', 1)[0]}"
