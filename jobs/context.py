"""The typed job context: what every job function finds in ``ctx["bosun"]``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from bot.services import Services
from bot.settings import Settings


@dataclass
class JobContext:
    settings: Settings
    services: Services
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def job_context(ctx: dict[str, Any]) -> JobContext:
    """The ``JobContext`` that ``on_startup`` put into arq's ``ctx``."""
    value = ctx["bosun"]
    if not isinstance(value, JobContext):
        raise TypeError("ctx['bosun'] is not a JobContext; was the worker started by bosun?")
    return value
