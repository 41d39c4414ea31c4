"""OpenTelemetry traces of deliveries and runs (optional: the ``otel`` extra, on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set). See docs/operations.md#tracing."""

from bot.tracing.setup import TracingUnavailable, acquire, check, force_flush, release, wanted
from bot.tracing.spans import (
    context_of,
    enabled,
    failed,
    set_attributes,
    span,
    start,
    traceparent,
    traceparent_of,
)

__all__ = [
    "TracingUnavailable",
    "acquire",
    "check",
    "context_of",
    "enabled",
    "failed",
    "force_flush",
    "release",
    "set_attributes",
    "span",
    "start",
    "traceparent",
    "traceparent_of",
    "wanted",
]
