"""`.github/bosun.yml`: defaults, errors that name the key and the fix, schema, narrowing."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from bot.domain.repoconfig import (
    ProfileLimits,
    ProfileOverride,
    RepoConfig,
    RepoConfigError,
    narrow_profile,
    parse_repo_config,
    render_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "bosun.schema.json"
DOC_FILE = ROOT / "docs" / "repo-config.md"


@pytest.mark.parametrize("text", [None, "", "   \n", "# only a comment\n"])
def test_missing_or_empty_file_means_defaults(text: str | None) -> None:
    config = parse_repo_config(text)
    assert config == RepoConfig()
    assert config.trigger.labels == ["bosun"]
    assert config.paths.deny == [".github/workflows/**"]
    assert config.approval.required_approvals == 1
    assert config.approval.approvers == "write"
    assert config.approval.allow_self_approval is False
    assert config.branch.prefix == "bosun/"
    assert config.branch.draft_until_gates_pass is True
    assert config.merge.auto_merge is False
    assert config.workflow is None
    assert config.gates == []


def test_full_example_parses_and_gate_strings_are_split_like_a_shell() -> None:
    config = parse_repo_config(
        """
trigger:
  labels: [bosun, agent]
  allowed_users: [alice]
  allowed_bots: ["renovate[bot]"]
default_profile: fast
profiles:
  fast: {max_turns: 10, gates: [test]}
gates:
  - name: install
    run: pip install -e '.[dev]'
  - name: test
    run: [pytest, -q]
    timeout: 900
approval:
  approvers: [alice, bob]
  path_approvers: {"db/**": [carol]}
merge: {auto_merge: true, method: rebase}
"""
    )
    assert config.gates[0].run == ["pip", "install", "-e", ".[dev]"]
    assert config.gates[1].run == ["pytest", "-q"]
    assert config.gates[1].timeout == 900
    assert config.profiles["fast"].max_turns == 10
    assert config.approval.approvers == ["alice", "bob"]
    assert config.merge.method == "rebase"


ERROR_CASES = [
    ("limits:\n  max_files_changed: 0\n", "limits.max_files_changed", "greater than 0"),
    ("limits:\n  max_files_chnged: 3\n", "limits.max_files_chnged", "max_files_changed"),
    ("trigger:\n  labels: bosun\n", "trigger.labels", "list"),
    ("trigger:\n  allowed_bots: ['@dependabot']\n", "trigger.allowed_bots[0]", "login"),
    ("merge:\n  method: fast-forward\n", "merge.method", "'merge', 'squash' or 'rebase'"),
    ('gates:\n  - name: t\n    run: "pytest \'x"\n', "gates[0].run", "closing quotation"),
    ("gates:\n  - name: t\n", "gates[0].run", "Field required"),
    ("gates:\n  - {name: t, run: x}\n  - {name: t, run: y}\n", "gates[1].name", "duplicate"),
    (
        "gates: [{name: t, run: x}]\nprofiles:\n  p: {gates: [lint]}\n",
        "profiles.p.gates[0]",
        "lint",
    ),
    ('approval:\n  approvers: ["not a login"]\n', "approval.approvers[0]", "login"),
    ("approval:\n  required_approvals: 0\n", "approval.required_approvals", "greater than"),
    ("profiles:\n  fast:\n    budget_usd: cheap\n", "profiles.fast.budget_usd", "number"),
    ("workflow: yolo\n", "workflow", "implement"),
    ("colour: blue\n", "colour", "Valid keys here"),
]


@pytest.mark.parametrize(("text", "path", "hint"), ERROR_CASES)
def test_each_error_names_the_key_path_and_how_to_fix_it(text: str, path: str, hint: str) -> None:
    with pytest.raises(RepoConfigError) as caught:
        parse_repo_config(text)
    lines = str(caught.value).splitlines()
    matching = [line for line in lines if line.startswith(f"{path}: ")]
    assert matching, f"no line for {path} in {lines}"
    assert hint in matching[0]


def test_one_line_per_problem() -> None:
    with pytest.raises(RepoConfigError) as caught:
        parse_repo_config(
            "limits:\n  max_diff_lines: -1\n  runs_per_hour: x\nmerge: {method: ff}\n"
        )
    paths = sorted(p.path for p in caught.value.problems)
    assert paths == ["limits.max_diff_lines", "limits.runs_per_hour", "merge.method"]
    assert len(str(caught.value).splitlines()) == 3
    assert "`limits.runs_per_hour`" in caught.value.as_markdown()


def test_yaml_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(RepoConfigError) as caught:
        parse_repo_config("trigger:\n  labels: [bosun\nlimits: {}\n")
    message = str(caught.value)
    assert message.startswith("line 3, column ")
    assert "YAML syntax error" in message


def test_duplicate_keys_are_an_error_not_a_silent_override() -> None:
    with pytest.raises(RepoConfigError, match=r"line 2, column 1: duplicate key 'limits'"):
        parse_repo_config("limits: {max_files_changed: 5}\nlimits: {max_files_changed: 500}\n")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(RepoConfigError, match=r"\(top level\): expected a mapping"):
        parse_repo_config("- bosun\n")


def test_published_schema_matches_the_model() -> None:
    assert SCHEMA_FILE.read_text() == render_json_schema(), (
        "docs/bosun.schema.json is stale: run scripts/gen_repo_schema.py"
    )


def test_schema_accepts_the_documented_example_and_rejects_unknown_keys() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    text = DOC_FILE.read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(example)
    jsonschema.validate(data, schema)
    parse_repo_config(example)  # the model agrees with the schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"limits": {"max_files": 3}}, schema)


def test_docs_mention_every_key() -> None:
    text = DOC_FILE.read_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            out.append(prefix + name)
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                out += keys(annotation, f"{prefix}{name}.")
        return out

    missing = [key for key in keys(RepoConfig) if f"`{key.split('.')[-1]}`" not in text]
    assert not missing, f"docs/repo-config.md does not describe {missing}"


SERVER = ProfileLimits(
    name="default",
    max_turns=30,
    timeout=1800,
    budget_usd=5.0,
    allowed_tools=("Read", "Edit", "Bash"),
    gates=("lint",),
    workflow="implement",
)


def test_narrowing_tightens() -> None:
    override = ProfileOverride(
        max_turns=10, timeout=600, budget_usd=1.5, allowed_tools=["Read"], gates=["test"]
    )
    result = narrow_profile(SERVER, override)
    assert result.limits.max_turns == 10
    assert result.limits.timeout == 600
    assert result.limits.budget_usd == 1.5
    assert result.limits.allowed_tools == ("Read",)
    assert result.limits.gates == ("lint", "test")  # the server's gates always run
    assert result.notes == ()


def test_narrowing_cannot_widen_and_says_so() -> None:
    override = ProfileOverride(
        max_turns=500, timeout=99999, budget_usd=100.0, allowed_tools=["Read", "WebFetch"]
    )
    result = narrow_profile(SERVER, override)
    assert result.limits.max_turns == 30
    assert result.limits.timeout == 1800
    assert result.limits.budget_usd == 5.0
    assert result.limits.allowed_tools == ("Read",)
    assert len(result.notes) == 4
    assert any("budget_usd: 100.0 is above the server's 5.0" in note for note in result.notes)
    assert any("WebFetch" in note for note in result.notes)


def test_narrowing_sets_a_limit_the_server_left_open() -> None:
    open_server = ProfileLimits(name="open")
    result = narrow_profile(open_server, ProfileOverride(max_turns=5, allowed_tools=["Read"]))
    assert result.limits.max_turns == 5
    assert result.limits.allowed_tools == ("Read",)


def test_workflow_comes_from_override_then_repo_then_server() -> None:
    plan_server = ProfileLimits(name="p", workflow="plan")
    assert narrow_profile(plan_server, None).limits.workflow == "plan"
    assert narrow_profile(plan_server, None, workflow="implement").limits.workflow == "implement"
    override = ProfileOverride(workflow="plan_implement")
    assert narrow_profile(plan_server, override, workflow="implement").limits.workflow == (
        "plan_implement"
    )
