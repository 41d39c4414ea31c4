"""``bosun repos …`` and ``bosun tasks …``: local repositories and their tasks, over the REST
API like every other client command (docs/cli.md, docs/local-repositories.md)."""

from __future__ import annotations

import os

import click

from bot.control.views import Page, RepositoryOut, TaskOut
from bot.domain.tasks import split_paths
from bot.entrypoints.cli_api import Api, api_command, emit_json


@click.group()
def repos() -> None:
    """Repositories Bosun works on: GitHub's, and local ones you add."""


@repos.command("add")
@api_command
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--name", help="NAME or OWNER/NAME (default: local/<folder name>).")
@click.option(
    "--default-branch",
    help="The branch approvals merge into (default: main, master or trunk, else HEAD's).",
)
def add_repo(api: Api, fmt: str, path: str, name: str | None, default_branch: str | None) -> None:
    """Add a git repository on the Bosun host (a working copy's top folder, or a bare one)."""
    body = {"path": os.path.abspath(path), "name": name, "default_branch": default_branch}
    repo = api.post("/api/v1/repositories", body, RepositoryOut)
    if fmt == "json":
        emit_json(repo)
    else:
        click.echo(
            f"added {repo.full_name} ({repo.local_path}, default branch {repo.default_branch})"
        )


@repos.command("list")
@api_command
def list_repos(api: Api, fmt: str) -> None:
    """Every repository Bosun knows."""
    page = api.get("/api/v1/repositories", Page[RepositoryOut], limit=200)
    if fmt == "json":
        emit_json(page)
        return
    for repo in page.items:
        where = repo.local_path or "github"
        state = "" if repo.enabled else " (disabled)"
        click.echo(f"{repo.full_name:32} {repo.kind:6} {repo.default_branch:16} {where}{state}")


@click.group()
def tasks() -> None:
    """Tasks: issues Bosun worked on, and local tasks you add."""


def _task_line(task: TaskOut) -> str:
    last = task.last_run
    run = f"{last.id} {last.state}" if last is not None else "no run yet"
    return f"{task.repository}#{task.issue_number}  [{task.state}]  {task.title}  ({run})"


@tasks.command("add")
@api_command
@click.argument("repository", metavar="OWNER/NAME")
@click.argument("title")
@click.option("--body", default="", help="What to do, in as much detail as helps.")
@click.option("--acceptance", multiple=True, help="An acceptance criterion (repeatable).")
@click.option("--focus", default="", help="Paths or globs it works on: `src/**, docs/x.md`.")
@click.option("--label", "labels", multiple=True, help="A label (repeatable).")
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0, show_default=True)
@click.option("--profile", help="The profile its runs use (`bosun profiles`).")
def add_task(
    api: Api,
    fmt: str,
    repository: str,
    title: str,
    body: str,
    acceptance: tuple[str, ...],
    focus: str,
    labels: tuple[str, ...],
    priority: int,
    profile: str | None,
) -> None:
    """Add a task to a local repository; start it with `bosun runs start OWNER/NAME#N`."""
    data = {
        "repository": repository,
        "title": title,
        "body": body,
        "acceptance": list(acceptance),
        "focus": split_paths(focus),
        "labels": list(labels),
        "priority": priority,
        "profile": profile,
    }
    task = api.post("/api/v1/tasks", data, TaskOut)
    if fmt == "json":
        emit_json(task)
    else:
        click.echo(f"added {task.repository}#{task.issue_number}: {task.title}")


@tasks.command("list")
@api_command
@click.option("--repo", metavar="OWNER/NAME", help="Only this repository's tasks.")
def list_tasks(api: Api, fmt: str, repo: str | None) -> None:
    """Tasks, newest first."""
    page = api.get("/api/v1/tasks", Page[TaskOut], repo=repo, limit=200)
    if fmt == "json":
        emit_json(page)
        return
    for task in page.items:
        click.echo(_task_line(task))


@tasks.command("update")
@api_command
@click.argument("task_id", type=click.IntRange(1))
@click.option("--title")
@click.option("--body")
@click.option("--acceptance", multiple=True, help="Replaces the checklist (repeatable).")
@click.option("--focus", help="Replaces the focus paths (`` clears them).")
@click.option("--priority", type=click.IntRange(-1000, 1000))
@click.option("--profile", help="`` clears it.")
@click.option("--state", type=click.Choice(["open", "closed"]))
def update_task(
    api: Api,
    fmt: str,
    task_id: int,
    title: str | None,
    body: str | None,
    acceptance: tuple[str, ...],
    focus: str | None,
    priority: int | None,
    profile: str | None,
    state: str | None,
) -> None:
    """Change a local task (by its id, `bosun tasks list --format json`)."""
    data: dict[str, object] = {
        key: value
        for key, value in {
            "title": title,
            "body": body,
            "priority": priority,
            "profile": profile,
            "state": state,
        }.items()
        if value is not None
    }
    if acceptance:
        data["acceptance"] = list(acceptance)
    if focus is not None:
        data["focus"] = split_paths(focus)
    task = api.parse(api.request("PATCH", f"/api/v1/tasks/{task_id}", body=data), TaskOut)
    if fmt == "json":
        emit_json(task)
    else:
        click.echo(_task_line(task))


COMMANDS = (repos, tasks)
