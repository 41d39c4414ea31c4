"""Experiments that preview a product change from outside, for comparison runs only.

``shared_ssl_context``: every ``httpx.AsyncClient`` built while it is active reuses one SSL
context. githubkit builds a new httpx client for each request when the ``GitHub`` object is not
held open, and a new client loads the CA bundle into a fresh SSL context: tens of milliseconds
of CPU that block the event loop, per GitHub API call. This shows what passing one context
(githubkit's ``ssl_verify=``) or keeping clients open would save.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Iterator
from typing import Any

import certifi
import httpx


@contextlib.contextmanager
def shared_ssl_context() -> Iterator[ssl.SSLContext]:
    context = ssl.create_default_context(cafile=certifi.where())
    original = httpx.AsyncClient.__init__

    @functools.wraps(original)
    def init(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("verify", True) is True:
            kwargs["verify"] = context
        original(self, *args, **kwargs)

    httpx.AsyncClient.__init__ = init  # type: ignore[method-assign]
    try:
        yield context
    finally:
        httpx.AsyncClient.__init__ = original  # type: ignore[method-assign]
