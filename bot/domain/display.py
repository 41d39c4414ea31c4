"""Agent-derived text on GitHub: file names, lines and transcripts the agent wrote, shown as
what they are and never as markdown or HTML of their own.

Everything Bosun publishes (status comment, check run, PR body, replies) is markdown. A file
name may hold newlines, backticks, ``<details>``, ``@mentions`` or ``Fixes #1``; put there
verbatim, it writes lines of its own (a heading that says the review passed, a closing
keyword that closes an issue on merge). So:

- :func:`shown` is the one way an agent-derived path or short text reaches markdown: control
  and invisible characters C-quoted the way git quotes a path (``"a\\nb"``, ``"x\\376"``), the
  rest in an inline code span that no backtick in it can close, capped in length;
- :func:`fence` wraps a longer excerpt (a transcript) in a code block no line of it can close;
- :func:`one_line` keeps a sentence Bosun composed (a run's reason, a phase note) on its line.
"""

from __future__ import annotations

import re
import unicodedata

SHOWN_CHARS = 200
"""Characters of an agent-derived text shown inline (a path, a name)."""

_LETTER_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}
_QUOTED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_PLAIN = re.compile(r"[A-Za-z0-9.][A-Za-z0-9./-]*(?:_[A-Za-z0-9][A-Za-z0-9./-]*)*")
"""Text markdown shows as it is anywhere inline: no markup, no autolink, no mention, no
issue reference; ``_`` only between letters or digits (where it never emphasises)."""
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _needs_quoting(char: str) -> bool:
    if char in _LETTER_ESCAPES:
        return True
    category = unicodedata.category(char)
    return category in _QUOTED_CATEGORIES or (category == "Zs" and char != " ")


def _octal(char: str) -> str:
    code = ord(char)
    # 0xDC80-0xDCFF: a byte that is not UTF-8, as ``surrogateescape`` decodes it
    raw = (
        bytes([code - 0xDC00])
        if 0xDC80 <= code <= 0xDCFF
        else char.encode("utf-8", "surrogatepass")
    )
    return "".join(f"\\{byte:03o}" for byte in raw)


def c_quote(text: str) -> str:
    """``text`` as git quotes a path (``core.quotePath=false``): unchanged when every
    character is printable; otherwise in double quotes with ``\\n``, ``\\t``, ``\\"``,
    ``\\\\`` … and every other control, invisible (zero-width, bidi) or line-separating
    character, and each byte that is not UTF-8, as octal bytes (``\\033``, ``\\342\\200\\250``,
    ``\\376``). Lossless, and never more than one line."""
    if not any(_needs_quoting(char) for char in text):
        return text
    return '"' + "".join(_quote_char(char) for char in text) + '"'


def _quote_char(char: str) -> str:
    if char in _LETTER_ESCAPES:
        return _LETTER_ESCAPES[char]
    return _octal(char) if _needs_quoting(char) else char


def _capped(text: str, limit: int) -> str:
    """``c_quote(text)`` in at most about ``limit`` characters, cut between escapes."""
    quoted = c_quote(text)
    if len(quoted) <= limit:
        return quoted
    if quoted == text:
        return text[: max(limit - 1, 1)] + "…"
    kept: list[str] = []
    size = 1
    for char in text:
        piece = _quote_char(char)
        if size + len(piece) > limit - 1:
            break
        kept.append(piece)
        size += len(piece)
    return '"' + "".join(kept) + "…"


def shown(text: str, *, limit: int = SHOWN_CHARS, code: bool = False) -> str:
    """``text`` (a path or a short text the agent chose) as inline markdown that shows it and
    nothing else, in at most about ``limit`` characters.

    Plain names (letters, digits, ``. / - _``) stay as they are unless ``code``; anything else
    becomes an inline code span, with the text C-quoted (:func:`c_quote`) so it holds no line
    break, and opened and closed by more backticks than any run inside it, so no markdown,
    HTML, mention or issue reference in it is read as such."""
    body = _capped(text, limit)
    if not code and body == text and _PLAIN.fullmatch(text) and not text.startswith("www."):
        return text
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if body.startswith(("`", " ")) or body.endswith(("`", " ")) else ""
    return f"{ticks}{pad}{body}{pad}{ticks}"


def fence(text: str, info: str = "text") -> list[str]:
    """``text`` as a fenced code block (its lines): opened and closed by more tildes than the
    longest run of tildes in it, so no line of it can close the block (CommonMark)."""
    longest = max((len(run) for run in re.findall(r"~+", text)), default=0)
    tildes = "~" * max(4, longest + 1)
    return [tildes + info, text, tildes]


def one_line(text: str) -> str:
    """A sentence Bosun composed (whose agent-derived parts went through :func:`shown`) kept
    on one markdown line: any line break in it is C-quoted, so it cannot start a block."""
    return _LINE_BREAKS.sub(lambda match: _quote_char(match.group(0)), text)


__all__ = ["SHOWN_CHARS", "c_quote", "fence", "one_line", "shown"]
