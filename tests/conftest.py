"""Shared fixtures. Service fixtures live in ``tests/services.py``."""

from __future__ import annotations
