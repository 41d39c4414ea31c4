"""Primary rate limits per credential, reported in GitHub's ``x-ratelimit-*`` headers."""

from __future__ import annotations

import threading
import time
from typing import Any

LIMITS = {"anonymous": 60, "jwt": 5000}
DEFAULT_LIMIT = 5000


class RateLimits:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[int, int]] = {}  # key -> (used, reset epoch)

    def _bucket(self, key: str) -> tuple[int, int]:
        used, reset = self._buckets.get(key, (0, 0))
        if reset <= time.time():
            used, reset = 0, int(time.time()) + 3600
        return used, reset

    def count(self, key: str) -> dict[str, int]:
        with self._lock:
            used, reset = self._bucket(key)
            self._buckets[key] = (used + 1, reset)
            return self._numbers(key, used + 1, reset)

    def peek(self, key: str) -> dict[str, int]:
        with self._lock:
            used, reset = self._bucket(key)
            return self._numbers(key, used, reset)

    @staticmethod
    def _numbers(key: str, used: int, reset: int) -> dict[str, int]:
        limit = LIMITS.get(key, DEFAULT_LIMIT)
        return {"limit": limit, "remaining": max(limit - used, 0), "reset": reset, "used": used}

    @staticmethod
    def headers(numbers: dict[str, int], resource: str = "core") -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(numbers["limit"]),
            "x-ratelimit-remaining": str(numbers["remaining"]),
            "x-ratelimit-reset": str(numbers["reset"]),
            "x-ratelimit-used": str(numbers["used"]),
            "x-ratelimit-resource": resource,
        }

    def overview(self, key: str) -> dict[str, Any]:
        core = self.peek(key)
        reset = int(time.time()) + 60
        search = {"limit": 30, "remaining": 30, "reset": reset, "used": 0, "resource": "search"}
        graphql = {
            "limit": 5000,
            "remaining": 5000,
            "reset": core["reset"],
            "used": 0,
            "resource": "graphql",
        }
        return {
            "resources": {
                "core": {**core, "resource": "core"},
                "search": search,
                "graphql": graphql,
                "integration_manifest": {
                    "limit": 5000,
                    "remaining": 5000,
                    "reset": core["reset"],
                    "used": 0,
                    "resource": "integration_manifest",
                },
            },
            "rate": {**core, "resource": "core"},
        }
