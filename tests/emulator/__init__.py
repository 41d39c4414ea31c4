"""A GitHub emulator for tests: REST, git smart HTTP and signed webhooks on loopback.

See ``docs/emulator.md``. Start it with ``python -m tests.emulator serve`` or use the pytest
fixtures in ``tests.emulator.fixtures``.
"""

from .client import EmulatorClient
from .server import EmulatorServer

__all__ = ["EmulatorClient", "EmulatorServer"]
