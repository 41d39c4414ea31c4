"""Terminal colours in log lines as HTML: SGR escape codes (colours, bold, underline) become
``<span class="ansi-…">``; everything else is escaped, other escape sequences dropped. Pure."""

from __future__ import annotations

import re
from html import escape

from markupsafe import Markup

ESCAPE = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


def ansi_html(text: str) -> Markup:
    """``text`` escaped, with its SGR colours as spans (classes ``ansi-fg-red``, ``ansi-bold``…)."""
    out: list[str] = []
    classes: list[str] = []
    position = 0
    open_span = False
    for match in ESCAPE.finditer(text):
        out.append(escape(text[position : match.start()]))
        position = match.end()
        if match.group(2) != "m":
            continue  # cursor moves, OSC titles and the like: dropped
        classes = _apply(classes, match.group(1))
        if open_span:
            out.append("</span>")
            open_span = False
        if classes:
            out.append(f'<span class="{" ".join(classes)}">')
            open_span = True
    out.append(escape(text[position:]))
    if open_span:
        out.append("</span>")
    return Markup("".join(out).replace("\x1b", ""))  # noqa: S704 -- every part escaped above


def _apply(classes: list[str], params: str) -> list[str]:
    codes = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else [0]
    current = list(classes)
    for code in codes:
        if code == 0:
            current = []
        elif code == 1:
            current = [c for c in current if c != "ansi-bold"] + ["ansi-bold"]
        elif code == 4:
            current = [c for c in current if c != "ansi-underline"] + ["ansi-underline"]
        elif 30 <= code <= 37 or 90 <= code <= 97:
            name = COLOURS[code - 30] if code < 90 else COLOURS[code - 90]
            bright = "bright-" if code >= 90 else ""
            current = [c for c in current if not c.startswith("ansi-fg-")]
            current.append(f"ansi-fg-{bright}{name}")
        elif code == 39:
            current = [c for c in current if not c.startswith("ansi-fg-")]
        elif 40 <= code <= 47:
            current = [c for c in current if not c.startswith("ansi-bg-")]
            current.append(f"ansi-bg-{COLOURS[code - 40]}")
        elif code == 49:
            current = [c for c in current if not c.startswith("ansi-bg-")]
    return current


__all__ = ["ansi_html"]
