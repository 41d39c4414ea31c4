"""Faults on demand: each configured fault hits the next matching calls, then clears.

``hold`` keeps a matching call waiting — before it is handled (``phase: "request"``) or
after, with its answer ready (``phase: "response"``) — until the test releases it
(``POST /_emulator/faults/{id}/release``) or ``timeout_ms`` passes: deliberate interleavings,
e.g. a permission answer held until a push has landed, or a merge whose answer is still on
its way while a ``/reject`` arrives.
"""

from __future__ import annotations

import asyncio
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
    "hold",  # keep the call waiting until released (or ``timeout_ms``)
}
PHASES = {"request", "response"}

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
    phase: str = "request"  # hold: before the call is handled, or with its answer ready
    timeout_ms: int = 30_000  # hold: released by itself after this long
    hits: int = 0
    waiting: int = 0  # hold: calls waiting now
    released: bool = False
    created: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "created"}


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._every: dict[int, Fault] = {}
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
        if spec.get("phase", "request") not in PHASES:
            raise HttpError(422, f"phase must be one of {sorted(PHASES)}")
        with self._lock:
            fault = Fault(self._next, kind, **{k: v for k, v in spec.items() if k != "kind"})
            if kind == "protected_branch" and "count" not in spec:
                fault.count = None
            self._next += 1
            self._faults.append(fault)
            self._every[fault.id] = fault
            return fault

    def get(self, fault_id: int) -> Fault:
        """Any fault created so far, live or used up (a hold is released only by the test)."""
        with self._lock:
            fault = self._every.get(fault_id)
        if fault is None:
            raise HttpError(404, "Not Found")
        return fault

    def release(self, fault_id: int) -> Fault:
        """Let the calls a hold keeps waiting go on, and any later ones pass."""
        fault = self.get(fault_id)
        with self._lock:
            fault.released = True
            if fault in self._faults:
                self._faults.remove(fault)
        return fault

    async def wait(self, fault: Fault) -> None:
        """Keep one call waiting until ``fault`` is released or its timeout passes."""
        with self._lock:
            fault.waiting += 1
        deadline = time.monotonic() + fault.timeout_ms / 1000
        try:
            while not fault.released and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            with self._lock:
                fault.waiting -= 1

    def clear(self) -> None:
        with self._lock:
            for fault in self._every.values():
                fault.released = True
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
