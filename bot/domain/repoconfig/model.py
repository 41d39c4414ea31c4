"""The ``.github/bosun.yml`` models: every key, its default and what it means.

Every model forbids unknown keys, so a typo is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from bot.domain.egress import BadEntry, Rule

CONFIG_PATH = ".github/bosun.yml"
LOCAL_CONFIG_PATH = ".bosun.yml"
"""Read when a local repository has no ``CONFIG_PATH`` (GitHub repositories use only that)."""
PROTECTED_PATHS: tuple[str, ...] = (".github/workflows/**", ".github/bosun.yml", "/.bosun.yml")
"""Globs the agent may never change unless the server lifts the protection."""

Workflow = Literal["implement", "plan", "plan_implement", "plan_implement_test"]
Permission = Literal["admin", "maintain", "write", "triage", "read", "none"]
PERMISSION_RANK: dict[str, int] = {
    "none": 0,
    "read": 1,
    "triage": 2,
    "write": 3,
    "maintain": 4,
    "admin": 5,
}

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ProfileName = Annotated[str, Field(pattern=_NAME, max_length=64)]
Login = Annotated[str, Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(\[bot\])?$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerConfig(_Strict):
    """Who and what starts runs."""

    labels: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=lambda: ["bosun"],
        description=(
            "Issue labels that start a run with the default profile. Each label `L` also "
            "accepts the form `L:<profile>` to pick a profile. Removing the label cancels."
        ),
    )
    allowed_users: list[Login] = Field(
        default_factory=list,
        description="Logins trusted to start runs even without write permission.",
    )
    allowed_teams: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+/[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=list,
        description="Teams (`org/team-slug`) whose members are trusted to start runs.",
    )
    allowed_bots: list[Login] = Field(
        default_factory=list,
        description=(
            "Bot logins (exact, e.g. `renovate[bot]`) allowed to start runs. Other bots never can."
        ),
    )


class ProfileOverride(_Strict):
    """A narrowing of one server profile. Values above the server's are clamped to it."""

    max_turns: int | None = Field(default=None, gt=0, description="Most agent turns.")
    timeout: int | None = Field(default=None, gt=0, description="Time limit in seconds.")
    budget_usd: float | None = Field(default=None, gt=0, description="Most dollars per run.")
    allowed_tools: list[str] | None = Field(
        default=None,
        description="Tools the agent may use; only tools the server profile allows are kept.",
    )
    gates: list[str] | None = Field(
        default=None,
        description=(
            "Names from the top-level `gates` to run for this profile (default: all). The "
            "server profile's own gates always run as well."
        ),
    )
    workflow: Workflow | None = Field(
        default=None, description="Workflow for this profile (default: the top-level one)."
    )


class PathsConfig(_Strict):
    """Which files the agent may change (gitignore-style globs, matched on repo paths)."""

    allow: list[str] = Field(
        default_factory=list,
        description=(
            "If set, every changed path must match one of these globs. Empty allows all "
            "paths not denied. Cannot lift the protection of `.github/workflows/**` and "
            "`.github/bosun.yml`."
        ),
    )
    deny: list[str] = Field(
        default_factory=lambda: [".github/workflows/**"],
        description=(
            "Changed paths matching these globs are refused. `.github/workflows/**` and "
            "`.github/bosun.yml` are always denied, whether listed or not."
        ),
    )
    nested_repositories: Literal["skip", "refuse"] = Field(
        default="skip",
        description=(
            "A `.git` the agent created below the top of the tree (a nested repository) is "
            "never read: `skip` leaves that `.git` out and keeps the other files beside it; "
            "`refuse` fails the run."
        ),
    )
    submodules: Literal["refuse", "ignore"] = Field(
        default="refuse",
        description=(
            "Submodules are never updated from the sandbox. When the agent writes into a "
            "submodule's folder or changes `.gitmodules`: `refuse` fails the run; `ignore` "
            "keeps every submodule as the base has it and leaves the writes inside out "
            "(a changed `.gitmodules` is then an ordinary file)."
        ),
    )


class LimitsConfig(_Strict):
    """Size, rate and money limits for this repository."""

    max_files_changed: int = Field(default=100, gt=0, description="Most files one diff changes.")
    max_diff_lines: int = Field(
        default=5000, gt=0, description="Most added plus removed lines in one diff."
    )
    max_file_bytes: int = Field(
        default=5_000_000,
        gt=0,
        description=(
            "Largest file, in bytes, that one diff may add or grow (binary files too); a file "
            "that was already larger passes as long as it does not grow."
        ),
    )
    max_diff_bytes: int = Field(
        default=20_000_000,
        gt=0,
        description=(
            "Most bytes one diff may add (new files plus the growth of changed ones, binary "
            "files too), and the largest its unified diff may be. Checked before the diff is "
            "scanned for secrets."
        ),
    )
    concurrent_runs: int = Field(
        default=2, gt=0, description="Runs of this repository that execute at once; others queue."
    )
    scope_conflict: Literal["wait", "refuse"] = Field(
        default="wait",
        description=(
            "When a run's focus paths overlap those of a run already working on this "
            "repository: `wait` for it to end, or `refuse` (the later run fails, saying why)."
        ),
    )
    runs_per_hour: int = Field(default=20, gt=0, description="Runs started per rolling hour.")
    budget_per_run_usd: float | None = Field(
        default=None, gt=0, description="Dollar cap per run (default: the profile's budget)."
    )
    budget_per_day_usd: float | None = Field(
        default=None, gt=0, description="Dollar cap per UTC day across all runs (default: none)."
    )


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split command {value!r}: {exc}") from exc
    return value


Command = Annotated[
    list[str],
    Field(min_length=1),
    BeforeValidator(_split_command, json_schema_input_type=str | list[str]),
]


class GateConfig(_Strict):
    """A check run in the sandbox after the agent (install, test, lint...)."""

    name: str = Field(pattern=_NAME, max_length=64, description="Short unique name (`test`).")
    run: Command = Field(
        description=(
            "Command as an argv list, or a string split like a shell would (no shell runs it; "
            'use `["sh", "-c", "..."]` for pipes).'
        )
    )
    timeout: int = Field(default=600, gt=0, description="Seconds before the gate fails.")


class ApprovalConfig(_Strict):
    """Who must approve a run's changes before they merge."""

    required_approvals: int = Field(default=1, ge=1, le=10, description="Approvals needed.")
    approvers: Literal["write", "maintain", "admin"] | list[Login] = Field(
        default="write",
        description=(
            "Who may approve: a minimum repository permission (`write`, `maintain`, `admin`) "
            "or a list of logins."
        ),
    )
    path_approvers: dict[str, list[Login]] = Field(
        default_factory=dict,
        description=(
            "OWNERS-style: glob -> logins. A change touching a matching path also needs an "
            "approval from one of those logins."
        ),
    )
    allow_self_approval: bool = Field(
        default=False, description="Whether the run's requester may be the one approver."
    )


class MergeConfig(_Strict):
    """What happens on approval."""

    auto_merge: bool = Field(
        default=False, description="Merge when approved; otherwise mark approved for humans."
    )
    method: Literal["merge", "squash", "rebase"] = Field(
        default="squash", description="Merge method when Bosun merges."
    )
    local: Literal["merge", "fast_forward", "off"] = Field(
        default="merge",
        description="What an approval does in a local repository (GitHub repositories follow "
        "`auto_merge` and `method`): `merge` makes a merge commit on the default branch, "
        "`fast_forward` moves the default branch to the run's head when it has not moved "
        "(else a merge commit), `off` leaves the approved branch for you to merge.",
    )


class BranchConfig(_Strict):
    """Branches and pull requests Bosun creates."""

    prefix: str = Field(
        default="bosun/",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        max_length=40,
        description="Branch name prefix; branches are `<prefix><issue>-<slug>`.",
    )
    draft_until_gates_pass: bool = Field(
        default=True, description="Open pull requests as drafts until the gates pass."
    )
    delete_on_reject: bool = Field(
        default=False,
        description="Local repositories: delete the run's branch when its run is rejected or "
        "cancelled (never while a working copy has it checked out).",
    )


SetupCommand = Annotated[
    str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)],
    Field(description="A shell line (run by `/bin/sh -c`) or an argv list (no shell)."),
]


class EgressConfig(_Strict):
    """What the setup phase may reach through the egress proxy, within the operator's rules."""

    allow: list[Annotated[str, Field(min_length=1, max_length=260)]] = Field(
        default_factory=list,
        max_length=100,
        description=(
            "Hosts to add to the operator's allowlist: `host`, `*.domain` or either with "
            "`:port`. Only hosts the operator lets repositories add are kept; the rest are "
            "ignored with a note on the run."
        ),
    )
    deny: list[Annotated[str, Field(min_length=1, max_length=260)]] = Field(
        default_factory=list,
        max_length=100,
        description="Hosts of the operator's allowlist this repository does not want reachable.",
    )

    @model_validator(mode="after")
    def _entries(self) -> EgressConfig:
        for key in ("allow", "deny"):
            for index, entry in enumerate(getattr(self, key)):
                try:
                    Rule.parse(entry)
                except BadEntry as exc:
                    raise _KeyProblem(f"egress.{key}[{index}]", str(exc)) from exc
        return self


def _repo_path(value: str) -> str:
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or ".." in parts or "\0" in value:
        raise ValueError(f"{value!r} must be a path inside the repository (no `/` start, no `..`)")
    return value


class ImageBuildConfig(_Strict):
    """Build the sandbox image from a Dockerfile of this repository (its default branch), on
    the worker, with network only through the run's egress proxy; the operator must allow
    builds and every `FROM` image."""

    dockerfile: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="Path of the Dockerfile, e.g. `.bosun/Dockerfile`."
    )
    context: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default=".", description="Folder sent to the build as its context (default: the root)."
    )

    @model_validator(mode="after")
    def _paths(self) -> ImageBuildConfig:
        for key in ("dockerfile", "context"):
            try:
                _repo_path(getattr(self, key))
            except ValueError as exc:
                raise _KeyProblem(f"image.{key}", str(exc)) from exc
        return self


def _image_kind(value: Any) -> str:
    return "build" if isinstance(value, dict | ImageBuildConfig) else "reference"


ImageChoice = Annotated[
    Annotated[Annotated[str, Field(min_length=1, max_length=255)], Tag("reference")]
    | Annotated[ImageBuildConfig, Tag("build")],
    Discriminator(_image_kind),
]


class RepoConfig(_Strict):
    """`.github/bosun.yml`: this repository's Bosun policy. Every key is optional."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Bosun repository configuration",
    )

    trigger: TriggerConfig = Field(default_factory=TriggerConfig, description=TriggerConfig.__doc__)
    default_profile: ProfileName | None = Field(
        default=None, description="Profile used when a trigger names none (default: the server's)."
    )
    profiles: dict[ProfileName, ProfileOverride] = Field(
        default_factory=dict, description="Narrowings of server profiles, by profile name."
    )
    workflow: Workflow | None = Field(
        default=None,
        description=(
            "Phases a run goes through, for every profile that names none "
            "(default: the server profile's, normally `implement`)."
        ),
    )
    paths: PathsConfig = Field(default_factory=PathsConfig, description=PathsConfig.__doc__)
    focus_paths: list[str] = Field(
        default_factory=list,
        description="Globs a run is expected to touch; runs with overlapping scopes take turns.",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description=LimitsConfig.__doc__)
    setup: list[SetupCommand] | None = Field(
        default=None,
        max_length=50,
        description=(
            "Commands run in the sandbox before the agent, in order, with network only through "
            "Bosun's egress proxy (package registries): install the project's dependencies "
            "here. A string runs in `/bin/sh -c`, a list is an argv. Unset: the "
            "`onCreateCommand` and `postCreateCommand` of `.devcontainer/devcontainer.json`, "
            "if any; `[]` runs nothing."
        ),
    )
    egress: EgressConfig = Field(default_factory=EgressConfig, description=EgressConfig.__doc__)
    gates: list[GateConfig] = Field(
        default_factory=list, description="Checks run in the sandbox after the agent, in order."
    )
    image: ImageChoice | None = Field(
        default=None,
        description=(
            "The sandbox image for this repository's runs: an image reference the operator "
            "allows (`sandbox.allowed_images`), or `{dockerfile: .bosun/Dockerfile}` to build "
            "one (when the operator allows builds). Default: the profile's image."
        ),
    )
    approval: ApprovalConfig = Field(
        default_factory=ApprovalConfig, description=ApprovalConfig.__doc__
    )
    merge: MergeConfig = Field(default_factory=MergeConfig, description=MergeConfig.__doc__)
    branch: BranchConfig = Field(default_factory=BranchConfig, description=BranchConfig.__doc__)

    @model_validator(mode="after")
    def _cross_checks(self) -> RepoConfig:
        names = [gate.name for gate in self.gates]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _KeyProblem(f"gates[{index}].name", f"duplicate gate name {name!r}")
        for profile, override in self.profiles.items():
            for index, gate in enumerate(override.gates or []):
                if gate not in names:
                    raise _KeyProblem(
                        f"profiles.{profile}.gates[{index}]",
                        f"no gate named {gate!r} in the top-level `gates` "
                        f"(defined: {', '.join(names) or 'none'})",
                    )
        return self

    def gate(self, name: str) -> GateConfig | None:
        return next((g for g in self.gates if g.name == name), None)


class _KeyProblem(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
