"""Setup commands from ``.github/bosun.yml`` and from a dev container's create commands."""

from __future__ import annotations

import pytest

from bot.domain.devcontainer import DevcontainerError, from_config, parse_devcontainer, strip_jsonc
from bot.domain.repoconfig import RepoConfigError, parse_repo_config

DEVCONTAINER = """
// A dev container, as VS Code writes them: comments and trailing commas.
{
  "name": "app", /* the image */
  "image": "mcr.microsoft.com/devcontainers/python:3.12",
  "postCreateCommand": "pip install -e '.[dev]' // not a comment",
  "onCreateCommand": ["npm", "ci"],
  "updateContentCommand": {
    "deps": "uv sync",
    "tools": ["go", "mod", "download"],
  },
  "postStartCommand": "never run at creation",
}
"""


def test_create_commands_in_the_specs_order() -> None:
    commands = parse_devcontainer(DEVCONTAINER)
    assert [c.argv for c in commands] == [
        ("npm", "ci"),
        ("/bin/sh", "-c", "uv sync"),
        ("go", "mod", "download"),
        ("/bin/sh", "-c", "pip install -e '.[dev]' // not a comment"),
    ]
    assert [c.source.split(" ", 1)[1] for c in commands] == [
        "onCreateCommand",
        "updateContentCommand.deps",
        "updateContentCommand.tools",
        "postCreateCommand",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"postCreateCommand": 3}', "postCreateCommand must be a string or a non-empty array"),
        ('{"postCreateCommand": []}', "postCreateCommand must be a string"),
        ('{"postCreateCommand": ["npm", 1]}', "must be a string or a non-empty array"),
        ('{"onCreateCommand": {}}', "onCreateCommand is an empty object"),
        ('{"onCreateCommand": {"a": {"b": "c"}}}', "onCreateCommand.a must be"),
        ('{"postCreateCommand": "  "}', "is an empty command"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"postCreateCommand": "x"', "not valid JSON with comments"),
        ("{/* open", "unterminated"),
    ],
)
def test_bad_files_are_refused_saying_where(text: str, message: str) -> None:
    with pytest.raises(DevcontainerError, match=message.replace("[", r"\[")):
        parse_devcontainer(text)


def test_strings_keep_what_looks_like_comments_and_commas() -> None:
    text = '{"a": "x // y /* z */ ,}", "b": "q\\",]",}'
    assert strip_jsonc(text).replace(" ", "") == '{"a":"x//y/*z*/,}","b":"q\\",]"}'


def test_setup_in_bosun_yml_strings_run_in_a_shell_lists_do_not() -> None:
    config = parse_repo_config(
        "setup:\n  - pip install -e '.[dev]' && npm ci\n  - [cargo, fetch]\n"
        "egress:\n  allow: [pkgs.corp.example]\n  deny: ['registry.npmjs.org']\n"
    )
    assert config.setup is not None
    commands = from_config(config.setup)
    assert commands[0].argv == ("/bin/sh", "-c", "pip install -e '.[dev]' && npm ci")
    assert commands[1].argv == ("cargo", "fetch")
    assert commands[1].source == ".github/bosun.yml setup[1]"
    assert parse_repo_config("gates: []").setup is None  # unset: the devcontainer's, if any
    assert parse_repo_config("setup: []").setup == []  # set empty: nothing runs


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("setup: pip install x\n", "setup"),
        ("setup:\n  - []\n", "setup[0]"),
        ("egress:\n  allow: ['http://pypi.org']\n", "egress.allow[0]"),
        ("egress:\n  deny: ['a b']\n", "egress.deny[0]"),
        ("egress:\n  permit: [x]\n", "egress.permit"),
    ],
)
def test_bad_setup_and_egress_keys_are_named(text: str, where: str) -> None:
    with pytest.raises(RepoConfigError) as caught:
        parse_repo_config(text)
    assert any(p.path.startswith(where) for p in caught.value.problems), caught.value.problems
