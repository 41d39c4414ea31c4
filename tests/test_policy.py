"""Diff policy: path globs, protected paths, size limits, and the secret scanner."""

from __future__ import annotations

import pytest

from bot.domain.policy import (
    AddedBinary,
    ChangedFile,
    DiffOutOfStep,
    check_diff,
    matches,
    protected_folders,
    scan_binary,
    scan_secrets,
)
from bot.domain.repoconfig import PROTECTED_PATHS, RepoConfig, parse_repo_config

DEFAULT = RepoConfig()


def changed(*paths: str, added: int = 1) -> list[ChangedFile]:
    return [ChangedFile(path=p, status="modified", added=added) for p in paths]


GLOBS = [
    (".github/workflows/**", ".github/workflows/ci.yml", True),
    (".github/workflows/**", ".github/workflows/sub/deep.yaml", True),
    (".github/workflows/**", ".github/dependabot.yml", False),
    ("src/**", "src/a/b/c.py", True),
    ("src/**", "lib/src/a.py", False),
    ("/src/**", "src/a.py", True),
    ("*.pem", "keys/deep/server.pem", True),
    ("*.pem", "server.pem.txt", False),
    ("docs/**/*.png", "docs/a/b/c.png", True),
    ("docs/**/*.png", "docs/c.png", True),
    ("docs/*.md", "docs/sub/x.md", False),
    ("secrets/", "secrets/prod/db.txt", True),
    ("pyproject.toml", "pyproject.toml", True),
    ("pyproject.toml", "pkg/pyproject.toml", True),
    ("/pyproject.toml", "pkg/pyproject.toml", False),
]


@pytest.mark.parametrize(("glob", "path", "expected"), GLOBS)
def test_gitignore_style_globs(glob: str, path: str, expected: bool) -> None:
    assert matches(path, [glob]) is expected


def test_empty_pattern_list_matches_nothing() -> None:
    assert matches("anything.py", []) is False


def test_workflows_are_denied_by_default() -> None:
    result = check_diff(changed("src/app.py", ".github/workflows/ci.yml"), DEFAULT)
    assert not result.ok
    assert [(v.rule, v.path) for v in result.violations] == [
        ("paths.protected", ".github/workflows/ci.yml")
    ]
    assert "`.github/workflows/ci.yml`" in result.as_markdown()


def test_repo_cannot_allow_its_workflows_or_its_policy() -> None:
    config = parse_repo_config("paths:\n  allow: ['**']\n  deny: []\n")
    result = check_diff(changed(".github/workflows/x.yml", ".github/bosun.yml"), config)
    assert [v.rule for v in result.violations] == ["paths.protected", "paths.protected"]


def test_server_can_lift_the_protection() -> None:
    config = parse_repo_config("paths:\n  deny: []\n")
    assert check_diff(changed(".github/workflows/x.yml"), config, protected=()).ok


def test_deny_and_allow_lists() -> None:
    config = parse_repo_config(
        "paths:\n  allow: ['src/**', 'tests/**']\n  deny: ['src/vendor/**']\n"
    )
    result = check_diff(changed("src/a.py", "src/vendor/lib.py", "README.md", "tests/t.py"), config)
    assert [(v.rule, v.path) for v in result.violations] == [
        ("paths.deny", "src/vendor/lib.py"),
        ("paths.allow", "README.md"),
    ]


def test_rename_out_of_a_protected_path_is_caught() -> None:
    rename = ChangedFile(
        path="ci-old.yml", status="renamed", old_path=".github/workflows/ci.yml", added=0
    )
    result = check_diff([rename], DEFAULT)
    assert [(v.rule, v.path) for v in result.violations] == [
        ("paths.protected", ".github/workflows/ci.yml")
    ]


def test_size_limits() -> None:
    config = parse_repo_config("limits:\n  max_files_changed: 2\n  max_diff_lines: 10\n")
    assert check_diff(changed("a", "b", added=5), config).ok
    result = check_diff(
        [*changed("a", "b", added=5), ChangedFile("c.png", "added", binary=True)], config
    )
    assert [v.rule for v in result.violations] == ["limits.max_files_changed"]
    assert result.files_changed == 3
    result = check_diff([ChangedFile("a", added=6, removed=5)], config)
    assert [v.rule for v in result.violations] == ["limits.max_diff_lines"]
    assert "11 lines added or removed; the limit is 10" in result.violations[0].message


def test_byte_limits_name_the_file_and_its_size() -> None:
    config = parse_repo_config("limits:\n  max_file_bytes: 1000\n  max_diff_bytes: 1500\n")
    big = ChangedFile("assets/blob.bin", "added", binary=True, size=200_000_000)
    result = check_diff([big], config)
    assert [(v.rule, v.path) for v in result.violations] == [
        ("limits.max_file_bytes", "assets/blob.bin"),
        ("limits.max_diff_bytes", None),
    ]
    assert result.violations[0].message == (
        "binary file of 200.0 MB; the limit is 1000 bytes per file"
    )
    assert "the change adds 200.0 MB" in result.violations[1].message
    # an existing large file may change as long as it does not grow
    edited = ChangedFile("data.json", added=1, removed=1, size=5000, old_size=5000)
    assert check_diff([edited], config).ok
    grown = ChangedFile("data.json", added=2, size=5200, old_size=5000)
    result = check_diff([grown], config)
    assert [v.rule for v in result.violations] == ["limits.max_file_bytes"]
    assert "(was 5000 bytes)" in result.violations[0].message
    # many files each within the per-file limit still add up
    parts = [ChangedFile(f"part{i}", "added", size=900) for i in range(2)]
    assert [v.rule for v in check_diff(parts, config).violations] == ["limits.max_diff_bytes"]
    # a rewrite that adds nothing but makes a huge unified diff
    result = check_diff([edited], config, diff_bytes=10_000)
    assert [v.message for v in result.violations] == [
        "the diff is 10000 bytes; the limit is 1500 bytes"
    ]
    assert RepoConfig().limits.max_file_bytes == 5_000_000
    assert RepoConfig().limits.max_diff_bytes == 20_000_000


def test_an_oversized_diff_is_refused_without_being_scanned() -> None:
    text = diff("app/settings.py", "import os", f'TOKEN = "{GH}"')
    config = parse_repo_config("limits:\n  max_diff_lines: 1\n")
    two_lines = [ChangedFile("app/settings.py", "added", added=2, size=60)]
    result = check_diff(two_lines, config, diff_text=text)
    assert [v.rule for v in result.violations] == ["limits.max_diff_lines"]
    assert not result.scanned and result.secrets == ()
    result = check_diff(two_lines, RepoConfig(), diff_text=text)
    assert result.scanned and [v.rule for v in result.violations] == ["secrets.github_token"]


# --- secret scanner -----------------------------------------------------------------------
# Secrets are assembled at run time so this file itself holds none.

GH = "ghp_" + "R3aLt0k3nV4lu3xYz9QwErTyUiOp1234AbCd"
PAT = (
    "github_pat_"
    + "11ABCDEFG0aBcDeFgHiJkL_"
    + "mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567"
)
AWS = "AKIA" + "Z7Q4XK2P9LM3NB6T"
AWS_SECRET = "q8Zr/Tn3W" + "x9Kf2Lm+Qp7Vb4Yc1Hd6Jg0Se5Ra2Uf"
SLACK = "xoxb-" + "2417355826-5928374650192-aB3dE5gH7jK9mN1pQ3sT5vX7"
ANTHROPIC = (
    "sk-ant-" + "api03-" + "Zx81kLq0Pw2mN7vB4cR9sT6yQe3Hd5Jf8Gk1Lz0Xc7Vb2Nm4Aq9Ws6Ed3Rf5Tg8Yh1Uj"
)
OPENAI = "sk-" + "proj-" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1"
STRIPE = "sk_" + "live_" + "51H8xKf2Lm9Qp7Vb4Yc1Hd6Jg0S"
GOOGLE = "AIza" + "SyD8xKf2Lm9Qp7Vb4Yc1Hd6Jg0Se5Ra2Uf3"
KEY_BLOCK = "-----BEGIN " + "RSA PRIVATE KEY-----"
RANDOM = "Zx81kLq0Pw2mN7vB4cR9sT6y"


def diff(path: str, *lines: str) -> str:
    body = "\n".join("+" + line for line in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n"
        f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}\n"
    )


TRUE_POSITIVES = [
    ("github_token", f'GITHUB_TOKEN = "{GH}"'),
    ("github_token", f"token: {PAT}"),
    ("aws_access_key", f"aws_access_key_id = {AWS}"),
    ("aws_access_key", f'aws_secret_access_key = "{AWS_SECRET}"'),
    ("secret_assignment", f"aws_secret_access_key = {AWS_SECRET}"),
    ("slack_token", f'client = WebClient(token="{SLACK}")'),
    ("private_key", KEY_BLOCK),
    ("private_key", "-----BEGIN " + "OPENSSH PRIVATE KEY-----"),
    ("private_key", "-----BEGIN " + "ENCRYPTED PRIVATE KEY-----"),
    ("anthropic_api_key", f"ANTHROPIC_API_KEY={ANTHROPIC}"),
    ("openai_api_key", f'openai.api_key = "{OPENAI}"'),
    ("stripe_access_key", f"stripe.api_key = '{STRIPE}'"),
    ("google_api_key", f"const key = '{GOOGLE}';"),
    ("secret_assignment", f'DB_PASSWORD = "{RANDOM}"'),
    ("secret_assignment", f'"client_secret": "{RANDOM}",'),
    ("secret_assignment", f"api_key: {RANDOM}"),
    ("secret_assignment", f'self.token: str = "{RANDOM}"'),
    ("secret_assignment", 'SECRET_KEY = "d41d8cd98f00b204e9800998ecf8427e3f786850"'),
]


@pytest.mark.parametrize(("kind", "line"), TRUE_POSITIVES)
def test_scanner_finds_credentials(kind: str, line: str) -> None:
    findings = scan_secrets(diff("app/settings.py", "import os", line))
    assert [(f.kind, f.path, f.line) for f in findings] == [(kind, "app/settings.py", 2)]
    assert RANDOM not in findings[0].redacted and len(findings[0].redacted) < 20


REALISTIC = [
    # lockfiles
    '"integrity": "sha512-Jx7WkQ0f9m2ZtLqK0yJ1dJgk2uZtF8ZQ3pWl3e2o9S9c8pZJ0sHqF7Zb1oY3mA2Q==",',
    '"resolved": "https://registry.npmjs.org/js-tokens/-/js-tokens-4.0.0.tgz",',
    '"node_modules/js-tokens": {',
    '"js-tokens": "^4.0.0",',
    'checksum = "b9a4e2f0c7d1a3b5e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"',
    'hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
    'wheels = [{ url = "https://files.pythonhosted.org/x.whl", hash = "sha256:aa11" }]',
    "tokenizers==0.19.1 \\",
    "    --hash=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "  resolution: {integrity: sha512-Jx7WkQ0f9m2ZtLqK0yJ1dJgk2uZtF8ZQ3pWl3e2o9S9c8pZJ0==}",
    # ids and hashes
    'user_id = "550e8400-e29b-41d4-a716-446655440000"',
    'session_token_id = "550e8400-e29b-41d4-a716-446655440000"',
    'commit_sha = "3f786850e387550fdab836ed7e6dc881de23001b"',
    'PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAA"',
    'img = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"',
    # code that names secrets without holding one
    'password = os.environ["DB_PASSWORD"]',
    'token = request.headers.get("Authorization", "")',
    'API_KEY_ENV = "OPENAI_API_KEY"',
    'secret_name = "prod/database/password"',
    'password_field = "password_confirmation_input"',
    'TOKEN_URL = "https://github.com/login/oauth/access_token"',
    'token: str = Field(default="", description="Installation token")',
    "max_tokens = 4096",
    "tokens_in = response.usage.input_tokens",
    "password: ${{ secrets.DB_PASSWORD }}",
    'api_key = "<your-api-key-goes-here>"',
    'OPENAI_API_KEY = "sk-your-key-here-replace-me-with-real"',
    'token = "ghp_' + "x" * 36 + '"',
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    'SESSION_COOKIE_NAME = "sessionid_cookie_name_v2"',
    'csrf_token_header = "HTTP_X_CSRFTOKEN_HEADER"',
    'password_reset_timeout = "PASSWORD_RESET_TIMEOUT_SECONDS"',
    'secret_path = "github.com/acme/app/secret-store-v2"',
    "def check_password(password: str) -> bool:",
    "auth_token = generate_token(user, expires_in=3600)",
    "risk-assessment-service-for-the-whole-platform-v2",
    "const skipLongDescriptionForAnythingHere = true;",
    "The word tokenization appears here: tokenization_strategy_for_english_v3",
]


def test_no_false_positives_on_realistic_code() -> None:
    text = diff("mixed.txt", *REALISTIC)
    assert scan_secrets(text) == []


def test_only_added_lines_count_and_line_numbers_follow_the_new_file() -> None:
    text = (
        "diff --git a/config.py b/config.py\n"
        "index 1111111..2222222 100644\n"
        "--- a/config.py\n"
        "+++ b/config.py\n"
        "@@ -10,4 +10,4 @@ class Settings:\n"
        "     debug = False\n"
        f'-    token = "{GH}"\n'
        '+    token = os.environ["GITHUB_TOKEN"]\n'
        "     region = 'eu'\n"
        f"+    backup = '{SLACK}'\n"
        "-    old = 1\n"
        "\\ No newline at end of file\n"
        "diff --git a/gone.py b/gone.py\n"
        "deleted file mode 100644\n"
        "--- a/gone.py\n"
        "+++ /dev/null\n"
        "@@ -1 +0,0 @@\n"
        f"-KEY = '{GH}'\n"
    )
    findings = scan_secrets(text)
    assert [(f.path, f.line, f.kind) for f in findings] == [("config.py", 13, "slack_token")]


def test_added_line_that_looks_like_a_header_is_still_scanned() -> None:
    text = diff("notes.md", "++ " + GH, "plain")
    assert [f.kind for f in scan_secrets(text)] == ["github_token"]


def test_check_diff_reports_secrets_as_violations() -> None:
    text = diff("deploy/.env", f"GITHUB_TOKEN={GH}")
    result = check_diff(changed("deploy/.env"), DEFAULT, diff_text=text)
    assert [(v.rule, v.path) for v in result.violations] == [
        ("secrets.github_token", "deploy/.env")
    ]
    assert "line 1 adds what looks like a GitHub token" in result.violations[0].message
    assert GH not in result.as_markdown()


# --- what the scanner reads exactly as git writes it ---------------------------------------


@pytest.mark.parametrize(
    "breaker", ["\x0c", "\r", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028"]
)
def test_characters_python_splits_at_do_not_hide_later_lines(breaker: str) -> None:
    """A form feed (or any other character ``str.splitlines`` breaks at and git does not) in
    an added line used to count twice against the hunk, which then "ended" early: the token
    on a later line was never scanned."""
    lines = [f"OPTION_{i} = {i}{breaker}" for i in range(4)] + [f'GITHUB_TOKEN = "{GH}"']
    findings = scan_secrets(diff("src/settings.py", *lines))
    assert [(f.kind, f.path, f.line) for f in findings] == [("github_token", "src/settings.py", 5)]


def test_a_diff_that_does_not_add_up_to_its_hunks_is_refused() -> None:
    fine = diff("a.py", "x = 1", "y = 2")
    short = fine.replace("+1,2 @@", "+1,1 @@")  # the second added line is beyond its hunk
    long = fine.replace("+1,2 @@", "+1,3 @@")  # the diff ends inside the hunk
    stray = fine + "+extra line between files\n"
    for text in (short, long, stray):
        with pytest.raises(DiffOutOfStep):
            scan_secrets(text)
        result = check_diff(changed("a.py", added=2), DEFAULT, diff_text=text)
        assert [(v.rule, v.path) for v in result.violations] == [("secrets.unscanned", "a.py")]
        assert "could not be scanned for secrets" in result.violations[0].message
    assert check_diff(changed("a.py", added=2), DEFAULT, diff_text=fine).ok


def test_a_quoted_header_names_the_exact_path() -> None:
    text = diff("x", f'TOKEN = "{GH}"').replace("+++ b/x", '+++ "b/dir/x\\376\\t\\"y\\""')
    (finding,) = scan_secrets(text)
    assert finding.path == 'dir/x\udcfe\t"y"'  # the bytes git quoted, not the quoting


def test_what_a_binary_file_adds_is_scanned() -> None:
    """A NUL byte makes git print "Binary files differ" instead of lines."""
    new = b'{"github_token": "' + GH.encode() + b'"}\n\0\x89PNG\n'
    (finding,) = scan_binary("deploy.json", new)
    assert (finding.kind, finding.path, finding.line) == ("github_token", "deploy.json", 1)
    assert GH not in finding.redacted
    # what the file already held before the change is not the agent's addition
    assert scan_binary("deploy.json", new + b"more\0", old=new) == []
    binary = AddedBinary("deploy.json", new)
    result = check_diff(
        [ChangedFile("deploy.json", "added", binary=True, size=len(new))], DEFAULT,
        binaries=[binary],
    )  # fmt: skip
    assert [(v.rule, v.path) for v in result.violations] == [
        ("secrets.github_token", "deploy.json")
    ]


@pytest.mark.parametrize("path", [".github/workflows", ".github"])
def test_the_folders_of_protected_paths_are_protected_themselves(path: str) -> None:
    """``.github/workflows`` (or ``.github``) made a link to a folder of workflows elsewhere:
    no path under ``.github/workflows/`` is in the diff, but the workflows changed."""
    link = ChangedFile(path, "added", added=1)
    result = check_diff([link], parse_repo_config("paths:\n  allow: ['**']\n"))
    assert [(v.rule, v.path) for v in result.violations] == [("paths.protected", path)]
    assert check_diff([link], parse_repo_config("paths:\n  deny: []\n"), protected=()).ok
    assert check_diff(changed(".github/dependabot.yml", ".githubx", "ci/workflows"), DEFAULT).ok
    assert protected_folders(PROTECTED_PATHS) == {
        ".github", ".github/workflows", ".github/bosun.yml", ".bosun.yml"
    }  # fmt: skip
