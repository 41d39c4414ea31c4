"""``bosun config validate``: the installed command judges a Bosun file as the worker would."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bot.domain.repoconfig import parse_repo_config

BOSUN = shutil.which("bosun") or str(Path(__file__).parents[1] / ".venv" / "bin" / "bosun")


def bosun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BOSUN, "config", "validate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_valid_file_passes_with_its_defaults_filled_in(tmp_path: Path) -> None:
    (tmp_path / ".github").mkdir()
    text = "trigger:\n  labels: [agent]\nlimits:\n  max_files_changed: 3\n"
    (tmp_path / ".github" / "bosun.yml").write_text(text)
    human = bosun(str(tmp_path))
    assert (human.returncode, human.stderr) == (0, "")
    assert human.stdout.strip().endswith("bosun.yml: valid")
    out = bosun("--format", "json", str(tmp_path))
    verdict = json.loads(out.stdout)
    assert out.returncode == 0 and verdict["valid"] and verdict["problems"] == []
    assert verdict["config"] == parse_repo_config(text).model_dump(mode="json")
    assert verdict["config"]["limits"]["max_files_changed"] == 3


def test_each_problem_is_named_with_its_fix_and_the_exit_code_is_1(tmp_path: Path) -> None:
    bad = tmp_path / "bosun.yml"
    bad.write_text("trigger:\n  lable: agent\nlimits:\n  max_files_changed: many\n")
    human = bosun(str(bad))
    assert human.returncode == 1
    assert "trigger.lable: unknown key. Did you mean `labels`?" in human.stdout
    assert "limits.max_files_changed" in human.stdout
    verdict = json.loads(bosun("--format", "json", str(bad)).stdout)
    assert not verdict["valid"] and "config" not in verdict
    assert {p["path"] for p in verdict["problems"]} == {"trigger.lable", "limits.max_files_changed"}
    assert all(p["message"] and p["fix"] for p in verdict["problems"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"labels: [\n", "YAML syntax error"),
        (b"- a list\n", "expected a mapping"),
        (b"trigger: {}\ntrigger: {}\n", "trigger"),
        (b"\xff\xfe\x00not text", "not UTF-8"),
    ],
)
def test_broken_files_are_refused_clearly(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bosun.yml"
    path.write_bytes(content)
    result = bosun(str(path))
    assert result.returncode == 1
    assert expected in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_file_or_a_repository_without_one_exits_3(tmp_path: Path) -> None:
    missing = bosun(str(tmp_path / "nope.yml"))
    assert missing.returncode == 3 and "no Bosun file" in missing.stderr
    empty_repo = bosun(str(tmp_path))
    assert empty_repo.returncode == 3
    assert ".github/bosun.yml" in empty_repo.stderr and ".bosun.yml" in empty_repo.stderr


def test_the_repository_root_file_is_found_too(tmp_path: Path) -> None:
    (tmp_path / ".bosun.yml").write_text("limits: {max_files_changed: 2}\n")
    assert bosun(str(tmp_path)).returncode == 0
