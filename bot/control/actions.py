"""Actions on a run from the REST API, the CLI and the dashboard (SPEC §9), in the terms of the
comment commands they mirror: ``parse_action`` turns one into the ``Command`` that
``/<verb> <args>`` would be, so the worker decides it with the very code that decides comments
(``jobs.deliveries.commands``). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from bot.domain.commands import Command, Source, parse_commands

ClientSource = Literal["api", "cli", "dashboard"]
CLIENT_SOURCES: dict[str, ClientSource] = {"api": "api", "cli": "cli", "dashboard": "dashboard"}
"""``X-Bosun-Client`` header values and the audit source each records."""


def parse_action(verb: str, args: str, source: Source) -> Command | str:
    """The command an action stands for, parsed exactly as the comment ``/<verb> <args>``
    would be; a string says why it is not valid."""
    parsed = parse_commands(f"/{verb} {args}".rstrip())
    if parsed.errors:
        return parsed.errors[0].message
    command = parsed.action or (parsed.queries[0] if parsed.queries else None)
    if command is None or command.verb != verb:
        return f"`{verb}` is not a command Bosun knows"
    return dataclasses.replace(command, source=source)
