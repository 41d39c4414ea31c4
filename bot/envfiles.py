"""Where settings come from besides the process's environment: an env file (``.env`` in the
working directory, or the file ``BOSUN_ENV_FILE`` names) and ``<VARIABLE>_FILE`` variables
that name a file holding a setting's value — Docker and Compose secrets, Kubernetes secret
volumes, systemd credentials.

``BOSUN_GITHUB__WEBHOOK_SECRET_FILE=/run/secrets/webhook`` sets ``github.webhook_secret`` to
that file's text (one trailing newline removed), exactly as ``BOSUN_GITHUB__WEBHOOK_SECRET``
would; a setting whose type is a list or a mapping reads JSON. Every setting takes a ``_FILE``
variable; a setting with a ``*_file`` setting of its own (``redis.password_file``,
``github.private_key_file``, ``profiles_file``) keeps it, since its own already is that
variable. Setting both ``X`` and ``X_FILE`` is refused, as is a file that cannot be read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bot.errors import ConfigError

ENV_FILE_VARIABLE = "BOSUN_ENV_FILE"
DEFAULT_ENV_FILE = Path(".env")
SUFFIX = "_FILE"


def env_file_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The env file to read: ``BOSUN_ENV_FILE`` (empty: none), else ``.env`` when it exists."""
    environ = os.environ if environ is None else environ
    named = environ.get(ENV_FILE_VARIABLE)
    if named is None:
        if not DEFAULT_ENV_FILE.is_file():
            return None
        _check_trusted(DEFAULT_ENV_FILE)
        return DEFAULT_ENV_FILE
    if not named:
        return None
    path = Path(named)
    if not path.is_file():
        raise ConfigError(f"{ENV_FILE_VARIABLE}={named}: no such file")
    _check_trusted(path)
    return path


def _check_trusted(path: Path) -> None:
    """An env file decides where Bosun's database, Redis and GitHub are: it must belong to
    this user (or root) and be writable by no one else — a ``.env`` in a repository someone
    else wrote is not configuration."""
    info = path.stat()
    if info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o022:
        raise ConfigError(
            f"refusing the env file {path}: it must be owned by you (or root) and writable by "
            f"no one else (owner uid {info.st_uid}, mode {info.st_mode & 0o777:o}); fix it, or "
            f"set {ENV_FILE_VARIABLE}= (empty) to read none"
        )


def read_env_file(path: Path | None) -> dict[str, str]:
    """The ``BOSUN_`` variables an env file sets (``KEY=value`` lines, ``#`` comments)."""
    if path is None:
        return {}
    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the env file {path}: {exc.strerror}") from exc
    return {k: v for k, v in values.items() if k.upper().startswith("BOSUN_") and v is not None}


def _field_at(model: type[BaseModel], names: list[str]) -> FieldInfo | None:
    """The field a path of lower-case names reaches in ``model``, or ``None``."""
    field: FieldInfo | None = None
    current: Any = model
    for name in names:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(name)
        if field is None:
            return None
        current = field.annotation
    return field


def _is_group(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _file_variables(
    settings_cls: type[BaseModel], variables: Mapping[str, str], prefix: str
) -> list[tuple[str, str, list[str], FieldInfo]]:
    """``(NAME_FILE, location, path of the setting, its field)`` for each ``_FILE`` variable
    that names a setting."""
    found = []
    for name, location in sorted(variables.items()):
        if not (name.startswith(prefix) and name.endswith(SUFFIX)):
            continue
        path_names = name[len(prefix) :].lower().split("__")
        if _field_at(settings_cls, path_names) is not None:
            continue  # a setting of its own (redis.password_file): the model reads it
        path_names[-1] = path_names[-1][: -len(SUFFIX)]
        field = _field_at(settings_cls, path_names)
        if field is None or _is_group(field) or not path_names[-1]:
            continue
        found.append((name, location, path_names, field))
    return found


def file_values(
    settings_cls: type[BaseModel], variables: Mapping[str, str], prefix: str = "BOSUN_"
) -> dict[str, Any]:
    """Nested settings values read from the files that ``<NAME>_FILE`` variables name.

    ``variables`` are the environment and the env file together (names compared without
    case). A ``_FILE`` variable that names no setting is ignored, like any unknown variable."""
    upper = {name.upper(): value for name, value in variables.items()}
    found: dict[str, Any] = {}
    for name, location, path_names, field in _file_variables(settings_cls, upper, prefix):
        target = name[: -len(SUFFIX)]
        if target in upper:
            raise ConfigError(f"set {target} or {name}, not both")
        if not location:
            raise ConfigError(f"{name} is empty: name the file that holds {target}")
        try:
            text = Path(location).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {name}={location}: {exc.strerror} (the file must be readable "
                "by the user Bosun runs as)"
            ) from exc
        value: Any = text.removesuffix("\n").removesuffix("\r")
        if _is_complex(field):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"{name}={location} does not hold JSON: {exc}") from exc
        node = found
        for part in path_names[:-1]:
            node = node.setdefault(part, {})
        node[path_names[-1]] = value
    return found


def _is_complex(field: FieldInfo) -> bool:
    origin = getattr(field.annotation, "__origin__", None)
    return origin in (list, dict, set, tuple)


def _drop(values: dict[str, Any], path_names: list[str]) -> None:
    node: Any = values
    for part in path_names[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path_names[-1], None)


class WithoutFileVariables(PydanticBaseSettingsSource):
    """``source`` (the environment, the env file) without the ``_FILE`` variables that
    ``FileValuesSource`` reads, which would otherwise be unknown keys of their group."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        source: PydanticBaseSettingsSource,
        variables: Mapping[str, str],
        prefix: str = "BOSUN_",
    ) -> None:
        super().__init__(settings_cls)
        self.source = source
        upper = {name.upper(): value for name, value in variables.items()}
        self.dropped = [
            [*path[:-1], path[-1] + SUFFIX.lower()]
            for _, _, path, _ in _file_variables(settings_cls, upper, prefix)
        ]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for every field at once

    def __call__(self) -> dict[str, Any]:
        values = self.source()
        for path_names in self.dropped:
            _drop(values, path_names)
        return values


class FileValuesSource(PydanticBaseSettingsSource):
    """The settings source of ``<NAME>_FILE`` variables (after the environment and the env
    file, which cannot set the same setting: both at once is an error)."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.variables = variables

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for every field at once

    def __call__(self) -> dict[str, Any]:
        return file_values(self.settings_cls, self.variables)


def describe_error(exc: ValueError) -> str:
    """A configuration error as ``setting: problem`` lines, never quoting the values given
    (pydantic's own message repeats the input, and the input may be a secret)."""
    if isinstance(exc, ValidationError):
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            lines.append(f"{where}: {error['msg']}")
        return "\n".join(lines)
    return str(exc)
