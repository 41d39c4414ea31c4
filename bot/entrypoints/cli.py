"""The ``bosun`` command line. Each command builds ``Settings`` once and passes it down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click

from bot.envfiles import describe_error
from bot.logs import configure_logging
from bot.settings import Settings


def _settings() -> Settings:
    try:
        settings = Settings()
        settings.redis.password_value()  # an unreadable password file is a configuration error
        return settings
    except ValueError as exc:
        raise click.ClickException(f"invalid configuration:\n{describe_error(exc)}") from exc


def _check_tracing() -> None:
    """Traces asked for (``OTEL_EXPORTER_OTLP_ENDPOINT``) but impossible: say so and stop."""
    from bot.tracing import TracingUnavailable, check

    try:
        check()
    except TracingUnavailable as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="bosun")
def main() -> None:
    """Bosun: coding agents on your repositories, safely and reviewably."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Web processes sharing the port (each builds its settings from the environment).",
)
def web(host: str, port: int, workers: int) -> None:
    """Run the web role: webhooks, the API, the dashboard, /healthz, /readyz, /metrics."""
    import uvicorn

    from bot.web.app import create_app

    settings = _settings()
    _check_tracing()
    configure_logging(settings.log_level, settings.log_format)
    from bot.web.intake_protocol import IntakeProtocol

    if workers == 1:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            http=IntakeProtocol,
            log_config=None,
            access_log=False,
        )
        return
    uvicorn.run(
        "bot.web.app:app_from_environment",
        factory=True,
        http=IntakeProtocol,
        workers=workers,
        timeout_worker_healthcheck=60,  # a child imports the whole app before it answers
        host=host,
        port=port,
        log_config=None,
        access_log=False,
    )


main.add_command(
    click.Command(
        "serve",
        callback=web.callback,
        params=web.params,
        help="The web role under its former name: the same as `bosun web`.",
    )
)


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--check",
    is_flag=True,
    help=(
        "Do not run: exit 0 when a worker of this name (worker.name, else the host name) is "
        "polling the queue and the database and Docker answer, 1 otherwise (a health check "
        "for an orchestrator)."
    ),
)
def worker(burst: bool, check: bool) -> None:
    """Run the worker role: deliveries, runs, upkeep."""
    from jobs.worker import build_worker

    settings = _settings()
    if check:
        sys.exit(_check_worker(settings))
    _check_tracing()
    configure_logging(settings.log_level, settings.log_format)
    build_worker(settings, burst=burst).run()


def _check_worker(settings: Settings) -> int:
    from bot.services import Services
    from bot.web.health import worker_readiness

    async def _run() -> dict[str, Any]:
        services = Services.build(settings)
        try:
            return await worker_readiness(services)
        finally:
            await services.close()

    body = asyncio.run(_run())
    for name, check in body["checks"].items():
        click.echo(f"{name}: {'ok' if check['ok'] else check['error']}")
    return 1 if "failing" in body else 0


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from bot.db.engine import create_engine
    from bot.db.migrate import upgrade

    settings = _settings()

    async def _run() -> str | None:
        engine = create_engine(settings.database.url)
        try:
            return await upgrade(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(_run())
    click.echo(f"database at revision {revision}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def up(host: str, port: int) -> None:
    """Run everything on the embedded defaults: migrate, Redis (started if none answers),
    web and worker in one process."""
    from bot.entrypoints.up import run_all

    settings = _settings()
    _check_tracing()
    configure_logging(settings.log_level, settings.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_all(settings, host=host, port=port))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def doctor(fmt: str) -> None:
    """Check Docker, Redis, the database, images and App credentials."""
    from bot.entrypoints.doctor import as_json, render_table, run_checks

    checks = asyncio.run(run_checks(_settings()))
    if fmt == "json":
        click.echo(json.dumps(as_json(checks), indent=2))
    else:
        click.echo(render_table(checks))
    sys.exit(1 if any(c.status == "fail" for c in checks) else 0)


@main.command("prune")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def prune_command(dry_run: bool, fmt: str) -> None:
    """Remove what finished runs left behind past its retention (retention.*): event logs,
    artifacts, handled deliveries and notifications, and on this host artifact files,
    workspace folders and mirrors of removed repositories."""
    from bot.entrypoints.prune import render_report, run_prune

    report = asyncio.run(run_prune(_settings(), dry_run=dry_run))
    if fmt == "json":
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        click.echo(render_report(report))
    sys.exit(1 if report.errors else 0)


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("docs")
def config_docs() -> None:
    """Print the configuration reference (docs/configuration.md) generated from the model."""
    from bot.entrypoints.configdoc import render

    click.echo(render(), nl=False)


def emit(data: Any, fmt: str) -> None:
    """Print ``data`` as JSON or as plain text."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(data if isinstance(data, str) else json.dumps(data, indent=2, default=str))


from bot.entrypoints.cli_config import validate as _config_validate  # noqa: E402 -- needs `main` above
from bot.entrypoints.cli_local import COMMANDS as _LOCAL_COMMANDS  # noqa: E402
from bot.entrypoints.cli_runs import COMMANDS as _API_COMMANDS  # noqa: E402
from bot.entrypoints.cli_tokens import token as _token  # noqa: E402

for _command in (*_API_COMMANDS, *_LOCAL_COMMANDS, _token):
    main.add_command(_command)
config.add_command(_config_validate)

if __name__ == "__main__":
    main()
