"""The shared credential rules (``bot.domain.secrets``): detect-secrets' detectors and Bosun's
own, as the diff scanner, the logs and host-side git's output use them.

Every credential here is assembled at run time from a seeded generator, in the shape the
provider issues, so this file holds none and the examples are the same on every run."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from pathlib import Path

import pytest

from bot.domain.policy import check_diff, scan_secrets
from bot.domain.repoconfig import RepoConfig
from bot.domain.secrets import find_secrets, redact_text, rules
from bot.logs import redact_text as log_redact
from sandboxes.git import Redactor
from tests.test_policy import changed, diff

ROOT = Path(__file__).resolve().parent.parent
rng = random.Random(19)
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"


def pick(alphabet: str, count: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(count))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = ".".join(
    (
        b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        b64url(json.dumps({"sub": "4021", "name": "deploy-bot", "iat": 1765100000}).encode()),
        b64url(rng.randbytes(32)),
    )
)
AZURE_KEY = base64.b64encode(rng.randbytes(64)).decode()  # 88 characters, "==" at the end
GITLAB = "glpat-" + pick(URLSAFE, 20)
NPM = "npm_" + pick(ALNUM, 36)
PYPI = "pypi-" + "AgEIcHlwaS5vcmc" + pick(URLSAFE, 120)  # a macaroon for pypi.org
TWILIO_SID = "AC" + pick("0123456789abcdef", 32)
TWILIO_KEY = "SK" + pick("0123456789abcdef", 32)

MISSED_BEFORE = [
    # (kind, file, the added line, the credential in it)
    ("json_web_token", "api/client.http", f"Authorization: Bearer {JWT}", JWT),
    (
        "azure_storage_account_access_key",
        "deploy/appsettings.json",
        f'"Storage": "DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey={AZURE_KEY}'
        ';EndpointSuffix=core.windows.net",',
        AZURE_KEY,
    ),
    (
        "gitlab_token",
        "ci/mirror.sh",
        f'git push "https://oauth2:{GITLAB}@gitlab.com/a/b.git"',
        GITLAB,
    ),
    ("npm_tokens", ".npmrc", f"//registry.npmjs.org/:_authToken={NPM}", NPM),
    ("pypi_token", ".pypirc", f"password = {PYPI}", PYPI),
    ("twilio_api_key", "sms/send.py", f'client = Client("{TWILIO_SID}", auth)', TWILIO_SID),
    ("twilio_api_key", "sms/keys.ts", f"const keySid = '{TWILIO_KEY}';", TWILIO_KEY),
]


@pytest.mark.parametrize(("kind", "path", "line", "secret"), MISSED_BEFORE)
def test_credentials_the_hand_written_patterns_missed_are_caught(
    kind: str, path: str, line: str, secret: str
) -> None:
    text = diff(path, "# settings", "", line, "")
    findings = scan_secrets(text)
    assert [(f.kind, f.path, f.line) for f in findings] == [(kind, path, 3)]
    assert secret[4:12] not in findings[0].redacted and "chars" in findings[0].redacted
    result = check_diff(changed(path), RepoConfig(), diff_text=text)
    (violation,) = result.violations
    assert violation.rule == f"secrets.{kind}" and violation.path == path
    assert violation.message.startswith("line 3 adds what looks like a")
    assert secret not in result.as_markdown()
    # and the same rules hide it from the logs and from git's output
    assert secret not in log_redact(f"upstream said: {line}")
    assert secret not in Redactor()(f"remote: {line}\nfatal: could not read")


def test_the_rules_are_the_packages_detectors_plus_bosuns() -> None:
    by_source: dict[str, set[str]] = {}
    for rule in rules():
        by_source.setdefault(rule.source, set()).add(rule.kind)
    assert {
        "json_web_token", "azure_storage_account_access_key", "gitlab_token", "npm_tokens",
        "pypi_token", "twilio_api_key", "github_token", "aws_access_key", "private_key",
        "slack_token", "stripe_access_key",
    } <= by_source["detect-secrets"]  # fmt: skip
    assert "ip_public" not in by_source["detect-secrets"]  # an address is no credential
    assert by_source["bosun"] == {
        "anthropic_api_key", "openai_api_key", "google_api_key", "github_token", "private_key"
    }  # fmt: skip


# --- what must not block a diff -------------------------------------------------------------


def _scan_file(path: str, text: str) -> list[tuple[str, int]]:
    lines = text.split("\n")
    return [(f.kind, f.line) for f in scan_secrets(diff(path, *lines))]


@pytest.mark.parametrize(
    "path",
    ["uv.lock", "sandboxes/images/agent/clis/package-lock.json", "bench/probot/package-lock.json"],
)
def test_real_lock_files_pass(path: str) -> None:
    """Thousands of sha256 and sha512 hashes, registry URLs and package names."""
    text = (ROOT / path).read_text()
    assert text.count("sha") > 30
    assert _scan_file(path, text) == []


def test_generated_lock_files_ids_and_base64_data_pass() -> None:
    data = random.Random(7)
    npm = [
        f'    "node_modules/pkg-{i}": {{\n      "version": "1.{i}.0",\n'
        f'      "resolved": "https://registry.npmjs.org/pkg-{i}/-/pkg-{i}-1.{i}.0.tgz",\n'
        f'      "integrity": "sha512-{base64.b64encode(data.randbytes(64)).decode()}"\n    }},'
        for i in range(300)
    ]
    poetry = [
        f'    {{file = "pkg_{i}-1.0-py3-none-any.whl", hash = "sha256:'
        f'{hashlib.sha256(data.randbytes(8)).hexdigest()}"}},'
        for i in range(300)
    ]
    ids = [
        line
        for _ in range(300)
        for line in (
            f'request_id = "{uuid.UUID(int=data.getrandbits(128), version=4)}"',
            f'"session_token_id": "{uuid.UUID(int=data.getrandbits(128), version=4)}",',
            f"api_key_id: {uuid.UUID(int=data.getrandbits(128), version=4)}",
            f'commit = "{hashlib.sha1(data.randbytes(8)).hexdigest()}"',
            f'expected_digest = "{hashlib.sha256(data.randbytes(8)).hexdigest()}"',
        )
    ]
    fixtures = [base64.b64encode(data.randbytes(57)).decode() for _ in range(1000)]  # 76 a line
    inline = [
        f'PAYLOAD_{i} = b64decode("{base64.b64encode(data.randbytes(48)).decode()}")'
        for i in range(300)
    ]
    uri = "data:image/png;base64," + base64.b64encode(data.randbytes(3000)).decode()
    scanned = {
        "package-lock.json": "\n".join(npm),
        "poetry.lock": "\n".join(poetry),
        "src/ids.py": "\n".join(ids),
        "tests/fixtures/blob.b64": "\n".join(fixtures),
        "tests/test_codec.py": "\n".join(inline),
        "web/logo.css": f".logo {{ background: url({uri}); }}",
    }
    assert {path: _scan_file(path, text) for path, text in scanned.items()} == {
        path: [] for path in scanned
    }


def test_redaction_keeps_the_text_around_a_credential() -> None:
    line = f"push failed for https://ci:{GITLAB}@gitlab.example/a.git with key {TWILIO_KEY} (retry)"
    redacted = redact_text(line)
    assert redacted == (
        "push failed for https://[redacted]@gitlab.example/a.git with key [redacted] (retry)"
    )
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----"
    assert redact_text(f"a\n{pem}\nb") == "a\n[redacted]\nb"
    assert redact_text("max_tokens=4096 model=claude-sonnet-4-5") == (
        "max_tokens=4096 model=claude-sonnet-4-5"
    )


def test_a_placeholder_in_a_credential_shape_is_not_reported() -> None:
    for line in (
        "//registry.npmjs.org/:_authToken=npm_" + "x" * 36,
        "GITLAB_TOKEN=glpat-" + "your-token-goes-here",
        "AccountKey=" + "A" * 86 + "==",
    ):
        assert list(find_secrets(line)) == [], line


def test_a_pattern_is_skipped_only_where_it_cannot_match() -> None:
    """Each pattern is searched only in lines holding the text every match of it holds: over
    every line these tests use, and each with its case flipped, no pattern matches a line
    its skip test would have passed over."""
    from bot.domain.secrets import _checks
    from tests.test_policy import REALISTIC, TRUE_POSITIVES

    lines = [line for _, _, line, _ in MISSED_BEFORE] + [line for _, line in TRUE_POSITIVES]
    lines += REALISTIC + [line.swapcase() for line in lines]
    gated = [check for check in _checks() if check.text]
    assert len(gated) >= 40  # most of the package's patterns have such a text
    matched = 0
    for line in lines:
        for check in gated:
            if check.pattern.search(line):
                matched += 1
                haystack = line.lower() if check.lowered else line
                assert check.text in haystack, (check.rule.kind, check.pattern.pattern, line)
    assert matched >= len(MISSED_BEFORE)
