"""The dashboard's Jinja environment (autoescaped, with filters for moments, money, states and
terminal colours) and ``page()``, which renders a template with what every page needs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template import TemplateConfig
from markdown_it import MarkdownIt
from markupsafe import Markup

from bot.web.dashboard.ansi import ansi_html
from bot.web.dashboard.security import pre_session_csrf, session_dict, viewer_of

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

STATE_SYMBOLS = {
    "queued": ("◷", "queued"),
    "preparing": ("◔", "preparing"),
    "running": ("▶", "running"),
    "gates": ("◑", "checking gates"),
    "review_ready": ("◆", "ready for review"),
    "approved": ("✔", "approved"),
    "merged": ("✔", "merged"),
    "failed": ("✖", "failed"),
    "cancelled": ("⊘", "cancelled"),
    "timed_out": ("⌛", "timed out"),
    "rejected": ("✖", "rejected"),
}
_MARKDOWN = MarkdownIt("js-default", {"html": False, "linkify": False})


def state_label(state: str) -> Markup:
    """A state as a badge: symbol and words, the colour only an addition."""
    symbol, words = STATE_SYMBOLS.get(state, ("•", state.replace("_", " ")))
    return Markup(  # noqa: S704 -- fixed strings and an escaped state name
        f'<span class="badge state-{Markup.escape(state)}">'
        f'<span aria-hidden="true">{symbol}</span> {Markup.escape(words)}</span>'
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def elapsed(start: datetime | None, end: datetime | None = None) -> str:
    if start is None:
        return "—"
    stop = _aware(end) if end else datetime.now(UTC)
    return duration((stop - _aware(start)).total_seconds())


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return elapsed(moment) + " ago"


def iso(moment: datetime | None) -> str:
    return _aware(moment).isoformat() if moment else ""


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def markdown(text: str) -> Markup:
    return Markup(_MARKDOWN.render(text))  # noqa: S704 -- markdown-it with raw HTML disabled


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        state=state_label,
        ansi=ansi_html,
        ago=ago,
        elapsed=elapsed,
        duration=duration,
        iso=iso,
        money=money,
        markdown=markdown,
        pretty=pretty_json,
    )
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))


def page(request: Any, name: str, **context: Any) -> Template:
    """``name`` rendered with the viewer, the CSRF token and any flash message."""
    viewer = viewer_of(request)
    session = session_dict(request)
    flash = session.get("flash")
    if flash:
        request.set_session({k: v for k, v in session.items() if k != "flash"})
    csrf = viewer.csrf if viewer else pre_session_csrf(request)
    return Template(
        template_name=name,
        context={
            "viewer": viewer,
            "csrf": csrf,
            "flash": flash,
            "path": request.url.path,
            **context,
        },
        media_type="text/html",
    )


def fragment(name: str, **context: Any) -> Template:
    return Template(template_name=name, context=context, media_type="text/html")


def flash(request: Any, kind: str, text: str) -> None:
    """A message shown once on the next page (``kind``: ``ok`` or ``error``)."""
    session = session_dict(request)
    session["flash"] = {"kind": kind, "text": text[:2000]}
    request.set_session(session)


__all__ = ["STATIC", "flash", "fragment", "page", "state_label", "template_config"]
