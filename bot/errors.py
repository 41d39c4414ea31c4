"""Bosun's root exception and the errors the web layer maps to HTTP answers."""

from __future__ import annotations


class BosunError(Exception):
    """Root of every error Bosun raises on purpose."""


class ConfigError(BosunError, ValueError):
    """Configuration that cannot be used; the message says which key and how to fix it."""


class NotFoundError(BosunError, LookupError):
    """A requested record does not exist."""


class ConflictError(BosunError):
    """The request conflicts with the current state (for example an illegal transition)."""


class PermissionDenied(BosunError, PermissionError):
    """The actor may not do this."""
