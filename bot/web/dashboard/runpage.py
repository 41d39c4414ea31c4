"""The run page: state, phase timeline, lineage, cost against budget; tabs Live log, Diff,
Gates, Summary and Events; the actions, each through ``submit_command`` with the source
``dashboard`` (the worker decides them exactly as the comment commands they mirror); and the run
bundle (manifest, events, diff, transcript, gates in one ``.tar.gz``)."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Response, ServerSentEvent, ServerSentEventMessage, Template
from sqlalchemy import select

from bot.control.actions import parse_action
from bot.control.queries import RunStore
from bot.db.artifacts import read_artifact
from bot.db.models import Artifact, RunEvent
from bot.domain.annotations import gate_annotations
from bot.domain.steering import MAX_STEER_CHARS
from bot.errors import NotFoundError
from bot.services import Services
from bot.web.api.actions import submit_command
from bot.web.api.stream import hub_of, run_frames
from bot.web.dashboard.access import Access, allowed_actions
from bot.web.dashboard.diffs import FilePatch, rows_of, side_by_side, split_files
from bot.web.dashboard.reads import phases, tail_events, timeline
from bot.web.dashboard.render import environment, flash, fragment, page
from bot.web.dashboard.security import Viewer, csrf_checked

AnyRequest = Request[Any, Any, Any]
TABS = ("log", "diff", "gates", "summary", "events")
TAB_TITLES = {
    "log": "Live log",
    "diff": "Diff",
    "gates": "Gates",
    "summary": "Summary",
    "events": "Events",
}
LOG_KINDS = ("log", "message", "tool", "error", "status", "gate_result", "policy", "egress")
LOG_TAIL = 1500
GATE_TAIL = 64 * 1024
ACTION_WAIT = 10.0
CHUNK_ROWS = 1500
"""Rows of one file's diff sent at a time."""


def services_of(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


def access_of(request: AnyRequest) -> Access:
    access: Access = request.app.state.dashboard_access
    return access


def viewer(request: AnyRequest) -> Viewer:
    found: Viewer = request.state.viewer
    return found


def line_of(event: RunEvent | dict[str, Any]) -> dict[str, Any] | None:
    """A log-tab line for an event (kind, text, stream), or None for events not shown there."""
    if isinstance(event, RunEvent):
        kind, data, seq = event.kind, event.data, event.seq
    else:
        kind, data, seq = event["kind"], event["data"], event["seq"]
    if kind == "log":
        text, stream = str(data.get("line", "")), str(data.get("stream", "agent"))
    elif kind == "message":
        text, stream = str(data.get("text", "")), "agent"
    elif kind == "tool":
        name = data.get("name") or data.get("tool") or "tool"
        text, stream = f"tool {name} {json.dumps(data.get('input', ''))[:300]}", "tool"
    elif kind == "error":
        text, stream = f"error: {data.get('message') or data.get('error') or data}", "error"
    elif kind == "status":
        reason = f" ({data['reason']})" if data.get("reason") else ""
        moved = f"{data['from']} → " if data.get("from") else ""
        text, stream = f"state: {moved}{data.get('to', '?')}{reason}", "bosun"
    elif kind == "gate_result":
        verdict = "passed" if data.get("passed") else "FAILED"
        text, stream = f"gate {data.get('name', '')}: {verdict}", "bosun"
    elif kind == "policy":
        text, stream = f"policy {data.get('rule', '')}: {data.get('decision', '')}", "bosun"
    elif kind == "egress":
        where = f"{data.get('host', '?')}:{data.get('port', '?')}"
        if data.get("allowed"):
            verdict = f"allowed, {data.get('bytes_in', 0)} B in, {data.get('bytes_out', 0)} B out"
        else:
            verdict = f"DENIED ({data.get('reason', '')})"
        text, stream = f"egress {data.get('method', '')} {where}: {verdict}", "egress"
    else:
        return None
    if not text.strip():
        return None
    return {"seq": seq, "kind": kind, "stream": stream, "text": text[:20_000]}


class DiffCache:
    """Each run's diff text and its file offsets, for the few runs being looked at (a per-file
    request never parses the whole diff again)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], tuple[str, dict[str, FilePatch]]] = OrderedDict()

    async def get(self, services: Services, run_id: str) -> tuple[str, dict[str, FilePatch]]:
        async with services.sessions() as session:
            artifact = (
                await session.execute(
                    select(Artifact).where(Artifact.run_id == run_id, Artifact.name == "diff")
                )
            ).scalar_one_or_none()
            if artifact is None:
                return "", {}
            key = (run_id, artifact.sha256)
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            text = (await read_artifact(session, artifact)).decode("utf-8", "replace")
        files = {f.path: f for f in split_files(text)}
        self._items[key] = (text, files)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return text, files


class RunPages(Controller):
    path = "/runs/{run_id:str}"

    async def _context(self, request: AnyRequest, run_id: str) -> dict[str, Any]:
        services = services_of(request)
        runs = RunStore(services.sessions)
        try:
            run = await runs.get_run(run_id)
        except NotFoundError as exc:
            raise NotFoundException(str(exc)) from exc
        access = access_of(request)
        repository = await access.repository(run.repository)
        permission = await access.permission(viewer(request), repository)
        if permission == "none" and repository is not None and repository.private:
            raise NotFoundException(f"run {run_id} does not exist")
        actions = allowed_actions(
            state=run.state,
            on_hold=run.on_hold,
            requester=run.requester,
            viewer=viewer(request),
            permission=permission,
        )
        end = run.finished_at or datetime.now(UTC)
        return {
            "run": run,
            "permission": permission,
            "actions": actions,
            "steps": await timeline(services.sessions, run_id),
            "phases": await phases(services.sessions, run_id),
            "elapsed_s": (end - run.started_at).total_seconds() if run.started_at else None,
            "tabs": [(t, TAB_TITLES[t]) for t in TABS],
            "web_url": request.app.state.settings.github.web_url.rstrip("/"),
            "max_steer_chars": MAX_STEER_CHARS,
        }

    @get("/", name="dashboard:run")
    async def show(
        self,
        request: AnyRequest,
        run_id: FromPath[str],
        tab: FromQuery[str] = "log",
        view: FromQuery[str] = "unified",
    ) -> Template:
        tab = tab if tab in TABS else "log"
        context = await self._context(request, run_id)
        context.update(tab=tab, view="split" if view == "split" else "unified")
        services = services_of(request)
        runs = RunStore(services.sessions)
        if tab == "log":
            events = await tail_events(services.sessions, run_id, LOG_KINDS, LOG_TAIL)
            context["lines"] = [line for e in events if (line := line_of(e))]
            context["after_seq"] = context["run"].last_seq
        elif tab == "diff":
            diff = await runs.diff(run_id, max_bytes=0)
            context["diff"] = diff
        elif tab == "gates":
            context["gates"] = await self._gates(services, run_id, context["run"])
        elif tab == "summary":
            context.update(await self._summary(services, run_id))
        else:
            after = int(request.query_params.get("after_seq", 0) or 0)
            context["events"] = await runs.events(run_id, after_seq=after, limit=200)
        return page(request, "run.html", **context)

    @get("/header", name="dashboard:run-header")
    async def header(self, request: AnyRequest, run_id: FromPath[str]) -> Template:
        context = await self._context(request, run_id)
        return fragment("run_header.html", **context, csrf=viewer(request).csrf)

    async def _gates(self, services: Services, run_id: str, run: Any) -> list[dict[str, Any]]:
        changed: set[str] = set()
        async with services.sessions() as session:
            stats = (
                await session.execute(
                    select(Artifact).where(
                        Artifact.run_id == run_id, Artifact.name.in_(["diff-stats"])
                    )
                )
            ).scalar_one_or_none()
            if stats is not None:
                changed = {
                    str(f.get("path")) for f in json.loads(await read_artifact(session, stats))
                }
            out = []
            for gate in run.gates:
                artifact = (
                    await session.execute(
                        select(Artifact).where(
                            Artifact.run_id == run_id, Artifact.name == f"gate:{gate.name}"
                        )
                    )
                ).scalar_one_or_none()
                text = ""
                if artifact is not None:
                    raw = await read_artifact(session, artifact)
                    text = raw[-GATE_TAIL:].decode("utf-8", "replace")
                found = gate_annotations(gate.name, text, changed.__contains__)
                out.append({"gate": gate, "output": text, "annotations": found})
        return out

    async def _summary(self, services: Services, run_id: str) -> dict[str, Any]:
        texts: dict[str, str] = {}
        async with services.sessions() as session:
            for name in ("summary", "plan", "manifest.json"):
                artifact = (
                    await session.execute(
                        select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name)
                    )
                ).scalar_one_or_none()
                if artifact is not None and artifact.size <= 2_000_000:
                    texts[name] = (await read_artifact(session, artifact)).decode(
                        "utf-8", "replace"
                    )
        manifest: Any = None
        if "manifest.json" in texts:
            try:
                manifest = json.loads(texts["manifest.json"])
            except ValueError:
                manifest = texts["manifest.json"]
        policy = await tail_events(services.sessions, run_id, ("policy",), 200)
        return {
            "summary_md": texts.get("summary", ""),
            "plan_md": texts.get("plan", ""),
            "manifest": manifest,
            "policy": policy,
        }

    @get("/diff/file", name="dashboard:diff-file")
    async def diff_file(
        self,
        request: AnyRequest,
        run_id: FromPath[str],
        file: FromQuery[str],
        view: FromQuery[str] = "unified",
        start: FromQuery[int] = 0,
    ) -> Template:
        """One file's rows, ``CHUNK_ROWS`` at a time (a button loads the next part), so even a
        file of tens of thousands of lines never blocks the page for long."""
        await self._context_light(request, run_id)
        cache: DiffCache = request.app.state.dashboard_diffs
        text, files = await cache.get(services_of(request), run_id)
        patch = files.get(file)
        if patch is None:
            raise NotFoundException(f"{file} is not in this run's diff")
        rendered = rows_of(text[patch.start : patch.end])
        start = max(0, start)
        end = start + CHUNK_ROWS
        total = len(rendered.rows)
        rendered.rows = rendered.rows[start:end]
        split = side_by_side(rendered.rows) if view == "split" else None
        return fragment(
            "diff_file.html",
            path=file,
            rendered=rendered,
            split=split,
            run_id=run_id,
            view=view,
            more=end if end < total else None,
            left=max(0, total - end),
        )

    async def _context_light(self, request: AnyRequest, run_id: str) -> None:
        access = access_of(request)
        try:
            name = await RunStore(services_of(request).sessions).repository_of(run_id)
        except NotFoundError as exc:
            raise NotFoundException(str(exc)) from exc
        repository = await access.repository(name)
        permission = await access.permission(viewer(request), repository)
        if permission == "none" and repository is not None and repository.private:
            raise NotFoundException(f"run {run_id} does not exist")

    @get("/log/live", name="dashboard:run-log-live")
    async def log_live(
        self, request: AnyRequest, run_id: FromPath[str], after_seq: FromQuery[int] = 0
    ) -> ServerSentEvent:
        await self._context_light(request, run_id)
        header = request.headers.get("last-event-id", "")
        start = int(header) if header.isdigit() and int(header) < 2**31 else after_seq
        runs = RunStore(services_of(request).sessions)
        frames = run_frames(runs, hub_of(request), run_id, max(0, start))
        env = environment()

        async def body() -> AsyncIterator[ServerSentEventMessage]:
            yield ServerSentEventMessage(retry=2000, comment="bosun run log")
            template = env.get_template("log_line.html")  # autoescaped, as every page
            async for frame_id, kind, data in frames:
                if not kind:
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                if kind == "end":
                    yield ServerSentEventMessage(event="end", data=str(data.get("state", "")))
                    return
                if kind == "status":
                    yield ServerSentEventMessage(event="status", data=str(data["data"].get("to")))
                line = line_of(data)
                if line is None:
                    continue
                html = template.render(line=line).replace("\n", "")
                yield ServerSentEventMessage(event="line", data=html, id=frame_id or None)

        return ServerSentEvent(body(), headers={"Cache-Control": "no-store"})

    @post("/actions/{verb:str}", guards=[csrf_checked], name="dashboard:run-action")
    async def act(
        self, request: AnyRequest, run_id: FromPath[str], verb: FromPath[str]
    ) -> Redirect:
        form = await request.form()
        context = await self._context(request, run_id)
        allowed = context["actions"].get(verb)
        back = f"/runs/{run_id}?tab={form.get('tab') or 'log'}"
        if allowed is None:
            raise NotFoundException(f"no action {verb}")
        if not allowed.enabled:
            flash(request, "error", f"{allowed.label}: not allowed — {allowed.reason}.")
            return Redirect(back, status_code=303)
        args = _args(verb, form, context["run"])
        command = parse_action(verb, args, "dashboard")
        if isinstance(command, str):
            raise ValidationException(command)
        decided = await submit_command(
            services_of(request),
            verb,
            args,
            run_id=run_id,
            actor=viewer(request).actor,
            permission=context["permission"],
            source="dashboard",
            wait=ACTION_WAIT,
        )
        if decided.outcome is None:
            flash(request, "ok", f"{allowed.label}: sent; the worker has not decided yet.")
        elif decided.outcome == "accepted" and verb == "steer":
            when = "its prompt" if context["run"].state == "queued" else "its next model request"
            flash(request, "ok", f"Steer: accepted; the agent gets it in {when}.")
        elif decided.outcome == "accepted":
            more = f" New run {decided.new_run_id}." if decided.new_run_id else ""
            flash(request, "ok", f"{allowed.label}: accepted.{more}")
        else:
            flash(request, "error", f"{allowed.label}: {decided.outcome} — {decided.reason or ''}")
        return Redirect(back, status_code=303)

    @get("/bundle", name="dashboard:run-bundle")
    async def bundle(self, request: AnyRequest, run_id: FromPath[str]) -> Response[bytes]:
        await self._context_light(request, run_id)
        data = await run_bundle(services_of(request), run_id)
        return Response(
            data,
            media_type="application/gzip",
            headers={
                "Content-Disposition": f'attachment; filename="bosun-run-{run_id}.tar.gz"',
                "Cache-Control": "no-store",
            },
        )


def _args(verb: str, form: Any, run: Any) -> str:
    if verb == "approve":
        paths = [str(p) for p in form.getall("paths", [])] if hasattr(form, "getall") else []
        total = int(form.get("file_count") or 0)
        sha = str(form.get("sha") or run.head_sha or "")
        chosen = paths if paths and len(paths) < total else []
        if form.get("partial") and not paths:
            raise ValidationException("choose at least one file to approve")
        return " ".join([*([sha] if sha else []), *chosen])
    if verb == "reject":
        return str(form.get("reason") or "").strip()
    if verb == "retry":
        return str(form.get("feedback") or "").strip()
    if verb == "steer":
        return str(form.get("message") or "").strip()
    if verb == "budget":
        try:
            amount = float(str(form.get("amount") or "0"))
        except ValueError as exc:
            raise ValidationException("the amount is not a number") from exc
        if not 0.01 <= amount <= 100_000:
            raise ValidationException("add between $0.01 and $100,000")
        return f"+{amount:.2f}"
    return ""


async def run_bundle(services: Services, run_id: str) -> bytes:
    """The run in one archive: ``run.json``, ``events.jsonl`` and every artifact."""
    runs = RunStore(services.sessions)
    detail = await runs.get_run(run_id)
    buffer = io.BytesIO()
    now = time.time()
    prefix = f"bosun-run-{run_id}"

    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size, info.mtime, info.mode = len(data), int(now), 0o644
        archive.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add("run.json", detail.model_dump_json(indent=2).encode())
        async with services.sessions() as session:
            lines = []
            rows = await session.stream_scalars(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
            )
            async for event in rows:
                lines.append(
                    json.dumps(
                        {
                            "seq": event.seq,
                            "kind": event.kind,
                            "data": event.data,
                            "created_at": event.created_at.isoformat(),
                        },
                        default=str,
                    )
                )
            add("events.jsonl", ("\n".join(lines) + "\n").encode())
            artifacts = (
                await session.execute(select(Artifact).where(Artifact.run_id == run_id))
            ).scalars()
            for artifact in list(artifacts):
                data = await read_artifact(session, artifact)
                name = artifact.name.replace(":", "-").replace("/", "_")
                if name == "diff":
                    name = "diff.patch"
                elif name in ("transcript", "summary", "plan") or name.startswith("gate-"):
                    name += ".md" if name in ("summary", "plan") else ".txt"
                add(name, data)
    return buffer.getvalue()


__all__ = ["DiffCache", "RunPages", "line_of", "run_bundle"]
