"""Faults on demand: each configured fault hits the next matching calls, then clears."""

from __future__ import annotations

import fnmatch
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .http import HttpError

KINDS = {
    "error",  # answer ``status`` (5xx) with GitHub's error body
    "secondary_rate_limit",  # 403 + retry-after, "You have exceeded a secondary rate limit"
    "primary_rate_limit",  # 403 + x-ratelimit-remaining: 0
    "slow",  # delay the answer by ``delay_ms``
    "protected_branch",  # pushes to ``branch`` of ``repo`` are refused (GH006)
}

SECONDARY = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID {rid}."
)


@dataclass
class Fault:
    id: int
    kind: str
    method: str = "*"
    path: str = "*"  # glob over the request path, e.g. "/repos/*/*/issues/*/comments"
    count: int | None = 1  # None: until cleared
    status: int = 502
    delay_ms: int = 0
    retry_after: int = 60
    reset_in: int = 3600
    message: str | None = None
    repo: str | None = None  # protected_branch: "owner/name"
    branch: str | None = None
    hits: int = 0
    created: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "created"}


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next = 1

    def add(self, spec: dict[str, Any]) -> Fault:
        kind = spec.get("kind")
        if kind not in KINDS:
            raise HttpError(422, f"Unknown fault kind {kind!r}; one of {sorted(KINDS)}")
        allowed = set(Fault.__dataclass_fields__) - {"id", "hits", "created", "kind"}
        unknown = set(spec) - allowed - {"kind"}
        if unknown:
            raise HttpError(422, f"Unknown fault fields: {sorted(unknown)}")
        if kind == "protected_branch" and not (spec.get("repo") and spec.get("branch")):
            raise HttpError(422, "protected_branch needs 'repo' and 'branch'")
        with self._lock:
            fault = Fault(self._next, kind, **{k: v for k, v in spec.items() if k != "kind"})
            if kind == "protected_branch" and "count" not in spec:
                fault.count = None
            self._next += 1
            self._faults.append(fault)
            return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def take(self, method: str, path: str) -> list[Fault]:
        """The request faults that hit this call (at most one of each kind), consumed."""
        hit: list[Fault] = []
        with self._lock:
            for fault in list(self._faults):
                if fault.kind == "protected_branch" or any(f.kind == fault.kind for f in hit):
                    continue
                if fault.method not in {"*", method} or not fnmatch.fnmatchcase(path, fault.path):
                    continue
                hit.append(fault)
                self._consume(fault)
        return hit

    def protected(self, repo: str, refs: list[str]) -> list[str]:
        """Protected branches among ``refs`` pushed to ``repo``, consuming one use each."""
        hit: list[str] = []
        with self._lock:
            for fault in list(self._faults):
                if fault.kind != "protected_branch" or fault.repo.lower() != repo.lower():  # type: ignore[union-attr]
                    continue
                if f"refs/heads/{fault.branch}" in refs:
                    hit.append(str(fault.branch))
                    self._consume(fault)
        return hit

    def _consume(self, fault: Fault) -> None:
        fault.hits += 1
        if fault.count is not None and fault.hits >= fault.count:
            self._faults.remove(fault)
