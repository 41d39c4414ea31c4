"""Reading ``.github/bosun.yml``: YAML to :class:`RepoConfig`, or one clear line per problem."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bot.domain.repoconfig.model import CONFIG_PATH, ProfileOverride, RepoConfig, _KeyProblem
from bot.errors import ConfigError


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the file: where (key path or line), what, and how to fix it."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}. {self.fix}".rstrip()


class RepoConfigError(ConfigError):
    """`.github/bosun.yml` cannot be used; ``problems`` lists each error."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def as_markdown(self) -> str:
        """A comment body telling the repository what to fix."""
        lines = [f"Bosun cannot use `{CONFIG_PATH}` from the default branch:", ""]
        lines += [f"- `{p.path}`: {p.message}. {p.fix}".rstrip() for p in self.problems]
        lines += ["", "Nothing runs until the file is fixed. Reference: `docs/repo-config.md`."]
        return "\n".join(lines)


_TYPE_TAG = re.compile(r"^(function-\w+\[.*\]|[a-z-]+\[.*\]|str|int|float|bool)$")


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _TYPE_TAG.match(part):
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: Any = RepoConfig
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            if model is ProfileOverride or model is None:
                return None
            continue
        annotation = fields[part].annotation
        model = _inner_model(annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _fix_for(error: Any) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"Did you mean `{close[0]}`? " if close else ""
        return f"{hint}Valid keys here: {', '.join(valid)}." if valid else "Remove it."
    if kind in {"greater_than", "greater_than_equal", "less_than_equal"}:
        return "Use a number within the allowed range."
    if kind.startswith("int_"):
        return "Use a whole number, e.g. `10`."
    if kind.startswith("float_"):
        return "Use a number, e.g. `2.5`."
    if kind.startswith("bool"):
        return "Use `true` or `false`."
    if kind == "literal_error":
        return f"Use one of: {ctx.get('expected', '')}."
    if kind == "string_pattern_mismatch":
        return "Use letters, digits, `-`, `_` or `.` (logins: a GitHub login, bots end in `[bot]`)."
    if kind in {"list_type", "too_short"}:
        return "Use a YAML list, e.g. `[a, b]`."
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return "Use a mapping of `key: value` lines."
    if kind == "string_type":
        return "Use a text value (quote it if YAML reads it as something else)."
    return "See docs/repo-config.md."


def _pattern_fix(path: str) -> str:
    if any(key in path for key in ("approvers", "allowed_users", "allowed_bots")):
        return "Use a GitHub login (bots end in `[bot]`), without `@`."
    if path.endswith("prefix"):
        return "Start with a letter or digit; use letters, digits, `.`, `_`, `-` and `/`."
    if "allowed_teams" in path:
        return "Use `org/team-slug`."
    return "Start with a letter or digit; use letters, digits, `.`, `_` and `-`."


def _problems(exc: ValidationError) -> list[ConfigProblem]:
    found: list[tuple[ConfigProblem, Any]] = []
    for error in exc.errors():
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, _KeyProblem):
            found.append(
                (ConfigProblem(original.path, original.message, "Fix or remove it."), None)
            )
            continue
        path = _loc_path(tuple(error["loc"]))
        kind = error["type"]
        message = error["msg"].removeprefix("Value error, ")
        fix = _fix_for(error)
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "string_pattern_mismatch":
            message, fix = "invalid value", _pattern_fix(path)
        if "input" in error and kind not in {"missing", "extra_forbidden"}:
            message = f"{message} (got {json.dumps(error['input'], default=str)[:60]})"
        found.append((ConfigProblem(path, message, fix), error.get("input")))
    # A union field reports one error per alternative; keep the one that went deeper.
    problems = []
    for problem, value in found:
        deeper = any(
            other.path.startswith((problem.path + "[", problem.path + "."))
            for other, _ in found
            if other is not problem
        )
        if not (deeper and isinstance(value, list | dict)):
            problems.append(problem)
    return problems


# --- loading ------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise RepoConfigError(
                [
                    ConfigProblem(
                        f"line {mark.line + 1}, column {mark.column + 1}",
                        f"duplicate key {key!r}",
                        "Keep one of them.",
                    )
                ]
            )
        seen.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_repo_config(text: str | None) -> RepoConfig:
    """Parse the file's text; ``None`` or an empty file means every default."""
    if text is None or not text.strip():
        return RepoConfig()
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = exc.problem or exc.context or "invalid YAML"
        raise RepoConfigError(
            [ConfigProblem(where, f"YAML syntax error: {problem}", _YAML_FIX)]
        ) from exc
    except yaml.YAMLError as exc:
        raise RepoConfigError([ConfigProblem("(file)", f"YAML error: {exc}", _YAML_FIX)]) from exc
    if data is None:
        return RepoConfig()
    if not isinstance(data, dict):
        raise RepoConfigError(
            [
                ConfigProblem(
                    "(top level)",
                    f"expected a mapping of keys, got {type(data).__name__}",
                    "Start the file with keys such as `trigger:` or `limits:`.",
                )
            ]
        )
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as exc:
        raise RepoConfigError(_problems(exc)) from exc


_YAML_FIX = "Check indentation (spaces, not tabs), colons after keys, and closing quotes."


def render_json_schema() -> str:
    """The JSON Schema of ``.github/bosun.yml`` as published in ``docs/bosun.schema.json``."""
    schema = RepoConfig.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"
