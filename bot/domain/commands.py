"""PR comment commands (SPEC §8): the grammar, turned into typed commands. Pure, no I/O.

``parse_commands(body)`` finds every ``/verb args`` line of a comment and returns a
:class:`ParsedComment`: the recognised commands, argument errors, and unknown verbs with a
"did you mean" suggestion. What a command *does* to a run is decided in ``bot.domain.review``.

Grammar (``docs/commands.md`` has the user's version):

* A command is ``/verb`` at the start of a line (up to three spaces of indentation), the verb
  case-insensitive, followed by whitespace or the end of the line.
* Fenced code blocks (``` and ~~~, any length), indented code blocks, ``>`` quotes and HTML
  comments are ignored (``bot.domain.triggers.command_lines`` decides the first three).
* ``/retry``, ``/reject`` and ``/bosun steer`` take the text to the end of the comment,
  following lines included (lines that are commands themselves excepted). Other verbs take
  the rest of their line.
* One state-changing command per comment; ``/status`` and ``/help`` may accompany it.
* ``/bosun steer <message>`` (or ``/steer``) is the steer command, its message the text to the
  end of the comment, at most ``MAX_STEER_CHARS`` characters.
* Other ``/bosun ...`` lines belong to ``bot.domain.triggers`` and are skipped here. A line
  such as ``/usr/bin/env`` or ``/api/runs`` (a slash word followed by ``/`` or ``.``) is a
  path, not a command attempt, and unknown verbs without a close match (other bots' ``/cc``,
  ``/assign``) are recorded without a reply.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from bot.domain.limits import clip
from bot.domain.repoconfig import PERMISSION_RANK
from bot.domain.steering import MAX_STEER_CHARS
from bot.domain.triggers import command_lines, parse_mention

Who = Literal["anyone", "requester_or_write", "write", "approver"]
Source = Literal["comment", "button", "review", "api", "cli", "dashboard"]


@dataclass(frozen=True)
class VerbSpec:
    """One verb: how to write it, what it does, who may use it."""

    verb: str
    usage: str
    summary: str
    who: Who
    changes_state: bool = True


VERBS: dict[str, VerbSpec] = {
    spec.verb: spec
    for spec in (
        VerbSpec(
            "approve",
            "/approve [sha] [path…]",
            "approve the change (or only some paths)",
            "approver",
        ),
        VerbSpec("reject", "/reject <reason>", "reject the change; the run ends", "approver"),
        VerbSpec(
            "retry",
            "/retry <feedback>",
            "run the agent again with your feedback",
            "requester_or_write",
        ),
        VerbSpec("cancel", "/cancel", "stop a run before it is review-ready", "requester_or_write"),
        VerbSpec(
            "resume", "/resume", "continue a timed-out run from its branch", "requester_or_write"
        ),
        VerbSpec(
            "steer",
            "/bosun steer <message>",
            "tell the running agent something: it reads it at its next model request",
            "requester_or_write",
        ),
        VerbSpec("hold", "/hold", "keep the run where it is: no start, no merge", "write"),
        VerbSpec("unhold", "/unhold (or /hold cancel)", "lift a hold", "write"),
        VerbSpec("budget", "/budget +N", "raise the run's budget by N dollars", "write"),
        VerbSpec("status", "/status", "show the run's state and approvals", "anyone", False),
        VerbSpec("help", "/help", "show this list", "anyone", False),
    )
}

STATE_CHANGING: frozenset[str] = frozenset(v for v, s in VERBS.items() if s.changes_state)
MAX_COMMANDS = 20
"""Command lines read from one comment; more is an error (and bounds the work per comment)."""
REPLY_LINES = 10
"""Findings a correction reply lists before it says how many more there were."""
MAX_REVIEW_FEEDBACK = 30_000
"""Characters of a "Request changes" review (body and line comments) carried as feedback."""
TEXT_VERBS: frozenset[str] = frozenset({"retry", "reject", "steer"})
"""Verbs whose argument runs to the end of the comment."""

ALIASES: dict[str, str] = {
    "rerun": "retry",
    "re-run": "retry",
    "stop": "cancel",
    "abort": "cancel",
    "pause": "hold",
    "unpause": "unhold",
    "continue": "resume",
}
"""Words that are not verbs but clearly mean one: they get a "did you mean" reply."""


@dataclass(frozen=True)
class Command:
    """One recognised command. ``line_no`` is 1-based (0 for buttons and reviews)."""

    verb: str
    args: str
    raw_line: str
    line_no: int
    sha: str | None = None
    """``/approve <sha>``: the 7 to 40 hex commit the approver looked at."""
    paths: tuple[str, ...] = ()
    """``/approve <path>…``: the globs to keep (partial approval)."""
    revoke: bool = False
    """``/approve cancel``."""
    amount: float | None = None
    """``/budget +N``: dollars to add."""
    source: Source = "comment"

    @property
    def changes_state(self) -> bool:
        return self.verb in STATE_CHANGING

    @property
    def name(self) -> str:
        """``approve cancel`` for a revocation, else the verb (for audit rows and replies)."""
        return "approve cancel" if self.revoke else self.verb


@dataclass(frozen=True)
class CommandError:
    """A command Bosun recognised but cannot run as written."""

    message: str
    line_no: int
    verb: str | None = None


@dataclass(frozen=True)
class UnknownCommand:
    """A ``/word`` line that is not a verb; ``suggestion`` is set for a near miss."""

    word: str
    raw_line: str
    line_no: int
    suggestion: str | None


@dataclass(frozen=True)
class ParsedComment:
    commands: tuple[Command, ...] = ()
    errors: tuple[CommandError, ...] = ()
    unknown: tuple[UnknownCommand, ...] = ()

    @property
    def suggestions(self) -> tuple[UnknownCommand, ...]:
        return tuple(u for u in self.unknown if u.suggestion)

    @property
    def action(self) -> Command | None:
        """The comment's one state-changing command, or None.

        None also when anything in the comment is in doubt (an argument error, a second
        state-changing command, a near miss of a state-changing verb): Bosun then only replies.
        """
        doubtful = any(u.suggestion in STATE_CHANGING for u in self.unknown)
        if self.errors or doubtful:
            return None
        return next((c for c in self.commands if c.changes_state), None)

    @property
    def queries(self) -> tuple[Command, ...]:
        """``/status`` and ``/help`` commands, which may accompany an action."""
        return tuple(c for c in self.commands if not c.changes_state)

    def reply(self) -> str | None:
        """What to tell the commenter about errors and near misses, or None.

        Bounded whatever the comment holds: at most ``REPLY_LINES`` findings, then how many
        more there were, each quoting at most a few words of the comment."""
        lines = [f"- line {e.line_no}: {e.message}" for e in self.errors]
        for u in self.suggestions:
            lines.append(
                f"- line {u.line_no}: `/{clip(u.word, 40)}` is not a Bosun command; "
                f"did you mean `/{u.suggestion}`?"
            )
        if not lines:
            return None
        if len(lines) > REPLY_LINES:
            more = len(lines) - REPLY_LINES
            lines = [*lines[:REPLY_LINES], f"- … and {more} more like these"]
        tail = "Nothing was done. Reply `/help` for the list of commands."
        return "\n".join(["Bosun could not act on this comment:", *lines, "", tail])


_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_SLASH = re.compile(r"^ {0,3}/(?P<word>[A-Za-z][\w-]*)(?P<punct>[.!:,;]*)(?P<rest>(?:[ \t].*)?)$")
_BOSUN_STEER = re.compile(r"^steer(?P<punct>[.!:,;]*)(?P<rest>(?:[ \t].*)?)$", re.IGNORECASE)
_HEX = re.compile(r"^[0-9a-fA-F]{7,40}$")
_AMOUNT = re.compile(
    r"^(?P<sign>[+-]?)\s*\$?\s*(?P<n>\d+(?:\.\d{1,2})?|\.\d{1,2})\s*(?:\$|usd|dollars?)?$",
    re.IGNORECASE,
)


def _blank_html_comments(body: str) -> str:
    """HTML comments are not rendered, so they cannot hold commands; keep the line numbers."""
    return _HTML_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), body)


def suggest(word: str) -> str | None:
    """The verb a near miss probably meant (``aprove`` → ``approve``), or None."""
    folded = word.casefold()
    if folded in ALIASES:
        return ALIASES[folded]
    if len(folded) < 3:
        return None
    close = difflib.get_close_matches(folded, list(VERBS), n=1, cutoff=0.75)
    return close[0] if close else None


def _approve(line: str, line_no: int, args: str) -> Command | CommandError:
    tokens = [t.strip("`,;") for t in args.split()]
    tokens = [t for t in tokens if any(ch.isalnum() or ch in "*?/." for ch in t)]
    if tokens and tokens[0].casefold() == "cancel":
        if len(tokens) > 1:
            return CommandError("`/approve cancel` takes nothing after it.", line_no, "approve")
        return Command("approve", args, line, line_no, revoke=True)
    sha = None
    if tokens and _HEX.match(tokens[0]):
        sha, tokens = tokens[0].lower(), tokens[1:]
    return Command("approve", args, line, line_no, sha=sha, paths=tuple(tokens))


def parse_amount(text: str) -> float | str:
    """Dollars from ``+N`` (``+5``, ``+$2.50``, ``+10 USD``), or a message saying what is wrong."""
    text = text.strip()
    match = _AMOUNT.match(text) or _AMOUNT.match(text.split(maxsplit=1)[0] if text else "")
    if not text:
        return "`/budget` needs an amount: `/budget +5` raises the budget by $5."
    if match is None:
        return f"`{clip(text, 40)}` is not an amount; write `/budget +5` to raise it by $5."
    amount = float(match.group("n"))
    if match.group("sign") == "-":
        return "a budget can only be raised; `/budget +N` adds N dollars."
    if not match.group("sign"):
        n = clip(match.group("n"), 20)
        return f"write `/budget +{n}` (with `+`) to raise the budget by that much."
    if amount <= 0:
        return "the amount must be more than zero, e.g. `/budget +5`."
    return amount


def _command(verb: str, line: str, line_no: int, args: str, tail: str) -> Command | CommandError:
    if verb == "approve":
        return _approve(line, line_no, args)
    if verb in TEXT_VERBS:
        text = "\n".join(part for part in (args, tail) if part).strip()
        if verb == "steer" and not text:
            message = "`/bosun steer` needs a message: `/bosun steer use the v2 API instead`."
            return CommandError(message, line_no, verb)
        if verb == "steer" and len(text) > MAX_STEER_CHARS:
            message = (
                f"a steering message is at most {MAX_STEER_CHARS:,} characters (this one has "
                f"{len(text):,}); say it shorter."
            )
            return CommandError(message, line_no, verb)
        return Command(verb, text, line, line_no)
    if verb == "hold" and args.strip().strip("`").casefold() == "cancel":
        return Command("unhold", args, line, line_no)  # Prow's grammar: /hold cancel lifts it
    if verb == "budget":
        amount = parse_amount(args)
        if isinstance(amount, str):
            return CommandError(amount, line_no, verb)
        return Command(verb, args, line, line_no, amount=amount)
    return Command(verb, args, line, line_no)


def _conflict(commands: list[Command]) -> CommandError | None:
    acting: list[Command] = []
    for command in commands:
        if command.changes_state and not any(
            (c.verb, c.args) == (command.verb, command.args) for c in acting
        ):
            acting.append(command)
    if len(acting) < 2:
        return None
    first, second = acting[0], acting[1]
    return CommandError(
        f"one state-changing command per comment: found `/{first.name}` (line "
        f"{first.line_no}) and `/{second.name}` (line {second.line_no}); post them separately.",
        second.line_no,
    )


def parse_commands(body: str) -> ParsedComment:
    """Every command, argument error and unknown verb in one comment body."""
    text = _blank_html_comments(body.replace("\r\n", "\n").replace("\r", "\n"))
    lines = text.split("\n")
    found: list[tuple[int, str, str, str]] = []  # (index, verb-or-word, rest, line)
    unknown: list[UnknownCommand] = []
    for index, line in command_lines(text):
        match = _SLASH.match(line)
        if match is None:
            continue
        word, rest = match.group("word"), match.group("rest").strip()
        verb = word.casefold()
        if verb == "bosun":
            steer = _BOSUN_STEER.match(rest)
            if steer is None:
                continue  # /bosun run and friends: bot.domain.triggers
            verb, rest = "steer", steer.group("rest").strip()
        if verb in VERBS:
            found.append((index, verb, rest, line))
        else:
            unknown.append(UnknownCommand(word, line.strip(), index + 1, suggest(word)))
    command_rows = {index for index, *_ in found}
    commands: list[Command] = []
    errors: list[CommandError] = []
    if len(found) > MAX_COMMANDS:
        message = f"more than {MAX_COMMANDS} commands in one comment; only the first were read."
        errors.append(CommandError(message, found[MAX_COMMANDS][0] + 1))
    for index, verb, rest, line in found[:MAX_COMMANDS]:
        tail = ""
        if verb in TEXT_VERBS:
            tail = "\n".join(
                text_line
                for offset, text_line in enumerate(lines[index + 1 :], start=index + 1)
                if offset not in command_rows
            )
        parsed = _command(verb, line.strip(), index + 1, rest, tail)
        if isinstance(parsed, CommandError):
            errors.append(parsed)
        else:
            commands.append(parsed)
    conflict = _conflict(commands)
    if conflict is not None:
        errors.append(conflict)
    return ParsedComment(tuple(commands), tuple(errors), tuple(unknown))


def mention_retry(body: str, bot_login: str) -> Command | None:
    """A comment on a Bosun pull request that @-mentions the App with instructions: a
    ``/retry`` carrying them as feedback. None when it mentions the App not at all, holds a
    command line, or says nothing besides the mention."""
    text = parse_mention(body, bot_login)
    if not text:
        return None
    return Command("retry", text, "(mention)", 0)


def review_retry(body: str, line_comments: list[tuple[str, int | None, str]]) -> Command:
    """A "Request changes" review as a ``/retry``: its body, then each line comment as
    ``path:line: text`` (``line_comments`` as the forge lists them)."""
    parts = [body.strip()] if body.strip() else []
    if line_comments:
        parts.append("Review comments on the code:")
        for path, line, text in line_comments:
            where = f"{path}:{line}" if line is not None else path
            parts.append(f"- `{clip(where, 300)}`: {text.strip()}")
    feedback = "\n".join(parts)[:MAX_REVIEW_FEEDBACK] or "Changes were requested in a review."
    return Command("retry", feedback, "(review: changes requested)", 0, source="review")


def _may(who: Who, permission: str | None, is_requester: bool, may_approve: bool | None) -> bool:
    write = PERMISSION_RANK.get(permission or "none", 0) >= PERMISSION_RANK["write"]
    if who == "anyone":
        return True
    if who == "requester_or_write":
        return write or is_requester
    if who == "approver" and may_approve is not None:
        return may_approve
    return write


_WHO_TEXT: dict[Who, str] = {
    "anyone": "anyone",
    "requester_or_write": "the requester, or write access",
    "write": "write access",
    "approver": "write access, or as set in `approval` of `.github/bosun.yml`",
}


def help_text(
    permission: str | None, is_requester: bool, *, may_approve: bool | None = None
) -> str:
    """The command list as Markdown, marking what the caller may use.

    ``may_approve`` is the caller's approval right as ``bot.domain.review`` decided it from the
    repository's ``approval`` config; without it write access is assumed to be the rule.
    """
    lines = [
        "**Bosun commands** (one state-changing command per comment; `/status` and `/help` "
        "may accompany it)",
        "",
        "| Command | What it does | Who may use it | You |",
        "| --- | --- | --- | --- |",
    ]
    for spec in VERBS.values():
        mark = "✅" if _may(spec.who, permission, is_requester, may_approve) else "—"
        lines.append(f"| `{spec.usage}` | {spec.summary} | {_WHO_TEXT[spec.who]} | {mark} |")
    lines += [
        "",
        "Also `/approve cancel` withdraws your approval. `/retry` and `/reject` take the "
        "rest of the comment as feedback or reason.",
    ]
    return "\n".join(lines)
