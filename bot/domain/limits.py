"""GitHub's size limits on what Bosun writes, and the helpers that keep every reply within
them whatever the input.

GitHub refuses an issue comment (and a pull request review) whose body is over 65,536
characters with ``422 Validation Failed`` ("Body is too long (maximum is 65536 characters)"),
and a check run whose ``output.summary`` or ``output.text`` is over 65,535. A refused reply
is a reply the user never sees, so replies are summarised where they are written
(:func:`listing`, :func:`clip`) and cut to the limit with a visible note as a last resort
(:func:`fit_comment`, applied by the repository port to every comment it writes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.domain.display import shown

COMMENT_MAX = 65_536
"""Characters GitHub accepts in an issue comment or a pull request review body."""
CHECK_TEXT_MAX = 65_535
"""Characters GitHub accepts in a check run's ``output.summary`` and ``output.text``."""
LIST_ITEMS = 10
"""Items a reply names before it says "and K more"."""
QUOTE_CHARS = 200
"""Characters of user text a reply quotes back."""

TRUNCATED = "\n\n… (cut to GitHub's comment size limit)"


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


def listing(
    items: Iterable[str],
    *,
    limit: int = LIST_ITEMS,
    show: Callable[[str], str] = lambda item: shown(item, limit=120, code=True),
) -> str:
    """``a, b, c and 12 more``: the first ``limit`` items (each shown by ``show``, which
    bounds its length; by default as inline code that no name can break out of, see
    ``bot.domain.display.shown``) and a count of the rest."""
    items = list(items)
    shown = ", ".join(show(item) for item in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def fit_comment(body: str, limit: int = COMMENT_MAX) -> str:
    """``body`` within GitHub's comment limit: cut, with a note saying so, when longer."""
    if len(body) <= limit:
        return body
    return body[: limit - len(TRUNCATED)] + TRUNCATED
