"""Setup commands: ``setup:`` of ``.github/bosun.yml``, or a dev container's create commands.

``.devcontainer/devcontainer.json`` (or ``.devcontainer.json``) is JSON with comments (JSONC:
``//`` and ``/* */`` comments, trailing commas). Of its lifecycle scripts, the ones the
dev-container spec runs when a container is created are taken, in the spec's order:
``onCreateCommand``, ``updateContentCommand``, ``postCreateCommand``. Each is a string (run by
a shell), an array (an argv, no shell) or an object of named commands of either form (the spec
runs those in parallel; Bosun runs them one after the other, in the file's order). Anything
else is refused with the key and what was found, and no command of the file runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.errors import ConfigError

DEVCONTAINER_PATHS = (".devcontainer/devcontainer.json", ".devcontainer.json")
LIFECYCLE_KEYS = ("onCreateCommand", "updateContentCommand", "postCreateCommand")
MAX_FILE_BYTES = 256 * 1024


class DevcontainerError(ConfigError):
    """The dev container file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class SetupCommand:
    """One setup command as it runs: ``argv`` in the sandbox, ``label`` for people."""

    argv: tuple[str, ...]
    label: str
    source: str
    """Where it came from (``.github/bosun.yml setup[0]``, ``<file> postCreateCommand``)."""


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
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "]}":
                out.append(" ")
            else:
                out.append(",")
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


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


def parse_devcontainer(text: str, path: str = DEVCONTAINER_PATHS[0]) -> list[SetupCommand]:
    """The create commands of a devcontainer.json's text. Raises ``DevcontainerError``."""
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
    return commands
