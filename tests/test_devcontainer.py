"""Setup commands from ``.github/bosun.yml`` and from a dev container's create commands."""

from __future__ import annotations

import json

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


# --- a dev container's image -------------------------------------------------------------


def test_the_image_or_build_of_a_dev_container_as_repository_paths() -> None:
    from bot.domain.devcontainer import DevcontainerBuild, read_devcontainer

    image = read_devcontainer(DEVCONTAINER)
    assert (image.image, image.build) == ("mcr.microsoft.com/devcontainers/python:3.12", None)
    assert len(image.commands) == 4
    built = read_devcontainer(
        '{"image": "ignored", "build": {"dockerfile": "Dockerfile", "context": "..",'
        ' "args": {"NODE_VERSION": "20"}, "target": "dev-env"}}'
    )
    assert built.build == DevcontainerBuild(
        ".devcontainer/Dockerfile", ".", (("NODE_VERSION", "20"),), "dev-env"
    )
    older = read_devcontainer('{"dockerFile": "../docker/Dockerfile", "context": "../docker"}')
    assert older.build == DevcontainerBuild("docker/Dockerfile", "docker")
    top = read_devcontainer('{"build": {"dockerfile": "tools/Dockerfile"}}', ".devcontainer.json")
    assert top.build == DevcontainerBuild("tools/Dockerfile", ".")
    compose = read_devcontainer('{"dockerComposeFile": "c.yml", "service": "app", "image": "x"}')
    assert compose.compose and compose.image is None and compose.build is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"build": "Dockerfile"}', "build must be an object"),
        ('{"build": {"context": ".."}}', "build needs `dockerfile`"),
        ('{"build": {"dockerfile": "../../etc/Dockerfile"}}', "leaves the repository"),
        ('{"build": {"dockerfile": "/Dockerfile"}}', "must be relative"),
        ('{"build": {"dockerfile": "D", "context": 3}}', "build.context must be a non-empty"),
        ('{"build": {"dockerfile": "D", "args": {"V": 1}}}', "build.args.V must be"),
        ('{"build": {"dockerfile": "D", "args": {"a b": "1"}}}', "must be a build argument"),
        ('{"build": {"dockerfile": "D", "args": ["V=1"]}}', "build.args must be an object"),
        ('{"build": {"dockerfile": "D", "target": "$(x)"}}', "build.target must be a stage"),
        ('{"image": ["python"]}', "image must be a string"),
    ],
)
def test_a_bad_image_or_build_refuses_the_file(text: str, message: str) -> None:
    with pytest.raises(DevcontainerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_devcontainer(text)  # nothing of the file is used, its commands neither


def test_what_keeps_a_dev_containers_image_from_being_used() -> None:
    from bot.domain.devcontainer import read_devcontainer
    from bot.domain.images import devcontainer_problem

    allowed = ["mcr.microsoft.com/devcontainers/*", "bosun-agent:latest"]
    ok = read_devcontainer('{"image": "mcr.microsoft.com/devcontainers/python:3.12"}')
    assert devcontainer_problem(ok, False, allowed) is None
    other = read_devcontainer('{"image": "node:20"}')
    note = devcontainer_problem(other, False, allowed)
    assert note is not None and "`node:20`" in note and "`sandbox.allowed_images`" in note
    assert "`.devcontainer/devcontainer.json`" in note
    bad = devcontainer_problem(read_devcontainer('{"image": "Not An Image"}'), False, allowed)
    assert bad is not None and "not a valid image reference" in bad
    build = read_devcontainer('{"build": {"dockerfile": "Dockerfile"}}')
    off = devcontainer_problem(build, False, allowed)
    assert off is not None and "`sandbox.repo_dockerfiles`" in off
    assert devcontainer_problem(build, True, allowed) is None  # its FROM is checked when read
    for args, why in (
        ('{"HTTPS_PROXY": "http://evil:3128"}', "a build's proxy is Bosun's"),
        ('{"no_proxy": "*"}', "a build's proxy is Bosun's"),
        ('{"USER_UID": "${localEnv:UID}"}', "does not substitute"),
    ):
        text = '{"build": {"dockerfile": "Dockerfile", "args": ' + args + "}}"
        problem = devcontainer_problem(read_devcontainer(text), True, allowed)
        assert problem is not None and why in problem, problem
    compose = read_devcontainer('{"dockerComposeFile": "c.yml"}')
    assert "Docker Compose" in (devcontainer_problem(compose, True, allowed) or "")


def test_a_trailing_comma_may_be_followed_by_comments() -> None:
    text = '{"a": [1, 2, // two\n /* end */ ], "b": "c", // last\n}'
    assert json.loads(strip_jsonc(text)) == {"a": [1, 2], "b": "c"}
    with pytest.raises(DevcontainerError, match="unterminated"):
        strip_jsonc('{"a": 1, /* open')
