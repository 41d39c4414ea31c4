"""Where the time goes between a label and the agent process: one run's stage breakdown.

Sources, all on the host clock: the label request (client side), the delivery's
``received_at``, arq's own ``enqueue_time``/``start_time`` of the ``d:<delivery>`` and
``run:<run>`` jobs, the run's ``status`` events, the probes of ``bench.probes`` and the
timestamp the agent prints as its first action inside the container.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.probes import Recorder
    from tests.stack import BosunStack

# (key, title) in pipeline order; they add up to the totals (the last three rows).
STAGES: list[tuple[str, str]] = [
    ("webhook_delivery", "label call → webhook received (emulator sends)"),
    ("ingest", "received → delivery job enqueued (in request)"),
    ("delivery_pickup", "queue pickup: process_delivery"),
    ("delivery_processing", "process_delivery: config, permission, comments, run row"),
    ("run_pickup", "queue pickup: execute_run"),
    ("run_setup", "execute_run start → preparing"),
    ("prepare_entry", "preparing → prepare step entered"),
    ("prepare", "prepare step: sandbox ‖ fetch + checkout, prompt, gateway"),
    ("to_running", "→ running (status event, check run update queued)"),
    ("exec_prep", "agent progress event, invocation built"),
    ("exec_to_agent", "docker exec → agent's first instruction"),
    ("received_to_agent", "TOTAL webhook received → agent started"),
    ("label_to_agent", "TOTAL label call → agent started"),
    ("queued_to_agent", "run queued → agent started"),
]

# The prepare step's parts as the run itself records them (manifest ``timings_s``); the
# sandbox and the checkout overlap, so these do not add up.
PREPARE_PARTS: list[tuple[str, str]] = [
    ("host_ids", "  prepare: docker info (userns answer, cached)"),
    ("git_token", "  prepare ‖ checkout: installation token for git"),
    ("mirror_fetch", "  prepare ‖ checkout: mirror fetch (base branch only)"),
    ("checkout", "  prepare ‖ checkout: local clone, chown, checkout"),
    ("workspace", "  prepare ‖ checkout: all of it"),
    ("sandbox_claim", "  prepare ‖ sandbox: pooled sandbox claimed (inspect, rename)"),
    ("container_create", "  prepare ‖ sandbox: container create"),
    ("container_start", "  prepare ‖ sandbox: container start"),
    ("sandbox_start", "  prepare ‖ sandbox: all of it"),
    ("to_agent", "  the run's own record: job start → agent exec opened"),
]
REQUIRED_PARTS = {
    "host_ids", "git_token", "mirror_fetch", "checkout", "workspace", "sandbox_start", "to_agent",
}  # fmt: skip


@dataclass
class Sample:
    run_id: str
    delivery_id: str
    state: str
    sandbox: str = ""
    """``pooled`` or ``fresh``, as the run's prepare event says."""
    stages: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, float, float]] = field(default_factory=list)
    """Probed calls before the agent started: (stage, start after received, duration)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def unmeasured(self) -> list[str]:
        """Stages and prepare parts this sample lacks (a probe or a timing that no longer
        fires)."""
        missing = [key for key, _ in STAGES if key not in self.stages]
        missing += sorted(REQUIRED_PARTS - set(self.timings))
        if "sandbox_claim" not in self.timings and not (
            {"container_create", "container_start"} <= set(self.timings)
        ):
            missing.append("sandbox_claim or container_create/start")
        return missing


def _ts(text: str) -> float:
    """A stored UTC datetime (SQLite text, naive) as a POSIX timestamp."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


async def _job(redis: Any, job_id: str) -> tuple[float, float]:
    from arq.jobs import Job

    info = await Job(
        job_id, redis, _queue_name="", _deserializer=redis.job_deserializer
    ).result_info()
    if info is None:
        return math.nan, math.nan
    return info.enqueue_time.timestamp(), info.start_time.timestamp()


def _agent_started(stack: BosunStack, run_id: str) -> float:
    rows = stack.db(
        "SELECT data FROM run_events WHERE run_id=? AND kind='log' ORDER BY seq", run_id
    )
    for (data,) in rows:
        line = str(json.loads(data).get("line", "")).strip()
        try:
            return float(line)
        except ValueError:
            continue
    return math.nan


async def measure(
    stack: BosunStack,
    redis: Any,
    recorder: Recorder,
    run_id: str,
    delivery_id: str,
    t_label: float,
    state: str,
) -> Sample:
    marks: dict[str, float] = {"label": t_label}
    (received,) = stack.db("SELECT received_at FROM deliveries WHERE id=?", delivery_id)
    marks["received"] = _ts(received[0])
    marks["d_enqueue"], marks["d_start"] = await _job(redis, f"d:{delivery_id}")
    marks["run_enqueue"], marks["run_start"] = await _job(redis, f"run:{run_id}")
    timings: dict[str, float] = {}
    sandbox = ""
    for kind, data, created in stack.db(
        "SELECT kind, data, created_at FROM run_events WHERE run_id=? ORDER BY seq", run_id
    ):
        payload = json.loads(data)
        if kind == "status":
            marks.setdefault(str(payload.get("to")), _ts(created))
        elif kind == "progress" and payload.get("phase") == "prepare" and "timings" in payload:
            timings = {**timings, **payload["timings"]}
            sandbox = str(payload.get("sandbox", ""))
    manifest = stack.artifacts(run_id).get("manifest.json")
    if manifest is not None:  # the run's final record: every timing, the agent's included
        timings = {**timings, **json.loads(manifest.read_text()).get("timings_s", {})}
    calls = recorder.for_run(run_id)

    def first(stage: str, end: bool = False, index: int = 0) -> float:
        found = calls.get(stage)
        if not found or len(found) <= index:
            return math.nan
        return found[index].end if end else found[index].start

    marks["prepare_start"], marks["prepare_end"] = first("prepare"), first("prepare", True)
    # moves: [0] → preparing, [1] → running
    marks["running_end"] = first("move", True, index=1)
    marks["exec_start"] = first("exec_open")
    marks["agent"] = _agent_started(stack, run_id)

    m = marks
    stages = {
        "webhook_delivery": m["received"] - m["label"],
        "ingest": m["d_enqueue"] - m["received"],
        "delivery_pickup": m["d_start"] - m["d_enqueue"],
        "delivery_processing": m["run_enqueue"] - m["d_start"],
        "run_pickup": m["run_start"] - m["run_enqueue"],
        "run_setup": m.get("preparing", math.nan) - m["run_start"],
        "prepare_entry": m["prepare_start"] - m.get("preparing", math.nan),
        "prepare": m["prepare_end"] - m["prepare_start"],
        "to_running": m["running_end"] - m["prepare_end"],
        "exec_prep": m["exec_start"] - m["running_end"],
        "exec_to_agent": m["agent"] - m["exec_start"],
        "received_to_agent": m["agent"] - m["received"],
        "label_to_agent": m["agent"] - m["label"],
        "queued_to_agent": m["agent"] - m.get("queued", math.nan),
    }
    rounded = {k: round(v, 4) for k, v in stages.items() if not math.isnan(v)}
    sample = Sample(run_id, delivery_id, state, sandbox, rounded, timings, marks)
    sample.calls = [
        (c.stage, round(c.start - m["received"], 4), round(c.end - c.start, 4))
        for stage in calls.values()
        for c in stage
        if c.start <= m["agent"]
    ]
    sample.calls.sort(key=lambda c: c[1])
    return sample
