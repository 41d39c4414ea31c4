"""Agent profiles (SPEC §5.1): which runner, model, image and limits a run gets.

Profiles come from server configuration (``BOSUN_PROFILES`` as JSON, or a YAML/JSON file at
``BOSUN_PROFILES_FILE``) and may be narrowed — never widened — by a repository's
``.github/bosun.yml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.domain.repoconfig import RepoConfig
from bot.domain.repoconfig.narrow import ProfileLimits, narrow_profile
from bot.errors import ConfigError

RunnerName = Literal["claude-code", "codex", "aider", "opencode", "gemini", "script"]
Workflow = Literal["implement", "plan", "plan_implement", "plan_implement_test"]


class ProfileConfig(BaseModel):
    """One agent profile."""

    model_config = ConfigDict(extra="forbid")

    runner: RunnerName = Field(default="script", description="Runner adapter to use.")
    model: str | None = Field(default=None, description="Model name passed to the runner.")
    image: str | None = Field(
        default=None, description="Sandbox image; unset means the server's default image."
    )
    workflow: Workflow = Field(default="implement", description="Phases a run goes through.")
    max_turns: int | None = Field(default=None, gt=0, description="Agent turn limit.")
    timeout: int | None = Field(default=None, gt=0, description="Seconds before timeout.")
    budget_usd: float | None = Field(default=None, ge=0, description="Spend cap per run.")
    env: list[str] = Field(
        default_factory=list,
        description="Names of host environment variables passed through (never values).",
    )
    network: Literal["none", "gateway"] = Field(
        default="gateway",
        description="`none`: no model access at all; `gateway`: only the model gateway.",
    )
    agent_network: Literal["none", "registries"] = Field(
        default="none",
        description=(
            "Network of the agent phase besides the model gateway: `none`, or `registries` "
            "(the setup phase's egress proxy and allowlist). Gates always get `none`."
        ),
    )
    upstreams: list[str] = Field(
        default_factory=list, description="Model API base URLs the gateway may forward to."
    )
    gates: list[str] = Field(
        default_factory=list, description="Names of repo gates this profile runs (all if empty)."
    )
    allowed_tools: list[str] | None = Field(
        default=None, description="Tool allow-list, where the runner supports one."
    )
    command: list[str] | None = Field(
        default=None, description="argv of the `script` runner (a codemod, formatter, test)."
    )


DEMO_AGENT = """
import os, pathlib, re
prompt = pathlib.Path(os.environ["BOSUN_PROMPT_FILE"]).read_text()
found = re.search(r"^# Task: (.+)$", prompt, re.MULTILINE)
title = found.group(1).strip() if found else "a task"
notes = pathlib.Path("/workspace/BOSUN-DEMO.md")
text = notes.read_text() if notes.exists() else "# Done by Bosun's demo agent\\n\\n"
notes.write_text(text + "- " + title + "\\n")
print("demo agent: wrote", notes.name)
"""
"""The ``demo`` profile's agent: a script (no model, no key) that records the task's title in
BOSUN-DEMO.md, so a first run shows the whole pipeline (README: local repositories)."""

DEFAULT_PROFILES: dict[str, ProfileConfig] = {
    "default": ProfileConfig(runner="claude-code", upstreams=["https://api.anthropic.com"]),
    "demo": ProfileConfig(runner="script", command=["python3", "-c", DEMO_AGENT]),
}


def load_profiles(inline: dict[str, ProfileConfig], path: Path | None) -> dict[str, ProfileConfig]:
    """Server profiles: the file's, then inline ones on top; built-ins when neither is set."""
    profiles: dict[str, ProfileConfig] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read profiles file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of profile name → profile")
        for name, body in raw.items():
            try:
                profiles[str(name)] = ProfileConfig.model_validate(body)
            except ValidationError as exc:
                raise ConfigError(f"{path}: profile {name!r}: {exc}") from exc
    profiles.update(inline)
    return profiles or dict(DEFAULT_PROFILES)


def effective_profile(
    name: str, server: ProfileConfig, repo_config: RepoConfig
) -> tuple[ProfileConfig, list[str]]:
    """The profile a run gets: the server's, narrowed (never widened) by the repository."""
    limits = ProfileLimits(
        name=name,
        max_turns=server.max_turns,
        timeout=server.timeout,
        budget_usd=server.budget_usd,
        allowed_tools=tuple(server.allowed_tools) if server.allowed_tools is not None else None,
        gates=tuple(server.gates),
        workflow=server.workflow,
    )
    narrowed = narrow_profile(limits, repo_config.profiles.get(name), workflow=repo_config.workflow)
    final = narrowed.limits
    budget = final.budget_usd
    per_run = repo_config.limits.budget_per_run_usd
    if per_run is not None and (budget is None or per_run < budget):
        budget = per_run
    profile = server.model_copy(
        update={
            "max_turns": final.max_turns,
            "timeout": final.timeout,
            "budget_usd": budget,
            "allowed_tools": list(final.allowed_tools) if final.allowed_tools is not None else None,
            "gates": list(final.gates),
            "workflow": final.workflow,
        }
    )
    return profile, list(narrowed.notes)
