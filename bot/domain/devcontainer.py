"""Setup commands: ``setup:`` of ``.github/bosun.yml``, or a dev container's create commands;
and a dev container's image.

``.devcontainer/devcontainer.json`` (or ``.devcontainer.json``) is JSON with comments (JSONC:
``//`` and ``/* */`` comments, trailing commas). Of its lifecycle scripts, the ones the
dev-container spec runs when a container is created are taken, in the spec's order:
``onCreateCommand``, ``updateContentCommand``, ``postCreateCommand``. Each is a string (run by
a shell), an array (an argv, no shell) or an object of named commands of either form (the spec
runs those in parallel; Bosun runs them one after the other, in the file's order).

Its image is ``image`` (a reference) or ``build`` (``dockerfile``, ``context``, ``args``,
``target``; the older top-level ``dockerFile``/``context`` too), paths relative to the file's
folder and kept inside the repository; ``build`` wins when both are there, as in the dev
container tools. Whether the run may use it is the operator's (``bot.domain.images``).

Anything of the wrong type is refused with the key and what was found, and nothing of the file
is used.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from bot.errors import ConfigError

DEVCONTAINER_PATHS = (".devcontainer/devcontainer.json", ".devcontainer.json")
LIFECYCLE_KEYS = ("onCreateCommand", "updateContentCommand", "postCreateCommand")
MAX_FILE_BYTES = 256 * 1024
MAX_BUILD_ARGS = 64
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class DevcontainerError(ConfigError):
    """The dev container file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class SetupCommand:
    """One setup command as it runs: ``argv`` in the sandbox, ``label`` for people."""

    argv: tuple[str, ...]
    label: str
    source: str
    """Where it came from (``.github/bosun.yml setup[0]``, ``<file> postCreateCommand``)."""


@dataclass(frozen=True, slots=True)
class DevcontainerBuild:
    """``build`` of a devcontainer.json, its paths made repository paths."""

    dockerfile: str
    context: str
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Devcontainer:
    """What Bosun uses of a devcontainer.json."""

    path: str
    commands: tuple[SetupCommand, ...] = ()
    image: str | None = None
    build: DevcontainerBuild | None = None
    compose: bool = False
    """It names ``dockerComposeFile`` (a Compose dev container: Bosun builds no Compose
    services)."""


def command(value: str | list[str], source: str) -> SetupCommand:
    """A shell line (``/bin/sh -c``) or an argv as a ``SetupCommand``."""
    if isinstance(value, str):
        return SetupCommand(("/bin/sh", "-c", value), value, source)
    return SetupCommand(tuple(value), " ".join(value), source)


def from_config(setup: list[str | list[str]]) -> list[SetupCommand]:
    return [command(value, f".github/bosun.yml setup[{i}]") for i, value in enumerate(setup)]


def strip_jsonc(text: str) -> str:
    """``text`` with comments and trailing commas removed (strings left intact), so that
    ``json.loads`` reads it; offsets of what remains are kept for error messages."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise DevcontainerError("an unterminated /* comment")
            out.append("".join(c if c == "\n" else " " for c in text[i : j + 2]))
            i = j + 2
        elif char == ",":
            j = _past_blanks(text, i + 1)
            if j < n and text[j] in "]}":
                out.append(" ")
            else:
                out.append(",")
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _past_blanks(text: str, i: int) -> int:
    """The index of the first character at or after ``i`` that is neither white space nor in
    a comment (a trailing comma may be followed by comments before its ``]`` or ``}``)."""
    n = len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    return i


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DevcontainerError(f"duplicate key {key!r}")
        found[key] = value
    return found


def _argv_or_line(value: Any, where: str) -> str | list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise DevcontainerError(f"{where} is an empty command")
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if not value[0]:
            raise DevcontainerError(f"{where} starts with an empty program name")
        return value
    raise DevcontainerError(
        f"{where} must be a string or a non-empty array of strings, got {json.dumps(value)[:60]}"
    )


def _repo_path(folder: str, value: Any, where: str) -> str:
    """``value`` (relative to ``folder``, the devcontainer.json's folder) as a repository path;
    refused when it is not a string or leaves the repository."""
    if not isinstance(value, str) or not value.strip() or "\0" in value or len(value) > 400:
        raise DevcontainerError(f"{where} must be a non-empty path, got {json.dumps(value)[:60]}")
    if value.startswith("/"):
        raise DevcontainerError(f"{where} must be relative to the file's folder, got {value!r}")
    joined = posixpath.normpath(posixpath.join(folder, value.replace("\\", "/")))
    if joined == ".." or joined.startswith("../"):
        raise DevcontainerError(f"{where} leaves the repository: {value!r}")
    return joined


def _build_of(data: dict[str, Any], path: str) -> DevcontainerBuild | None:
    folder = posixpath.dirname(path)
    build = data.get("build")
    if build is None and "dockerFile" not in data:
        return None
    if build is None:  # the older top-level spelling
        build = {"dockerfile": data["dockerFile"], "context": data.get("context", ".")}
        where = f"{path} (top level)"
    else:
        where = f"{path} build"
        if not isinstance(build, dict):
            raise DevcontainerError(f"{where} must be an object, got {json.dumps(build)[:60]}")
    if "dockerfile" not in build and "dockerFile" not in build:
        raise DevcontainerError(f"{where} needs `dockerfile` (the Dockerfile's path)")
    dockerfile = build.get("dockerfile", build.get("dockerFile"))
    dockerfile = _repo_path(folder, dockerfile, f"{where}.dockerfile")
    context = _repo_path(folder, build.get("context", "."), f"{where}.context")
    args = build.get("args", {})
    if not isinstance(args, dict) or len(args) > MAX_BUILD_ARGS:
        raise DevcontainerError(
            f"{where}.args must be an object of at most {MAX_BUILD_ARGS} names and strings"
        )
    pairs: list[tuple[str, str]] = []
    for name, value in args.items():
        if not _ARG_NAME.match(name) or not isinstance(value, str) or len(value) > 4096:
            raise DevcontainerError(
                f"{where}.args.{name[:60]} must be a build argument name with a string value"
            )
        pairs.append((name, value))
    target = build.get("target")
    if target is not None and (not isinstance(target, str) or not _STAGE.match(target)):
        raise DevcontainerError(
            f"{where}.target must be a stage name, got {json.dumps(target)[:60]}"
        )
    return DevcontainerBuild(dockerfile, context, tuple(pairs), target)


def parse_devcontainer(text: str, path: str = DEVCONTAINER_PATHS[0]) -> list[SetupCommand]:
    """The create commands of a devcontainer.json's text. Raises ``DevcontainerError``."""
    return list(read_devcontainer(text, path).commands)


def read_devcontainer(text: str, path: str = DEVCONTAINER_PATHS[0]) -> Devcontainer:
    """What Bosun uses of a devcontainer.json's text: its create commands and its image.
    Raises ``DevcontainerError``."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise DevcontainerError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(strip_jsonc(text), object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        raise DevcontainerError(
            f"{path} is not valid JSON with comments: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from exc
    except DevcontainerError as exc:
        raise DevcontainerError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DevcontainerError(f"{path} must hold a JSON object")
    commands: list[SetupCommand] = []
    for key in LIFECYCLE_KEYS:
        if key not in data:
            continue
        value = data[key]
        source = f"{path} {key}"
        if isinstance(value, dict):
            if not value:
                raise DevcontainerError(f"{source} is an empty object")
            for name, item in value.items():
                commands.append(
                    command(_argv_or_line(item, f"{source}.{name}"), f"{source}.{name}")
                )
        else:
            commands.append(command(_argv_or_line(value, source), source))
    if "dockerComposeFile" in data:  # its image is a Compose service's: not used
        return Devcontainer(path, tuple(commands), compose=True)
    image = data.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise DevcontainerError(f"{path} image must be a string, got {json.dumps(image)[:60]}")
    return Devcontainer(path, tuple(commands), image=image, build=_build_of(data, path))
