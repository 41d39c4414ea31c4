"""Profile narrowing: a repository may tighten a server profile, never widen it.

A repository asking for more than the server allows gets the server's value and a note (shown
with the run), not an error: the run still happens, under the stricter limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bot.domain.repoconfig.model import ProfileOverride, Workflow


@dataclass(frozen=True)
class ProfileLimits:
    """The narrowable part of a server profile (the pipeline builds it from server config).

    ``None`` means "no limit" (or, for ``allowed_tools``, "the runner's defaults").
    """

    name: str
    max_turns: int | None = None
    timeout: int | None = None
    budget_usd: float | None = None
    allowed_tools: tuple[str, ...] | None = None
    gates: tuple[str, ...] = ()
    workflow: Workflow = "implement"


@dataclass(frozen=True)
class NarrowedProfile:
    """The effective profile for a run, with one note per repository request that was clamped."""

    limits: ProfileLimits
    notes: tuple[str, ...] = field(default_factory=tuple)


def _tighter(
    key: str, server: Any, requested: Any, notes: list[str], profile: str, unit: str = ""
) -> Any:
    if requested is None:
        return server
    if server is None or requested <= server:
        return requested
    notes.append(
        f"profiles.{profile}.{key}: {requested}{unit} is above the server's {server}{unit}; "
        f"using {server}{unit}"
    )
    return server


def narrow_profile(
    server: ProfileLimits, override: ProfileOverride | None, *, workflow: Workflow | None = None
) -> NarrowedProfile:
    """Apply a repository's override to a server profile. It can only tighten.

    ``workflow`` is the repository's top-level workflow, used when the override names none and
    the repository set one. Gates: the server's gates always run; the override's are added.
    """
    if override is None:
        chosen = workflow or server.workflow
        return NarrowedProfile(limits=replace(server, workflow=chosen))
    notes: list[str] = []
    name = server.name
    tools = server.allowed_tools
    if override.allowed_tools is not None:
        requested = tuple(override.allowed_tools)
        if tools is None:
            tools = requested
        else:
            dropped = [t for t in requested if t not in tools]
            if dropped:
                notes.append(
                    f"profiles.{name}.allowed_tools: {', '.join(dropped)} not allowed by the "
                    "server profile; dropped"
                )
            tools = tuple(t for t in requested if t in tools)
    gates = server.gates + tuple(g for g in (override.gates or []) if g not in server.gates)
    limits = ProfileLimits(
        name=name,
        max_turns=_tighter("max_turns", server.max_turns, override.max_turns, notes, name),
        timeout=_tighter("timeout", server.timeout, override.timeout, notes, name, "s"),
        budget_usd=_tighter("budget_usd", server.budget_usd, override.budget_usd, notes, name),
        allowed_tools=tools,
        gates=gates,
        workflow=override.workflow or workflow or server.workflow,
    )
    return NarrowedProfile(limits=limits, notes=tuple(notes))
