"""Turning tracing on and off for a process (docs/operations.md#tracing).

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set and the ``otel`` extra is installed. The web app's lifespan and the worker's startup
each ``acquire`` it and ``release`` it at shutdown; the first acquisition in a process builds
the tracer provider (OTLP over HTTP/protobuf, batched), the last release flushes and shuts it
down, so ``bosun up``, which runs both in one process, exports once. Nothing of OpenTelemetry
is imported while tracing is off.

The standard variables configure the rest: ``OTEL_EXPORTER_OTLP_HEADERS``, ``…_TIMEOUT``,
``…_COMPRESSION``, ``OTEL_SERVICE_NAME`` (default ``bosun``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``. ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn
tracing off.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from bot.errors import ConfigError
from bot.tracing import spans

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = structlog.get_logger("bot.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
INSTALL_HINT = "install Bosun with its `otel` extra (pip install 'bosun[otel]')"


class TracingUnavailable(ConfigError):
    """Tracing was asked for (an OTLP endpoint is set) but cannot be provided."""


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def check(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``TracingUnavailable`` when the environment asks for traces Bosun cannot export:
    the packages are missing, or a protocol other than OTLP over HTTP/protobuf is asked for.
    Entry points call it before starting, so the error comes first and plainly."""
    env = os.environ if environ is None else environ
    if not wanted(env):
        return
    for name in PROTOCOL_VARIABLES:
        protocol = env.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            raise TracingUnavailable(
                f"{name}={protocol}: Bosun exports traces as OTLP over HTTP/protobuf only; "
                "point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (usually 4318)"
            )
        if protocol:
            break
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        endpoint = next(n for n in ENDPOINT_VARIABLES if env.get(n, "").strip())
        raise TracingUnavailable(
            f"{endpoint} is set but the OpenTelemetry packages are not installed ({exc.name}): "
            f"{INSTALL_HINT}, or unset {endpoint}"
        ) from exc


@dataclass
class _Provider:
    provider: TracerProvider
    users: int


_lock = threading.Lock()
_active: _Provider | None = None


def acquire(exporter: SpanExporter | None = None) -> bool:
    """Start tracing for this process when the environment asks for it (or with ``exporter``,
    whatever the environment says: tests). Returns whether tracing is on; every call that
    returned ``True`` is paired with one ``release``. Raises ``TracingUnavailable`` when the
    environment asks for traces that cannot be exported."""
    global _active
    with _lock:
        if _active is not None:
            _active.users += 1
            return True
        if exporter is None:
            if not wanted():
                return False
            check()
        provider = _build(exporter)
        _active = _Provider(provider, 1)
        spans.activate(provider.get_tracer("bosun", _version()))
        _watch_new_runs(True)
    log.info("tracing_started", exporter=type(exporter).__name__ if exporter else "otlp")
    return True


def release() -> None:
    """One user of tracing is done; the last one flushes the spans and stops the exporter."""
    global _active
    with _lock:
        if _active is None:
            return
        _active.users -= 1
        if _active.users > 0:
            return
        provider, _active = _active.provider, None
        spans.deactivate()
        _watch_new_runs(False)
    provider.shutdown()  # flushes what is batched, then closes the exporter


def force_flush(timeout_millis: int = 10_000) -> bool:
    """Export every ended span now (tests and orderly shutdowns)."""
    active = _active
    return active.provider.force_flush(timeout_millis) if active is not None else True


def _watch_new_runs(on: bool) -> None:
    """While tracing is on, a run row inserted under a span records that span as its
    ``trace_parent``, whichever code creates it (a label's delivery, ``/retry``, the API):
    every job of the run then continues the trace that started it."""
    from sqlalchemy import event

    from bot.db.models import Run

    if on:
        event.listen(Run, "before_insert", _record_trace_parent)
    elif event.contains(Run, "before_insert", _record_trace_parent):
        event.remove(Run, "before_insert", _record_trace_parent)


def _record_trace_parent(mapper: Any, connection: Any, run: Any) -> None:
    if getattr(run, "trace_parent", None) is None:
        run.trace_parent = spans.traceparent()


def _build(exporter: SpanExporter | None) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.version": _version()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "bosun"}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _version() -> str:
    try:
        return importlib.metadata.version("bosun")
    except importlib.metadata.PackageNotFoundError:
        return "0"
