"""Errors of the model gateway."""

from __future__ import annotations

from bot.errors import BosunError, ConfigError


class GatewayError(BosunError):
    """Root of every error the model gateway raises."""


class MissingKey(GatewayError, ConfigError):
    """An upstream's key variable is not set in the worker's environment."""


class SocketSetupError(GatewayError, OSError):
    """The gateway's socket directory could not be created or handed to the sandbox user."""
