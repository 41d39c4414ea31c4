"""The repository's own policy: ``.github/bosun.yml``, read from the default branch only.

``parse_repo_config`` turns the file's text into a :class:`RepoConfig` or raises
:class:`RepoConfigError` listing each problem with its key path and a fix. The JSON Schema
published as ``docs/bosun.schema.json`` is generated from the models (``render_json_schema``).

Design choices:

* Protected paths (``PROTECTED_PATHS``: the repository's workflows and this file) are denied to
  the agent whatever ``paths.allow`` says; only the server can lift that (see
  ``bot.domain.policy``).
* Profiles only narrow the server's profiles; see ``bot.domain.repoconfig.narrow``.
"""

from bot.domain.repoconfig.load import (
    ConfigProblem,
    RepoConfigError,
    parse_repo_config,
    render_json_schema,
)
from bot.domain.repoconfig.model import (
    CONFIG_PATH,
    LOCAL_CONFIG_PATH,
    PERMISSION_RANK,
    PROTECTED_PATHS,
    ApprovalConfig,
    BranchConfig,
    GateConfig,
    ImageBuildConfig,
    LimitsConfig,
    MergeConfig,
    PathsConfig,
    Permission,
    ProfileOverride,
    RepoConfig,
    TriggerConfig,
    Workflow,
)
from bot.domain.repoconfig.narrow import NarrowedProfile, ProfileLimits, narrow_profile

__all__ = [
    "CONFIG_PATH",
    "LOCAL_CONFIG_PATH",
    "PERMISSION_RANK",
    "PROTECTED_PATHS",
    "ApprovalConfig",
    "BranchConfig",
    "ConfigProblem",
    "GateConfig",
    "ImageBuildConfig",
    "LimitsConfig",
    "MergeConfig",
    "NarrowedProfile",
    "PathsConfig",
    "Permission",
    "ProfileLimits",
    "ProfileOverride",
    "RepoConfig",
    "RepoConfigError",
    "TriggerConfig",
    "Workflow",
    "narrow_profile",
    "parse_repo_config",
    "render_json_schema",
]
