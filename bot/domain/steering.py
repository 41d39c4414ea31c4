"""Steering a running agent (``/bosun steer <message>``): the words a steer is handed to the
model in, and how a steer on a run that has not started yet joins its prompt. Pure, no I/O.

A steer is maintainer text, but it is sanitised like issue text (hidden content stripped,
``bot.domain.prompt.sanitize``) before it is stored, and bounded: ``MAX_STEER_CHARS`` per
message. The gateway (``bot.agents.gateway.steering``) puts ``steer_text`` into the agent's next
model request as a user turn; a queued run gets ``fold_into_prompt`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.domain.prompt import PHASE_HEADING, sanitize

MAX_STEER_CHARS = 4_000
"""Characters one steering message may hold (after the command word)."""
MAX_PENDING = 20
"""Messages one model request carries at most; later ones wait for the next request."""

_MARKER_LIKE = re.compile(r"^(\s*)(\[(?:end of )?message from )", re.M | re.I)


@dataclass(frozen=True)
class SteerMessage:
    """One queued steer: who sent it and what it says (already sanitised)."""

    actor: str
    message: str
    id: int = 0
    """The run event that recorded it (its order in the run's queue)."""


def clean(message: str) -> str:
    """The message as the model may see it: hidden content gone, our markers neutralised."""
    return _MARKER_LIKE.sub(r"\1\\\2", sanitize(message))


def steer_text(messages: Sequence[SteerMessage]) -> str:
    """The text of the user turn that carries ``messages``, oldest first, each marked as coming
    from its maintainer through Bosun."""
    blocks = []
    for item in messages:
        blocks.append(
            f"[Message from @{item.actor}, a maintainer overseeing this run, sent through Bosun "
            "while you were working. Take it into account from now on; the rules you were "
            "given still apply.]\n"
            f"{clean(item.message) or '(empty)'}\n"
            f"[End of message from @{item.actor}]"
        )
    return "\n\n".join(blocks)


def fold_into_prompt(prompt: str, actor: str, message: str) -> str:
    """``prompt`` with a steer sent before the run started, placed before Bosun's phase
    section (which stays last, see ``bot.domain.prompt.phase_prompt``)."""
    section = (
        f"\n## Message from @{actor} through Bosun (sent before the run started; take it "
        f"into account)\n{clean(message) or '(empty)'}\n"
    )
    cut = prompt.rfind("\n" + PHASE_HEADING)
    if cut < 0:
        return prompt.rstrip("\n") + "\n" + section
    head, tail = prompt[:cut], prompt[cut:]
    # the phase section starts with a blank line: keep it after the new section
    return head.rstrip("\n") + "\n" + section + tail


__all__ = [
    "MAX_PENDING",
    "MAX_STEER_CHARS",
    "SteerMessage",
    "clean",
    "fold_into_prompt",
    "steer_text",
]
