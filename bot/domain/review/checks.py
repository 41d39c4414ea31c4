"""Merge when green: may an approved change merge now, given the checks its base branch
requires? Pure: the forge port fills a ``ChecksReport`` and this decides on it.

The rules, as branch protection counts them:

* Only the base branch's *required* contexts gate the merge (its protection's list); a check
  nobody requires may fail without holding anything up.
* A required context passes when every check reported under that name passed (check runs:
  ``success``, ``neutral``, ``skipped``; commit statuses: ``success``). One failing report
  fails it. None reported yet, or one still running, is waiting.
* A context the protection binds to one App (``checks[].app_id``) counts only that App's check
  runs: a commit status or another App's check of the same name neither passes nor fails it.
* Bosun's own check run (``bosun``) stands for Bosun's gates: its conclusion while a run
  waits is Bosun's to set, so it is never waited on; the gates decide instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.domain.limits import clip, listing
from bot.domain.status import CHECK_NAME

AWAITING_CHECKS = "awaiting checks"
"""The phase of an ``approved`` run whose merge waits for required checks."""


@dataclass(frozen=True)
class CheckResult:
    """One check the forge reports on a commit: a check run (by name) or a commit status
    (by context), reduced to ``pending``, ``success`` or ``failure``; ``detail`` is the
    forge's own word (``timed_out``, ``error``...)."""

    name: str
    state: Literal["pending", "success", "failure"]
    detail: str
    url: str | None = None
    app_id: int | None = None


@dataclass(frozen=True)
class ChecksReport:
    """What must pass before a change merges into a branch, and what was reported on it:
    ``required`` are the branch protection's required contexts (empty when none)."""

    required: tuple[str, ...] = ()
    results: tuple[CheckResult, ...] = ()
    required_apps: tuple[tuple[str, int], ...] = ()
    """Required contexts that only one App's check runs satisfy: (name, app id)."""
    statuses_readable: bool = True
    """False when the forge would not show the commit statuses (a missing permission)."""


@dataclass(frozen=True)
class Green:
    """Everything required passed (or nothing is required)."""

    passed: tuple[str, ...]


@dataclass(frozen=True)
class Waiting:
    """Some required checks have not reported a result yet."""

    pending: tuple[str, ...]
    passed: tuple[str, ...]
    hint: str = ""

    def describe(self) -> str:
        done = f" ({len(self.passed)} of {len(self.passed) + len(self.pending)} passed)"
        return f"waiting for required checks: {listing(self.pending)}{done}{self.hint}"


@dataclass(frozen=True)
class Red:
    """A required check failed: ``name`` with the forge's word for it."""

    name: str
    detail: str
    url: str | None

    def describe(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"the required check `{clip(self.name, 120)}` {_verb(self.detail)}{where}"


Verdict = Green | Waiting | Red


def _verb(detail: str) -> str:
    return {
        "failure": "failed",
        "error": "errored",
        "timed_out": "timed out",
        "cancelled": "was cancelled",
        "action_required": "needs action",
        "stale": "went stale",
        "startup_failure": "failed to start",
    }.get(detail, f"ended `{clip(detail, 40)}`")


def checks_verdict(
    report: ChecksReport,
    *,
    gates_passed: bool | None,
    own_check: str = CHECK_NAME,
    own_app_id: int | None = None,
) -> Verdict:
    """Whether a change may merge now. ``gates_passed`` is Bosun's own gates' result (None:
    no gates ran); ``own_app_id`` tells Bosun's own check runs from another App's that
    happens to use the same name."""
    if gates_passed is False:
        return Red(own_check, "failure", None)
    by_name: dict[str, list[CheckResult]] = {}
    for result in report.results:
        if result.name == own_check and (own_app_id is None or result.app_id == own_app_id):
            continue
        by_name.setdefault(result.name, []).append(result)
    passed: list[str] = []
    pending: list[str] = []
    apps = dict(report.required_apps)
    for name in report.required:
        if name == own_check:
            continue  # Bosun's gates, decided above
        found = by_name.get(name, [])
        if name in apps:
            found = [r for r in found if r.app_id == apps[name]]
        failed = next((r for r in found if r.state == "failure"), None)
        if failed is not None:
            return Red(name, failed.detail, failed.url)
        if found and all(r.state == "success" for r in found):
            passed.append(name)
        else:
            pending.append(name)
    if pending and not report.statuses_readable:
        hint = (
            " — Bosun cannot read commit statuses: an owner of the installation accepts the "
            "App's new *Commit statuses: read* permission"
        )
        return Waiting(tuple(pending), tuple(passed), hint)
    if pending:
        return Waiting(tuple(pending), tuple(passed))
    return Green(tuple(passed))
