"""What starts and cancels runs (SPEC §3.2), decided purely from arguments.

Two steps, both without I/O:

1. ``trigger_request(event, config, bot_login)`` reads a parsed webhook and says whether it asks
   for anything: a trigger label added or removed, ``/bosun run`` or an ``@<app-slug>`` mention
   in a new issue comment, the issue assigned to the App's bot user, the issue closed. Bots
   (Bosun included) are dropped here unless allow-listed by exact login.
2. ``decide(request, config, permission, ...)`` applies trust and profiles: the pipeline looks up
   the requester's collaborator permission (the only I/O) and passes it in.

Every decision carries ``rule``, the short name of the rule that decided it, for the run's
``policy`` event.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import partial
from typing import ClassVar, Literal

from bot.domain.payloads import IgnoredEvent, ParsedEvent
from bot.domain.repoconfig import PERMISSION_RANK, RepoConfig

TriggerKind = Literal["start", "cancel"]
TriggerSource = Literal["label", "comment", "mention", "assign", "close", "api", "cli", "dashboard"]


@dataclass(frozen=True)
class TriggerRequest:
    """Someone asked Bosun to start or cancel work on an issue."""

    kind: TriggerKind
    source: TriggerSource
    requester: str
    requester_type: str
    repository: str
    issue_number: int
    profile: str | None = None
    instructions: str = ""
    comment_id: int | None = None
    label: str | None = None


# --- step 1: does this event ask for anything? -------------------------------------------


def _label_profile(label: str, config: RepoConfig) -> tuple[bool, str | None]:
    """(matches, profile) for a label against the configured trigger labels."""
    wanted = label.strip().casefold()
    for name in config.trigger.labels:
        base = name.casefold()
        if wanted == base:
            return True, None
        if wanted.startswith(base + ":"):
            profile = label.strip()[len(base) + 1 :].strip()
            return True, profile or None
    return False, None


_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_RUN = re.compile(r"^ {0,3}/bosun[ \t]+run(?![^\s])[ \t]*(.*)$", re.IGNORECASE)


def _closes(marker: str, line: str, fence: str) -> bool:
    """A closing fence uses the opening character, is at least as long, and has no info."""
    return marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip().strip(fence[0])


def command_lines(body: str) -> list[tuple[int, str]]:
    """Lines of a comment where a command may appear: outside fenced and indented code blocks
    and ``>`` quotes. Returns (index, line) pairs."""
    lines = body.replace("\r\n", "\n").split("\n")
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for index, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence is not None:
            if match and _closes(match.group(1), line, fence):
                fence = None
            continue
        if match:
            fence = match.group(1)
            continue
        if line.lstrip(" ").startswith(">") or line.startswith(("    ", "\t")):
            continue
        out.append((index, line))
    return out


def parse_run_command(body: str, known_profiles: frozenset[str]) -> tuple[str | None, str] | None:
    """``(profile, instructions)`` from the first ``/bosun run`` line, or None.

    The first word is the profile only if it names a known profile; otherwise every word is
    instructions. Instructions run to the end of the comment.
    """
    lines = body.replace("\r\n", "\n").split("\n")
    for index, line in command_lines(body):
        match = _RUN.match(line)
        if not match:
            continue
        rest = match.group(1).strip()
        profile: str | None = None
        first, _, remainder = rest.partition(" ")
        if first and first in known_profiles:
            profile, rest = first, remainder.strip()
        tail = "\n".join(lines[index + 1 :]).strip()
        instructions = "\n".join(part for part in (rest, tail) if part)
        return profile, instructions
    return None


def app_slug(bot_login: str) -> str:
    """The App's slug, as people @-mention it: ``bosun`` for ``bosun[bot]``."""
    return bot_login.removesuffix("[bot]")


def mention_pattern(bot_login: str) -> re.Pattern[str]:
    """``@<slug>`` (or ``@<slug>[bot]``) as a whole word, case-insensitive."""
    slug = re.escape(app_slug(bot_login))
    return re.compile(rf"(?<![\w@/.-])@{slug}(?:\[bot\])?(?![\w-])", re.IGNORECASE)


def parse_mention(body: str, bot_login: str) -> str | None:
    """The instructions of a comment that @-mentions the App, or None when it does not.

    A mention counts only outside code blocks and ``>`` quotes (what ``command_lines`` reads)
    and in a comment that holds no ``/verb`` line (those belong to the command grammar). The
    instructions are the comment's own lines, the mentions taken out; quoted and fenced text
    stays, as the commenter wrote it around their request."""
    pattern = mention_pattern(bot_login)
    body = _HTML_COMMENT.sub("", body)  # not rendered: it cannot ask for anything
    lines = command_lines(body)
    if not any(pattern.search(line) for _, line in lines):
        return None
    if any(re.match(r"^ {0,3}/[A-Za-z]", line) for _, line in lines):
        return None
    text = pattern.sub("", body.replace("\r\n", "\n"))
    text = re.sub(r"[ \t]+([,:;])", r"\1", text)  # "Hey @bosun, fix" -> "Hey, fix"
    return re.sub(r"^[ \t,:;]+", "", text.strip()).strip()


def trigger_request(
    event: ParsedEvent | IgnoredEvent,
    config: RepoConfig,
    bot_login: str,
    *,
    known_profiles: frozenset[str] = frozenset(),
) -> TriggerRequest | None:
    """The start/cancel request an event carries, or None if it asks for nothing."""
    if isinstance(event, IgnoredEvent) or event.sender is None or event.repository is None:
        return None
    issue = event.issue
    if issue is None or issue.is_pull_request:
        return None
    sender = event.sender
    request = partial(
        TriggerRequest,
        requester=sender.login,
        requester_type=sender.type,
        repository=event.repository.full_name,
        issue_number=issue.number,
    )
    if event.key == "issues.closed":
        return request(kind="cancel", source="close")
    if sender.login.casefold() == bot_login.casefold():
        return None
    if sender.is_bot and sender.login not in config.trigger.allowed_bots:
        return None
    if event.key == "issues.assigned":
        assignee = event.assignee
        if assignee is None or assignee.login.casefold() != bot_login.casefold():
            return None
        return request(kind="start", source="assign")
    if event.key in {"issues.labeled", "issues.unlabeled"} and event.label is not None:
        matches, profile = _label_profile(event.label, config)
        if not matches:
            return None
        kind: TriggerKind = "start" if event.action == "labeled" else "cancel"
        profile = profile if kind == "start" else None
        return request(kind=kind, source="label", profile=profile, label=event.label)
    if event.key == "issue_comment.created" and event.comment is not None:
        parsed = parse_run_command(event.comment.body, known_profiles)
        if parsed is None:
            mentioned = parse_mention(event.comment.body, bot_login)
            if mentioned is None:
                return None
            return request(
                kind="start",
                source="mention",
                instructions=mentioned,
                comment_id=event.comment.id,
            )
        profile, instructions = parsed
        return request(
            kind="start",
            source="comment",
            profile=profile,
            instructions=instructions,
            comment_id=event.comment.id,
        )
    return None


# --- step 2: decide -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Decision:
    kind: ClassVar[str]
    rule: str

    def as_policy_event(self) -> dict[str, object]:
        """The payload of the run's ``policy`` event."""
        return {"decision": self.kind, **asdict(self)}


@dataclass(frozen=True)
class StartRun(_Decision):
    kind: ClassVar[str] = "start"
    profile: str
    instructions: str
    requester: str
    requester_type: str
    issue_number: int
    source: TriggerSource
    comment_id: int | None = None


@dataclass(frozen=True)
class CancelRuns(_Decision):
    kind: ClassVar[str] = "cancel"
    issue_number: int
    reason: str
    requester: str


@dataclass(frozen=True)
class RefuseStart(_Decision):
    """Say ``reply`` once (on the issue) and do nothing else."""

    kind: ClassVar[str] = "refuse"
    reply: str
    requester: str
    issue_number: int


@dataclass(frozen=True)
class UnknownProfile(_Decision):
    kind: ClassVar[str] = "unknown_profile"
    profile: str
    available: tuple[str, ...]
    reply: str
    requester: str
    issue_number: int


@dataclass(frozen=True)
class IgnoreRequest(_Decision):
    kind: ClassVar[str] = "ignore"
    reason: str


Decision = StartRun | CancelRuns | RefuseStart | UnknownProfile | IgnoreRequest


def trusted_by(
    login: str,
    login_type: str,
    config: RepoConfig,
    permission: str | None,
    *,
    server_allowed_users: frozenset[str] = frozenset(),
    requester_teams: frozenset[str] = frozenset(),
) -> str | None:
    """The rule that makes ``login`` trusted to start and cancel runs, or None."""
    if login_type == "Bot" or login.endswith("[bot]"):
        return "trigger.allowed_bots" if login in config.trigger.allowed_bots else None
    if PERMISSION_RANK.get(permission or "none", 0) >= PERMISSION_RANK["write"]:
        return "trigger.permission>=write"
    folded = login.casefold()
    if folded in {user.casefold() for user in config.trigger.allowed_users}:
        return "trigger.allowed_users"
    if folded in {user.casefold() for user in server_allowed_users}:
        return "server.allowed_users"
    teams = {team.casefold() for team in config.trigger.allowed_teams}
    if teams & {team.casefold() for team in requester_teams}:
        return "trigger.allowed_teams"
    return None


def _profile_list(profiles: frozenset[str]) -> str:
    return ", ".join(f"`{name}`" for name in sorted(profiles)) or "none"


def decide(
    request: TriggerRequest,
    config: RepoConfig,
    permission: str | None,
    *,
    server_allowed_users: frozenset[str],
    known_profiles: frozenset[str],
    requester_teams: frozenset[str] = frozenset(),
    server_default_profile: str = "default",
) -> Decision:
    """Decide what to do about a request.

    ``permission`` is the requester's collaborator permission (``admin``, ``maintain``,
    ``write``, ``triage``, ``read``, ``none``) or None when it could not be read.
    ``requester_teams`` (``org/slug``) is only needed when ``trigger.allowed_teams`` is set.
    """
    who = request.requester
    number = request.issue_number
    if request.kind == "cancel" and request.source == "close":
        reason = f"issue #{number} was closed by @{who}"
        return CancelRuns(
            rule="trigger.issue_closed", issue_number=number, reason=reason, requester=who
        )
    is_bot = request.requester_type == "Bot" or who.endswith("[bot]")
    trust = trusted_by(
        who,
        request.requester_type,
        config,
        permission,
        server_allowed_users=server_allowed_users,
        requester_teams=requester_teams,
    )
    if trust is None and is_bot:
        return IgnoreRequest(
            rule="trigger.bots_ignored", reason=f"@{who} is a bot that is not allow-listed"
        )
    if trust is None:
        verb = "start" if request.kind == "start" else "cancel"
        have = f"you have {permission}" if permission else "your permission could not be checked"
        reply = (
            f"@{who}, only people with write access to {request.repository} can {verb} "
            f"Bosun runs ({have})."
        )
        return RefuseStart(
            rule="trigger.permission>=write", reply=reply, requester=who, issue_number=number
        )
    if request.kind == "cancel":
        reason = f"@{who} removed the label `{request.label}`"
        return CancelRuns(
            rule="trigger.label_removed", issue_number=number, reason=reason, requester=who
        )
    profile = request.profile or config.default_profile or server_default_profile
    if profile not in known_profiles:
        available = tuple(sorted(known_profiles))
        if request.profile is None and config.default_profile is not None:
            reply = (
                f"@{who}, the default profile `{profile}` set in `.github/bosun.yml` does not "
                f"exist on this Bosun server. Available profiles: {_profile_list(known_profiles)}."
            )
            rule = "config.default_profile"
        else:
            label = config.trigger.labels[0] if config.trigger.labels else "bosun"
            reply = (
                f"@{who}, there is no Bosun profile `{profile}`. Available profiles: "
                f"{_profile_list(known_profiles)}. Pick one with the label `{label}:<profile>` "
                "or `/bosun run <profile>`."
            )
            rule = "trigger.profile_known"
        return UnknownProfile(
            rule=rule,
            profile=profile,
            available=available,
            reply=reply,
            requester=who,
            issue_number=number,
        )
    return StartRun(
        rule=trust,
        profile=profile,
        instructions=request.instructions,
        requester=who,
        requester_type=request.requester_type,
        issue_number=number,
        source=request.source,
        comment_id=request.comment_id,
    )
