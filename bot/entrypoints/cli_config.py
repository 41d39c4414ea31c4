"""``bosun config validate PATH``: check a repository's Bosun file before pushing it.

The file is read with the very parser the worker uses on the default branch, so what this
command accepts, a run accepts. Exit codes: 0 valid, 1 invalid, 3 no such file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bot.domain.repoconfig import CONFIG_PATH, RepoConfigError, parse_repo_config
from bot.entrypoints.cli_api import FAILURE, NOT_FOUND

CANDIDATES = (CONFIG_PATH, ".bosun.yml")
"""Where a repository keeps the file, in the order Bosun looks."""

MAX_BYTES = 1 << 20
"""A Bosun file is a few hundred bytes; anything past a MiB is not one."""


def locate(path: Path) -> Path | None:
    """The file ``path`` names, or the Bosun file inside a repository folder."""
    if not path.is_dir():
        return path if path.is_file() else None
    return next((path / c for c in CANDIDATES if (path / c).is_file()), None)


def check(path: Path) -> dict[str, Any]:
    """The verdict on one file: ``valid``, its ``problems`` and, when valid, the ``config``
    with every default filled in."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        problem = {
            "path": "(file)",
            "message": f"the file is {size:,} bytes; a Bosun file is at most {MAX_BYTES:,}",
            "fix": "Point at the repository's .github/bosun.yml.",
        }
        return {"file": str(path), "valid": False, "problems": [problem]}
    try:
        config = parse_repo_config(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        problem = {
            "path": "(file)",
            "message": f"not UTF-8 text (byte {exc.start})",
            "fix": "Save the file as UTF-8.",
        }
        return {"file": str(path), "valid": False, "problems": [problem]}
    except RepoConfigError as exc:
        problems = [{"path": p.path, "message": p.message, "fix": p.fix} for p in exc.problems]
        return {"file": str(path), "valid": False, "problems": problems}
    return {
        "file": str(path),
        "valid": True,
        "problems": [],
        "config": config.model_dump(mode="json"),
    }


@click.command("validate")
@click.argument("path", type=click.Path(path_type=Path), default=Path("."))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
def validate(path: Path, fmt: str) -> None:
    """Check a Bosun file (.github/bosun.yml), or the one in a repository folder.

    Exits 0 when Bosun can use it, 1 when it cannot (each problem with its fix), 3 when there
    is no such file."""
    found = locate(path)
    if found is None:
        where = " or ".join(str(path / c) for c in CANDIDATES) if path.is_dir() else str(path)
        click.echo(f"Error: no Bosun file at {where}", err=True)
        raise SystemExit(NOT_FOUND)
    verdict = check(found)
    if fmt == "json":
        click.echo(json.dumps(verdict, indent=2))
    elif verdict["valid"]:
        click.echo(f"{found}: valid")
    else:
        click.echo(f"{found}: Bosun cannot use this file")
        for p in verdict["problems"]:
            click.echo(f"  {p['path']}: {p['message']}. {p['fix']}".rstrip())
    if not verdict["valid"]:
        raise SystemExit(FAILURE)
