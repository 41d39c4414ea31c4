"""What this process's background work cannot reach right now.

A worker that loses Redis or the database keeps running (``jobs.resilience``): it marks the
service down here while it waits to reconnect and up again once it has. ``/readyz`` (the web
app, and so ``bosun up`` with its worker inside) and the worker's own ``/readyz`` on its metrics
port report every service marked down, so an orchestrator takes the process out of rotation
meanwhile instead of restarting it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Outage:
    service: str
    error: str
    since: datetime
    started: float
    """``time.monotonic()`` when it was first noticed."""


class Readiness:
    """The services this process found unreachable, and when each last came back."""

    def __init__(self) -> None:
        self._down: dict[str, Outage] = {}
        self._recovered: dict[str, float] = {}

    def down(self, service: str, error: str) -> bool:
        """Mark ``service`` unreachable; ``True`` when it was reachable until now."""
        if service in self._down:
            return False
        self._down[service] = Outage(service, error[:300], datetime.now(UTC), time.monotonic())
        return True

    def up(self, service: str) -> Outage | None:
        """Mark ``service`` reachable again; returns the outage it ends, if any."""
        outage = self._down.pop(service, None)
        if outage is not None:
            self._recovered[service] = time.monotonic()
        return outage

    def failing(self) -> dict[str, Outage]:
        return dict(self._down)

    def quiet_for(self) -> float:
        """Seconds since every service was last reachable without a gap (``inf`` when none
        was ever lost; ``0`` while one is down)."""
        if self._down:
            return 0.0
        if not self._recovered:
            return float("inf")
        return time.monotonic() - max(self._recovered.values())

    def clear(self) -> None:
        self._down.clear()
        self._recovered.clear()


READINESS = Readiness()
"""The process's one record (the worker and the web app of ``bosun up`` share it)."""


__all__ = ["READINESS", "Outage", "Readiness"]
