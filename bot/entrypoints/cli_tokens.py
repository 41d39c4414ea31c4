"""``bosun token create|list|revoke``: API tokens, written straight to the configured database.
For the operator on the Bosun host (the API's ``/api/v1/tokens`` does the same for an admin
token). The secret is printed once; Bosun keeps only its hash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import click

from bot.control.views import NewToken, TokenOut
from bot.entrypoints.cli_api import CliError, Invalid, NotFound, Refused, emit_json
from bot.entrypoints.cli_render import tokens_table

if TYPE_CHECKING:  # the database layer is imported when a token command runs, not by `bosun`
    from sqlalchemy.ext.asyncio import AsyncSession


T = TypeVar("T")
SCOPES = ("read", "operate", "admin")
"""``bot.control.tokens.SCOPES`` (which validates them again)."""

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Human-readable text, or JSON (docs/cli.md).",
)


def _in_database(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on the database the settings name."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from bot.db.engine import create_engine, session_factory
    from bot.errors import ConflictError, NotFoundError
    from bot.settings import Settings

    try:
        url = Settings().database.url
    except ValueError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from exc

    async def run() -> T:
        engine = create_engine(url)
        try:
            async with session_factory(engine).begin() as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except NotFoundError as exc:
        raise NotFound(str(exc)) from exc
    except ConflictError as exc:
        raise Refused(str(exc)) from exc
    except SQLAlchemyError as exc:
        where = make_url(url).render_as_string(hide_password=True)
        cause = getattr(exc, "orig", None) or exc
        raise CliError(
            f"the database at {where} failed: {cause}. Is BOSUN_DATABASE__URL the one Bosun "
            "uses, and has `bosun migrate` run?"
        ) from exc
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> timedelta | None:
    from bot.control.tokens import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group()
def token() -> None:
    """API tokens for the REST API and the `bosun runs` commands (on the Bosun host: they are
    written to the configured database)."""


@token.command("create")
@click.option("--name", required=True, help="Unique; audit rows record `token:NAME`.")
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    required=True,
    help="read: look; operate: also start and act on runs; admin: also tokens, repositories.",
)
@click.option("--repo", "repos", multiple=True, metavar="OWNER/NAME", help="Limit to (repeatable).")
@click.option(
    "--expires", callback=_duration, metavar="DURATION", help="Like 12h, 30d, 2w; default never."
)
@FORMAT
def create(
    name: str, scope: str, repos: tuple[str, ...], expires: timedelta | None, fmt: str
) -> None:
    """Create a token and print its secret (shown this once)."""

    async def work(session: AsyncSession) -> NewToken:
        from bot.control.tokens import SCOPES as KNOWN
        from bot.control.tokens import create_token, token_out

        chosen = next(known for known in KNOWN if known == scope)
        secret, row = await create_token(session, name, chosen, repos, expires)
        return NewToken(**token_out(row).model_dump(), token=secret)

    new = _in_database(work)
    if fmt == "json":
        emit_json(new)
        return
    click.echo(new.token)
    where = ", ".join(new.repos) or "every repository"
    until = f"until {new.expires_at:%Y-%m-%d %H:%M} UTC" if new.expires_at else "without expiry"
    click.echo(
        f"token {new.name!r}: scope {new.scope} on {where}, {until}. Copy it now: Bosun keeps "
        "only its hash. Use it with --token or BOSUN_TOKEN.",
        err=True,
    )


@token.command("list")
@FORMAT
def list_(fmt: str) -> None:
    """Every token (never its secret): scope, repositories, expiry, last use."""

    async def work(session: AsyncSession) -> list[TokenOut]:
        from bot.control.tokens import list_tokens, token_out

        return [token_out(row) for row in await list_tokens(session)]

    tokens = _in_database(work)
    if fmt == "json":
        emit_json(tokens)
    else:
        click.echo(tokens_table(tokens))


@token.command("revoke")
@click.argument("name")
@FORMAT
def revoke(name: str, fmt: str) -> None:
    """Revoke a token: requests with it are refused from now on."""

    async def work(session: AsyncSession) -> TokenOut:
        from bot.control.tokens import revoke_token, token_out

        return token_out(await revoke_token(session, name))

    revoked = _in_database(work)
    if fmt == "json":
        emit_json(revoked)
    else:
        click.echo(f"revoked token {revoked.name!r} ({revoked.prefix}…)")
