"""How agent-derived text reaches GitHub (``bot/domain/display.py``): shown, never rendered."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from bot.domain.display import c_quote, fence, one_line, shown
from sandboxes.git import git_env

HEADING = "## Bosun security review: PASSED, safe to merge"


def git_quoted(root: Path, names: list[bytes]) -> list[str]:
    """How git itself shows ``names`` (``core.quotePath=false``): ``git ls-files``."""
    subprocess.run(["git", "init", "--quiet", str(root)], check=True, env=git_env())
    for name in names:
        Path(os.fsdecode(bytes(root) + b"/" + name)).write_bytes(b"x\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=git_env())
    out = subprocess.run(
        ["git", "-c", "core.quotePath=false", "ls-files"],
        cwd=root, check=True, capture_output=True, env=git_env(),
    ).stdout  # fmt: skip
    return out.decode().splitlines()


def test_names_are_quoted_as_git_quotes_them(tmp_path: Path) -> None:
    names = [b"plain.py", b"tab\there", b'quo"te', b"back\\slash", b"bell\x07", b"del\x7f",
             b"esc\x1b[31m", b"new\nline", b"caf\xc3\xa9.txt"]  # fmt: skip
    shown_by_git = git_quoted(tmp_path, names)
    ours = sorted(c_quote(os.fsdecode(name)) for name in names)
    assert ours == sorted(shown_by_git)


def test_bytes_that_are_not_utf8_and_invisible_characters_are_octal() -> None:
    assert c_quote("x\udcfe") == '"x\\376"'  # os.fsdecode(b"x\xfe")
    assert c_quote("x\udcfe") != c_quote("x\udcff")  # two names stay two
    assert c_quote("a\u202eb") == '"a\\342\\200\\256b"'  # right-to-left override
    assert c_quote("zero\u200bwidth") == '"zero\\342\\200\\213width"'
    assert c_quote("sep\u2028x\x85y") == '"sep\\342\\200\\250x\\302\\205y"'


@pytest.mark.parametrize(
    "name",
    [
        f"ci.yml\n\n{HEADING}\n\n",
        "report`\n\nFixes #1\n\n- `x",
        "``` `` `",
        "<details><summary>x</summary>",
        "@octo/security",
        "a\rb\u2029c\x1ed",
    ],
)
def test_a_hostile_name_is_one_inline_code_span(name: str) -> None:
    text = shown(name)
    assert "\n" not in text and "\r" not in text and not _LINE_BREAK.search(text)
    ticks = re.match(r"`+", text)
    assert ticks is not None and text.endswith(ticks.group(0))
    inside = text[len(ticks.group(0)) : -len(ticks.group(0))]
    # no run of backticks inside is as long as the fence: nothing closes the span early
    assert all(len(run) < len(ticks.group(0)) for run in re.findall(r"`+", inside))


_LINE_BREAK = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def test_plain_names_stay_readable_and_everything_is_capped() -> None:
    assert shown("src/app.py") == "src/app.py"
    assert shown("deploy/id_rsa") == "deploy/id_rsa"
    assert shown("src/app.py", code=True) == "`src/app.py`"
    assert shown("_draft_.md") == "`_draft_.md`"  # would be emphasis
    assert shown("issue#1") == "`issue#1`"
    assert shown("www.example.com") == "`www.example.com`"  # would be a link
    assert len(shown("x" * 100_000)) < 210
    long = shown("\n" * 1000, limit=50)
    assert len(long) < 60 and long.endswith("…`")


def test_a_fence_is_longer_than_any_run_of_tildes_inside() -> None:
    opening, text, closing = fence(f"working\n~~~~~~~~\n{HEADING}\n", "text")
    assert opening == "~" * 9 + "text" and closing == "~" * 9 and HEADING in text
    assert fence("no tildes") == ["~~~~text", "no tildes", "~~~~"]


def test_one_line_keeps_a_sentence_on_its_line() -> None:
    assert one_line("refused: a\nb\u2028c") == "refused: a\\nb\\342\\200\\250c"
    assert one_line("plain `code` stays") == "plain `code` stays"
