"""``bosun runs …``, ``bosun status`` and ``bosun profiles``: runs on a Bosun (local or remote)
through its REST API (``--url``/``BOSUN_URL``, ``--token``/``BOSUN_TOKEN``). docs/cli.md."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote

import click
from pydantic import RootModel

from bot.control.views import (
    ActionOut,
    DiffOut,
    EventOut,
    Page,
    ProfileOut,
    RunDetail,
    RunSummary,
)
from bot.entrypoints.cli_api import REFUSED, Api, CliError, api_command, emit_json
from bot.entrypoints.cli_render import (
    action_text,
    detail_text,
    diff_stat,
    event_line,
    profiles_table,
    runs_table,
    state_of,
    status_text,
    target,
)

STATES = (
    "queued",
    "preparing",
    "running",
    "gates",
    "review_ready",
    "approved",
    "merged",
    "failed",
    "cancelled",
    "timed_out",
    "rejected",
)
IDLE = frozenset({"review_ready"})
"""Not terminal, but the pipeline is done: nothing more happens until someone reviews."""
EVENTS_PAGE = 500
PAGE_MAX = 200
_TARGET = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)#(?P<issue>[1-9]\d*)$")


class EventPage(Page[EventOut]):
    next_after_seq: int


class Profiles(RootModel[list[ProfileOut]]):
    pass


def run_path(run_id: str, *rest: str) -> str:
    return "/".join(["/api/v1/runs", quote(run_id, safe=""), *(quote(r, safe="") for r in rest)])


@click.group()
def runs() -> None:
    """Runs on a Bosun, over its REST API (--url/BOSUN_URL, --token/BOSUN_TOKEN)."""


@runs.command("list")
@api_command
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Repeatable.")
@click.option("--repo", metavar="OWNER/NAME", help="Only runs on this repository.")
@click.option("--requester", metavar="LOGIN", help="Only runs this GitHub user asked for.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Every matching run (ignores --limit).")
def list_runs(
    api: Api,
    fmt: str,
    states: tuple[str, ...],
    repo: str | None,
    requester: str | None,
    limit: int,
    everything: bool,
) -> None:
    """List runs, newest first."""
    items: list[RunSummary] = []
    cursor: str | None = None
    while True:
        want = PAGE_MAX if everything else min(PAGE_MAX, limit - len(items))
        page = api.get(
            "/api/v1/runs",
            Page[RunSummary],
            state=list(states),
            repo=repo,
            requester=requester,
            cursor=cursor,
            limit=want,
        )
        items += page.items
        cursor = page.next_cursor
        if cursor is None or (not everything and len(items) >= limit):
            break
    if fmt == "json":
        emit_json(Page[RunSummary](items=items, next_cursor=cursor))
    else:
        click.echo(runs_table(items))


@runs.command("show")
@api_command
@click.argument("run_id", metavar="RUN")
def show(api: Api, fmt: str, run_id: str) -> None:
    """A run: state, lineage, gates, approvals, artifacts."""
    run = api.get(run_path(run_id), RunDetail)
    if fmt == "json":
        emit_json(run)
    else:
        click.echo(detail_text(run))


@runs.command("logs")
@api_command
@click.argument("run_id", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run is done.")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable).")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 60),
    default=1.0,
    show_default=True,
    help="Seconds between polls with --follow.",
)
def logs(
    api: Api, fmt: str, run_id: str, follow: bool, kinds: tuple[str, ...], interval: float
) -> None:
    """A run's events as readable lines (JSON Lines with --format json).

    With -f, follow the run until it ends, or until it waits for review."""
    after = 0
    while True:
        run = api.get(run_path(run_id), RunSummary) if follow else None
        after = _print_events(api, run_id, after, kinds, fmt)
        if run is None:
            return
        if run.terminal or run.state in IDLE:
            if fmt != "json":
                click.echo(f"run {run.id} is {state_of(run)}", err=True)
            return
        time.sleep(interval)


def _print_events(api: Api, run_id: str, after: int, kinds: tuple[str, ...], fmt: str) -> int:
    """Print every event after ``after``; returns the last seq seen."""
    while True:
        page = api.get(
            run_path(run_id, "events"), EventPage, after_seq=after, limit=EVENTS_PAGE, kind=kinds
        )
        for event in page.items:
            if fmt == "json":
                click.echo(json.dumps(event.model_dump(mode="json"), separators=(",", ":")))
            else:
                click.echo(event_line(event))
        after = page.next_after_seq
        if len(page.items) < EVENTS_PAGE:
            return after


@runs.command("diff")
@api_command
@click.argument("run_id", metavar="RUN")
@click.option("--stat", is_flag=True, help="Per-file stats instead of the unified diff.")
def diff(api: Api, fmt: str, run_id: str, stat: bool) -> None:
    """The run's change: the unified diff, or per-file stats."""
    out = api.get(run_path(run_id, "diff"), DiffOut, max_bytes=0 if stat else None)
    if not stat and out.unified is None:  # too large to inline: the artifact has it
        text = api.request("GET", run_path(run_id, "artifacts", "diff")).text
        out = out.model_copy(update={"unified": text})
    if fmt == "json":
        emit_json(out)
    elif stat:
        click.echo(diff_stat(out))
    elif not out.unified:
        click.echo("no changes", err=True)
    else:
        click.echo(out.unified, nl=not out.unified.endswith("\n"))


@runs.command("start")
@api_command
@click.argument("what", metavar="OWNER/NAME#ISSUE")
@click.option("--profile", help="Agent profile (`bosun profiles`); default: the repository's.")
@click.option("--instructions", default="", help="Added to the agent's prompt.")
@click.option(
    "--approve",
    "approve_when_ready",
    is_flag=True,
    help="Wait until the run is ready for review, then approve it (and wait for the merge). "
    "For trying Bosun out: it approves what you have not read.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(1, 86400),
    default=1800,
    show_default=True,
    help="Seconds --approve waits for each step.",
)
def start(
    api: Api,
    fmt: str,
    what: str,
    profile: str | None,
    instructions: str,
    approve_when_ready: bool,
    wait_timeout: float,
) -> None:
    """Start a run on an issue or a local task, decided by the rules a `bosun` label meets."""
    match = _TARGET.match(what)
    if match is None:
        raise click.BadParameter(f"{what!r} is not like octo/hello#12", param_hint="TARGET")
    body = {
        "repository": match.group("repo"),
        "issue_number": int(match.group("issue")),
        "profile": profile,
        "instructions": instructions,
    }
    response = api.request("POST", "/api/v1/runs", body=body)
    if response.status_code == 202:  # the worker has not decided in time
        pending = api.parse(response, ActionOut)
        if fmt == "json":
            emit_json(pending)
        else:
            click.echo(
                f"start on {what}: pending; see `bosun runs list --repo {body['repository']}`"
            )
        return
    run = api.parse(response, RunSummary)
    if approve_when_ready:
        click.echo(f"started {run.id} on {target(run)} (profile {run.profile})", err=True)
        run = _approve_when_ready(api, run.id, wait_timeout)
    if fmt == "json":
        emit_json(run)
    elif approve_when_ready:
        click.echo(f"{run.id} {state_of(run)}" + (f": {run.reason}" if run.reason else ""))
    else:
        click.echo(f"started {run.id} on {target(run)} (profile {run.profile}): {run.state}")
    if approve_when_ready and run.state != "merged":
        raise click.exceptions.Exit(REFUSED if run.state in IDLE else 1)


def _wait_for(api: Api, run_id: str, done: frozenset[str], timeout: float) -> RunSummary:
    """Poll the run until its state is in ``done`` or it ended."""
    deadline = time.monotonic() + timeout
    while True:
        run = api.get(run_path(run_id), RunSummary)
        if run.state in done or run.terminal:
            return run
        if time.monotonic() > deadline:
            raise CliError(f"{run_id} is still {run.state} after {timeout:.0f}s")
        time.sleep(1.0)


def _approve_when_ready(api: Api, run_id: str, timeout: float) -> RunSummary:
    run = _wait_for(api, run_id, IDLE, timeout)
    if run.state not in IDLE:
        return run
    diff = api.get(run_path(run_id, "diff"), DiffOut, max_bytes=0)
    click.echo(diff_stat(diff), err=True)
    action = api.post(run_path(run_id, "approve"), {"sha": run.head_sha, "paths": []}, ActionOut)
    click.echo(action_text(action), err=True)
    if action.outcome == "refused":
        return api.get(run_path(run_id), RunSummary)
    # Accepted: the run is approved (merging) or still in review (more approvals needed).
    return _wait_for(api, run_id, frozenset(STATES) - {"approved"}, timeout)


def _act(api: Api, fmt: str, run_id: str, command: str, body: dict[str, Any]) -> None:
    action = api.post(run_path(run_id, command), body, ActionOut)
    if fmt == "json":
        emit_json(action)
    else:
        click.echo(action_text(action))
    if action.outcome == "refused":
        raise click.exceptions.Exit(REFUSED)


RUN = click.argument("run_id", metavar="RUN")


@runs.command("cancel")
@api_command
@RUN
def cancel(api: Api, fmt: str, run_id: str) -> None:
    """Cancel a run that has not reached review."""
    _act(api, fmt, run_id, "cancel", {})


@runs.command("retry")
@api_command
@RUN
@click.option("--feedback", default="", help="What the next attempt should do differently.")
def retry(api: Api, fmt: str, run_id: str, feedback: str) -> None:
    """Start a new run on the same task, with feedback."""
    _act(api, fmt, run_id, "retry", {"feedback": feedback})


@runs.command("approve")
@api_command
@RUN
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("--sha", help="The head SHA approved (refused if the head moved).")
def approve(api: Api, fmt: str, run_id: str, paths: tuple[str, ...], sha: str | None) -> None:
    """Approve a review-ready run, whole or only some paths."""
    _act(api, fmt, run_id, "approve", {"sha": sha, "paths": list(paths)})


@runs.command("reject")
@api_command
@RUN
@click.option("--reason", default="", help="Why (recorded in the audit).")
def reject(api: Api, fmt: str, run_id: str, reason: str) -> None:
    """Reject a review-ready run."""
    _act(api, fmt, run_id, "reject", {"reason": reason})


@runs.command("hold")
@api_command
@RUN
def hold(api: Api, fmt: str, run_id: str) -> None:
    """Keep a run from merging until `unhold`."""
    _act(api, fmt, run_id, "hold", {})


@runs.command("unhold")
@api_command
@RUN
def unhold(api: Api, fmt: str, run_id: str) -> None:
    """Release a hold."""
    _act(api, fmt, run_id, "unhold", {})


@runs.command("resume")
@api_command
@RUN
def resume(api: Api, fmt: str, run_id: str) -> None:
    """Continue a timed-out run's branch and agent session in a new run."""
    _act(api, fmt, run_id, "resume", {})


@runs.command("steer")
@api_command
@RUN
@click.argument("message")
def steer(api: Api, fmt: str, run_id: str, message: str) -> None:
    """Tell a running agent something: it reads MESSAGE at its next model request (a queued
    run gets it in its prompt)."""
    _act(api, fmt, run_id, "steer", {"message": message})


def _amount(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        amount = float(value.removeprefix("+").removeprefix("$"))
    except ValueError:
        amount = 0.0
    if not amount > 0 or amount == float("inf"):
        raise click.BadParameter(f"{value!r} is not a positive amount like +5 or 2.50")
    return amount


@runs.command("budget")
@api_command
@RUN
@click.argument("amount", metavar="+USD", callback=_amount)
def budget(api: Api, fmt: str, run_id: str, amount: float) -> None:
    """Raise a run's budget by an amount in USD (`+5`)."""
    _act(api, fmt, run_id, "budget", {"add_usd": amount})


@click.command()
@api_command
@RUN
def status(api: Api, fmt: str, run_id: str) -> None:
    """Where a run is. With --format json: the run and its manifest.json."""
    run = api.get(run_path(run_id), RunDetail)
    if fmt != "json":
        click.echo(status_text(run))
        return
    manifest: Any = None
    if any(a.name == "manifest.json" for a in run.artifacts):
        response = api.request("GET", run_path(run_id, "artifacts", "manifest.json"))
        try:
            manifest = json.loads(response.content)
        except ValueError as exc:
            raise CliError(f"the manifest.json of {run.id} is not JSON: {exc}") from exc
    emit_json({"run": run.model_dump(mode="json"), "manifest": manifest})


@click.command()
@api_command
def profiles(api: Api, fmt: str) -> None:
    """The agent profiles runs may use, with their runners' capabilities."""
    found = api.get("/api/v1/profiles", Profiles).root
    if fmt == "json":
        emit_json(found)
    else:
        click.echo(profiles_table(found))


COMMANDS = (runs, status, profiles)
