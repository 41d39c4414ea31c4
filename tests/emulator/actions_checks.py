"""Check runs: GitHub's validation limits, updates kept as history, and their webhooks."""

from __future__ import annotations

import time
from typing import Any

from . import payloads as wh
from .context import Context
from .http import HttpError
from .state import CheckRun, Repo, User

CHECKS_DOCS = "https://docs.github.com/rest/checks/runs#create-a-check-run"
MAX_TEXT = 65535
MAX_ANNOTATIONS = 50
MAX_ACTIONS = 3
STATUSES = {"queued", "in_progress", "completed", "waiting", "requested", "pending"}
CONCLUSIONS = {
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
}


def _invalid(message: str, field_name: str, value: Any = None) -> HttpError:
    error: dict[str, Any] = {
        "resource": "CheckRun",
        "field": field_name,
        "code": "invalid",
        "message": message,
    }
    if value is not None:
        error["value"] = value
    return HttpError(422, f"Invalid request.\n\n{message}", errors=[error], docs=CHECKS_DOCS)


def validate(body: dict[str, Any]) -> None:
    output = body.get("output")
    if output is not None:
        if not isinstance(output, dict):
            raise _invalid("For 'output', it is not an object.", "output")
        for key in ("summary", "text"):
            value = output.get(key)
            if isinstance(value, str) and len(value) > MAX_TEXT:
                raise _invalid(
                    f"Only {MAX_TEXT} characters are allowed; {len(value)} were supplied.",
                    f"output.{key}",
                )
        detailed = "title" in output or "text" in output or "annotations" in output
        if detailed and "summary" not in output:
            raise _invalid('"summary" wasn\'t supplied.', "output.summary")
        annotations = output.get("annotations") or []
        if len(annotations) > MAX_ANNOTATIONS:
            raise _invalid(
                f"Only {MAX_ANNOTATIONS} annotations are allowed per request; "
                f"{len(annotations)} were supplied.",
                "output.annotations",
            )
        for annotation in annotations:
            for key in ("path", "start_line", "end_line", "annotation_level", "message"):
                if key not in annotation:
                    raise _invalid(f'"{key}" wasn\'t supplied.', f"output.annotations.{key}")
    actions = body.get("actions") or []
    if len(actions) > MAX_ACTIONS:
        raise _invalid(
            f"Only {MAX_ACTIONS} actions are allowed; {len(actions)} were supplied.", "actions"
        )
    for action in actions:
        for key, limit in (("label", 20), ("description", 40), ("identifier", 20)):
            value = action.get(key)
            if not isinstance(value, str):
                raise _invalid(f'"{key}" wasn\'t supplied.', f"actions.{key}")
            if len(value) > limit:
                raise _invalid(
                    f"{key} is too long (maximum is {limit} characters).", f"actions.{key}", value
                )
    status = body.get("status")
    if status is not None and status not in STATUSES:
        raise _invalid(f"{status} is not a member of {sorted(STATUSES)}.", "status", status)
    conclusion = body.get("conclusion")
    if conclusion is not None and conclusion not in CONCLUSIONS:
        raise _invalid(
            f"{conclusion} is not a member of {sorted(CONCLUSIONS)}.", "conclusion", conclusion
        )
    if status == "completed" and conclusion is None:
        raise _invalid(
            'Missing required attribute "conclusion" when status is completed.', "conclusion"
        )


def _apply(c: CheckRun, body: dict[str, Any]) -> bool:
    """Apply a create/update body; ``True`` when the run became completed."""
    was_completed = c.status == "completed"
    for key in ("name", "details_url", "external_id"):
        if key in body:
            setattr(c, key, body[key])
    if body.get("started_at"):
        c.started = _parse(body["started_at"])
    if body.get("conclusion"):
        c.conclusion = body["conclusion"]
        c.status = "completed"
    elif body.get("status"):
        c.status = body["status"]
    if c.status == "completed" and c.completed is None:
        c.completed = _parse(body["completed_at"]) if body.get("completed_at") else time.time()
    output = body.get("output")
    if output:
        c.output = {k: output.get(k, c.output.get(k)) for k in ("title", "summary", "text")}
        c.annotations.extend(output.get("annotations") or [])
    if "actions" in body:
        c.actions = list(body["actions"] or [])
    c.history.append(body)
    return c.status == "completed" and not was_completed


def _parse(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _emit(ctx: Context, r: Repo, c: CheckRun, action: str, sender: User, **extra: Any) -> None:
    s = ctx.store
    payload = wh.envelope(s, r, sender, action=action, check_run=wh.check_run(s, r, c), **extra)
    ctx.hooks.emit("check_run", payload)


def create(ctx: Context, r: Repo, body: dict[str, Any]) -> CheckRun:
    if not body.get("name") or not body.get("head_sha"):
        missing = "name" if not body.get("name") else "head_sha"
        raise _invalid(f'"{missing}" wasn\'t supplied.', missing)
    validate(body)
    from . import gitrepo

    if gitrepo.resolve(r.path, body["head_sha"]) is None:
        raise HttpError(422, "No commit found for SHA: " + str(body["head_sha"]), docs=CHECKS_DOCS)
    s = ctx.store
    with s.lock:
        suite = next(
            (
                x.suite_id
                for x in s.check_runs.values()
                if x.repo_id == r.id and x.head_sha == body["head_sha"]
            ),
            None,
        )
        c = CheckRun(
            s.ids.next("check_run"),
            suite or s.ids.next("check_suite"),
            r.id,
            body["name"],
            body["head_sha"],
        )
        s.check_runs[c.id] = c
    completed = _apply(c, body)
    _emit(ctx, r, c, "created", ctx.bot())
    if completed:
        _emit(ctx, r, c, "completed", ctx.bot())
    return c


def update(ctx: Context, r: Repo, c: CheckRun, body: dict[str, Any]) -> None:
    validate(body)
    reopened = body.get("status") not in (None, "completed")
    changed = body.get("conclusion") not in (None, c.conclusion)
    if c.status == "completed" and (reopened or changed):
        # GitHub keeps a completed check run's status and conclusion: a new run is needed.
        raise _invalid(
            "A completed check run's status and conclusion cannot change.",
            "status" if reopened else "conclusion",
            body.get("status") if reopened else body.get("conclusion"),
        )
    if _apply(c, body):
        _emit(ctx, r, c, "completed", ctx.bot())


def requested_action(ctx: Context, r: Repo, c: CheckRun, identifier: str, user: User) -> None:
    if not any(a.get("identifier") == identifier for a in c.actions):
        raise HttpError(422, f"Check run {c.id} has no action {identifier!r}")
    _emit(ctx, r, c, "requested_action", user, requested_action={"identifier": identifier})


def rerequest(ctx: Context, r: Repo, c: CheckRun, user: User) -> None:
    if c.status != "completed":
        raise HttpError(422, "This check run is not rerequestable")
    _emit(ctx, r, c, "rerequested", user)
