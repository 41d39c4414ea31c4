"""Credentials in text, found (the diff scanner, ``bot.domain.policy``) and hidden (the logs,
``bot.logs``; host-side git's output, ``sandboxes.git``): one rule set for all three.

The rules are the detectors of the ``detect-secrets`` package — every regular-expression
detector it ships, so an upgrade brings its new ones — but for its public-IP detector (an
address is not a credential). Its keyword and entropy detectors are not used: they block lock
files, hashes and base64 test data. Bosun adds rules for what the package does not know: the
model API keys it handles itself (Anthropic, OpenAI project and service keys, Google API keys
such as Gemini's), GitHub's fine-grained tokens and any PEM private key header (the package
lists nine, not PKCS#8's ``ENCRYPTED PRIVATE KEY``), and one heuristic of its own: a value with
the look of a random key assigned to a secret-sounding name (``DB_PASSWORD = "…"``).

A found value is dropped when it is a placeholder (``ghp_xxxx…``, ``sk-your-key-here``,
documentation's ``AKIAIOSFODNN7EXAMPLE``), a template (``${TOKEN}``), a sequence
(``abcdef…``) or too uniform to be random.

Pure: no I/O, no settings; ``detect-secrets`` is used for its detectors alone (never its
settings, baselines or verification, which would call the providers' APIs).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from re import _constants, _parser  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package is imported on first use (~0.3 s): not for `bosun --help`
    from detect_secrets.plugins.base import RegexBasedDetector

REDACTED = "[redacted]"

_SKIPPED_DETECTORS = frozenset({"IPPublicDetector"})
"""detect-secrets detectors that do not find credentials."""
_RANDOM_ONLY = frozenset({"basic_auth_credentials"})


@dataclass(frozen=True)
class Rule:
    """One kind of credential and how to find it in a line."""

    kind: str
    """Snake-case name (``github_token``, ``json_web_token``): the scanner's rule is
    ``secrets.<kind>``."""
    description: str
    """What it is, in a sentence: "GitHub token", "JSON web token"."""
    patterns: tuple[re.Pattern[str], ...]
    extract: Callable[[re.Match[str], str], str | None]
    """The credential a match of one of ``patterns`` in a line is, as it appears there, or
    ``None`` when the match is none."""
    source: str
    """``detect-secrets`` or ``bosun``."""
    random_only: bool = False
    """Report a value only when it looks random (a URL's password: ``scott:tiger`` and
    ``user:password`` fill documentation)."""


def _kind(secret_type: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")


_COMMON_WORDS = frozenset(
    {"token", "tokens", "key", "credentials", "secret", "access", "account", "storage", "bot",
     "basic", "auth", "private", "web"}
)  # fmt: skip


def _prose(secret_type: str) -> str:
    """detect-secrets' title-cased name as it reads in a sentence: "JSON Web Token" → "JSON web
    token", "Private Key" → "private key" (names and acronyms kept)."""
    return " ".join(w.lower() if w.lower() in _COMMON_WORDS else w for w in secret_type.split())


def _package_rules() -> list[Rule]:
    rules: list[Rule] = []
    from detect_secrets import plugins as ds_plugins
    from detect_secrets.plugins.base import RegexBasedDetector

    for module_info in sorted(pkgutil.iter_modules(ds_plugins.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{ds_plugins.__name__}.{module_info.name}")
        for name, cls in sorted(inspect.getmembers(module, inspect.isclass)):
            if (
                cls.__module__ != module.__name__
                or not issubclass(cls, RegexBasedDetector)
                or inspect.isabstract(cls)
                or name in _SKIPPED_DETECTORS
            ):
                continue
            secret_type = str(cls.secret_type)
            kind = _kind(secret_type)
            detector = cls()
            rules.append(
                Rule(
                    kind,
                    _prose(secret_type),
                    tuple(detector.denylist),
                    _detector_extract(detector),
                    "detect-secrets",
                    random_only=kind in _RANDOM_ONLY,
                )
            )
    return rules


def _required_text(pattern: re.Pattern[str]) -> str:
    """The longest run of literal characters every match of ``pattern`` holds (its top-level
    sequence and the groups in it, as the parser reads them: ``(ghp|gho)_`` → ``gh``), or
    ``""``."""
    best = ""

    def walk(items: Any) -> None:
        nonlocal best
        run = ""
        for op, value in items:
            if op is _constants.LITERAL:
                run += chr(value)
                continue
            best = max(best, run, key=len)
            run = ""
            if op is _constants.SUBPATTERN:  # a group without a quantifier: required too
                walk(value[3])
        best = max(best, run, key=len)

    walk(_parser.parse(pattern.pattern, pattern.flags))
    return best if len(best) >= 2 else ""


_BLOB = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _inside_blob(line: str, start: int, end: int) -> bool:
    """Whether ``line[start:end]`` is glued to base64 characters on both sides: a piece of
    encoded data (a wasm module, an image), not a credential someone wrote down."""
    return start > 0 and end < len(line) and line[start - 1] in _BLOB and line[end] in _BLOB


def _detector_extract(detector: RegexBasedDetector) -> Callable[[re.Match[str], str], str | None]:
    """The credential in a match of a detector's pattern, as it appears in the line.

    ``analyze_string`` yields a pattern's groups when it has any, which is sometimes the
    credential (``aws…key = "<group>"``, a URL's password) and sometimes only part of its
    shape (``(ghp|gho|…)_…``, ``glcbt-(ab_)?…``): the longest group is taken when it ends the
    match (but for a closing quote or ``@``) and does not start it, else the whole match. A
    match in the middle of a run of base64 characters is data, not a credential. A match
    counts only when ``analyze_string`` accepts it (the JWT detector checks its parts
    decode)."""

    def extract(match: re.Match[str], line: str) -> str | None:
        whole = match.group(0)
        if _inside_blob(line, match.start(), match.end()):
            return None
        if not any(detector.analyze_string(whole)):
            return None
        groups = match.re.groups
        spans = [match.span(i) for i in range(1, groups + 1) if match.group(i)]
        if spans:
            start, end = max(spans, key=lambda span: span[1] - span[0])
            if start > match.start() and end >= match.end() - 2:
                return line[start:end]
        return whole

    return extract


def _group_one(match: re.Match[str], line: str) -> str | None:
    return match.group(1)


def _bosun(kind: str, description: str, regex: str) -> Rule:
    """One of Bosun's rules: a regular expression whose group 1 is the credential."""
    return Rule(kind, description, (re.compile(regex),), _group_one, "bosun")


_BOSUN_RULES = (
    _bosun("anthropic_api_key", "Anthropic API key", r"(?<![\w-])(sk-ant-[A-Za-z0-9_-]{32,})"),
    _bosun(
        "openai_api_key",
        "OpenAI API key",
        r"(?<![\w-])(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,})",
    ),
    _bosun("google_api_key", "Google API key", r"\b(AIza[0-9A-Za-z_-]{35})(?![0-9A-Za-z_-])"),
    _bosun("github_token", "GitHub token", r"\b(github_pat_[A-Za-z0-9_]{50,255})"),
    # Any PEM private key header (PKCS#8 "ENCRYPTED PRIVATE KEY" is not in the package's list).
    _bosun(
        "private_key",
        "private key",
        r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)",
    ),
)


@cache
def rules() -> tuple[Rule, ...]:
    """Every rule, the package's first (earlier rules claim their span of a line first)."""
    return (*_package_rules(), *_BOSUN_RULES)


@dataclass(frozen=True)
class _Check:
    rule: Rule
    pattern: re.Pattern[str]
    text: str
    """Text every match holds (``""``: none known); absent from a line, the pattern is not
    searched: a substring test is far cheaper, and most lines match none of some fifty
    patterns."""
    lowered: bool
    """Whether ``text`` is looked for in the lower-cased line (a case-insensitive pattern)."""


@cache
def _checks() -> tuple[_Check, ...]:
    checks = []
    for rule in rules():
        for pattern in rule.patterns:
            text = _required_text(pattern)
            lowered = bool(pattern.flags & re.IGNORECASE)
            checks.append(_Check(rule, pattern, text.lower() if lowered else text, lowered))
    return tuple(checks)


# --- the assignment heuristic -------------------------------------------------------------

_SENSITIVE_NAME = (
    r"[A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|auth[_-]?key|private[_-]?key|client[_-]?secret|credentials?)[A-Za-z0-9_.-]*"
)
_ASSIGNMENT = re.compile(
    rf"(?i)(?<![A-Za-z0-9_.-])({_SENSITIVE_NAME})[\"']?\s*(?::=|=>|==|=|:)\s*"
    r"(?:[A-Za-z_][\w\[\]., |]*\s*=\s*)?"  # a type annotation: `token: str = "..."`
    r"(?:\"([^\"\s]{16,})\"|'([^'\s]{16,})'|`([^`\s]{16,})`"
    r"|([^\s\"'`,;()\[\]{}<>$%]{16,})(?=$|[\s,;#]))"
)
_SENSITIVE_WORDS = ("pass", "pwd", "secret", "token", "key", "credential")
"""One of these is in every name ``_SENSITIVE_NAME`` matches (lower-cased)."""
ASSIGNMENT_KIND = "secret_assignment"
ASSIGNMENT_DESCRIPTION = "hard-coded secret"

_PLACEHOLDERS = (
    "example", "placeholder", "changeme", "change_me", "your", "xxxx", "****", "redacted",
    "dummy", "sample", "${", "{{", "%(", "<", "...", "fake", "insert", "replace",
)  # fmt: skip
_KNOWN_EXAMPLES = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_WORDY_PART = re.compile(r"^(?:[A-Za-z][a-z]*|[A-Z]+)\d*$|^\d+$")


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``."""
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


@cache
def _is_sequential_string() -> Callable[[str], bool]:
    """detect-secrets' test for ``ABCDEF…``, ``123456…``, ``0123…ABCDEF`` and the like."""
    from detect_secrets.filters.heuristic import is_sequential_string

    return is_sequential_string


def is_placeholder(value: str) -> bool:
    """Documentation's stand-ins, templates, sequences and values too uniform to be keys."""
    lowered = value.lower()
    return (
        value in _KNOWN_EXAMPLES
        or any(p in lowered for p in _PLACEHOLDERS)
        or shannon_entropy(value) < 2.5
        or _is_sequential_string()(value)
    )


def looks_random(value: str) -> bool:
    """Whether a string assigned to a secret-sounding name looks like a real credential.

    Placeholders, URLs, paths, UUIDs and identifier-like values (words and numbers joined by
    ``_``, ``-`` or ``.``) are not. Hex needs 32+ characters and 3.0 bits/char (keys, not
    version numbers); other strings need digits or symbols mixed with letters and 3.7
    bits/char, which ordinary words and camelCase names do not reach.
    """
    if is_placeholder(value):
        return False
    lowered = value.lower()
    if lowered.startswith(("http://", "https://", "file:", "/", "./", "../")):
        return False
    if _UUID.match(value):
        return False
    parts = re.split(r"[_./-]+", value.strip("_./-"))
    if len(parts) >= 2 and all(_WORDY_PART.match(part) for part in parts):
        return False  # an identifier or setting name: SESSION_COOKIE_AGE_1209600, test_pw_1
    entropy = shannon_entropy(value)
    if _HEX.match(value):
        return len(value) >= 32 and entropy >= 3.0
    has_digit = any(c.isdigit() for c in value)
    has_symbol = any(c in "+/=_-" for c in value)
    has_upper = any(c.isupper() for c in value)
    has_lower = any(c.islower() for c in value)
    if not (has_lower or has_upper) or not (has_digit or (has_symbol and has_upper and has_lower)):
        return False
    return entropy >= 3.7


# --- finding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A credential in a line: its kind, the value and where it is."""

    kind: str
    description: str
    secret: str
    start: int
    end: int


def find_secrets(line: str) -> Iterator[Found]:
    """The credentials in ``line``, each span reported once (by the first rule that finds it;
    ``rules()`` order), placeholders left out."""
    claimed: list[tuple[int, int]] = []

    def claim(secret: str) -> tuple[int, int] | None:
        at = line.find(secret)
        while at >= 0:
            span = (at, at + len(secret))
            if not any(s < span[1] and span[0] < e for s, e in claimed):
                claimed.append(span)
                return span
            at = line.find(secret, at + 1)
        return None

    lowered_line: str | None = None
    for check in _checks():
        if check.text:
            if check.lowered:
                if lowered_line is None:
                    lowered_line = line.lower()
                if check.text not in lowered_line:
                    continue
            elif check.text not in line:
                continue
        rule = check.rule
        for match in check.pattern.finditer(line):
            secret = rule.extract(match, line)
            if not secret or secret in _KNOWN_EXAMPLES:
                continue
            if rule.kind != "private_key" and is_placeholder(secret):
                continue  # ghp_xxxxxxxx..., sk-your-key-here
            if rule.random_only and not looks_random(secret):
                continue
            span = claim(secret)
            if span is not None:
                yield Found(rule.kind, rule.description, secret, *span)
    if lowered_line is None:
        lowered_line = line.lower()
    if not any(word in lowered_line for word in _SENSITIVE_WORDS):
        return
    for match in _ASSIGNMENT.finditer(line):
        index = next(i for i in range(2, 6) if match.group(i) is not None)
        value = match.group(index)
        start, end = match.span(index)
        if any(s < end and start < e for s, e in claimed):
            continue
        if looks_random(value):
            claimed.append((start, end))
            yield Found(ASSIGNMENT_KIND, ASSIGNMENT_DESCRIPTION, value, start, end)


# --- hiding -------------------------------------------------------------------------------

_PEM_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
    r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)"
)
"""A private key whole, to its end line (or the end of the text, when it was cut)."""
_URL_USERINFO = re.compile(r"(?i)(?<=[a-z0-9+.-]://)[^/@\s]+(?=@)")
"""A URL's ``user:password`` (or a token alone: ``https://TOKEN@host``)."""
_GIT_CREDENTIAL = re.compile(r"x-access-token:[^@\s]+")


def redact_text(text: str, marker: str = REDACTED) -> str:
    """``text`` with every credential the rules find replaced by ``marker``: private key
    blocks, URL credentials, and each line's findings."""
    if not text:
        return text
    text = _PEM_BLOCK.sub(marker, text)
    text = _URL_USERINFO.sub(marker, text)
    text = _GIT_CREDENTIAL.sub(marker, text)
    out: list[str] = []
    for line in text.split("\n"):
        found = sorted(find_secrets(line), key=lambda f: f.start)
        if not found:
            out.append(line)
            continue
        pieces: list[str] = []
        at = 0
        for finding in found:
            if finding.start < at:
                continue
            pieces += [line[at : finding.start], marker]
            at = finding.end
        pieces.append(line[at:])
        out.append("".join(pieces))
    return "\n".join(out)
