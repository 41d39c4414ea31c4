"""Spans for Bosun's code: ``span(...)`` and the W3C ``traceparent`` a trace travels in.

While tracing is off every helper here returns at once (``span`` a shared no-op context), so
instrumented code costs a global lookup. Attributes carry ids, names, counts and outcomes only,
never a prompt, an issue's text, a file's content or an error message (which may quote one):
a failed span records the exception's type as ``error.type``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

AttributeValue = str | bool | int | float | Sequence[str]
Attributes = Mapping[str, AttributeValue | None]
Kind = Literal["internal", "server", "client", "consumer", "producer"]

_tracer: Tracer | None = None
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


def activate(tracer: Tracer) -> None:
    global _tracer
    _tracer = tracer


def deactivate() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: Kind = "internal",
    parent: str | Literal[False] | None = False,
    ok: tuple[type[BaseException], ...] = (),
) -> contextlib.AbstractContextManager[Span | None]:
    """A span around a block, current inside it (so spans started in the block and in tasks
    it creates are its children). ``parent``: a ``traceparent`` to continue (``None``: start
    a new trace) instead of the current span. Exceptions other than ``ok`` mark it failed."""
    if _tracer is None:
        return _NOTHING
    return _span(_tracer, name, attributes, kind, parent, ok)


@contextlib.contextmanager
def _span(
    tracer: Tracer,
    name: str,
    attributes: Attributes | None,
    kind: Kind,
    parent: str | Literal[False] | None,
    ok: tuple[type[BaseException], ...],
) -> Iterator[Span]:
    context = None if parent is False else context_of(parent)
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=_kind(kind),
        attributes=clean(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if not isinstance(exc, ok):
                failed(current, type(exc).__name__)
            raise


def start(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: Kind = "internal",
    parent: Span | None = None,
    start_ns: int | None = None,
) -> Span | None:
    """A span the caller ends (``span.end()``): for work that does not fit one block, such
    as a tool call seen start and end in separate output lines. ``parent``: this span's
    parent instead of the current one."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    return _tracer.start_span(
        name,
        context=context,
        kind=_kind(kind),
        attributes=clean(attributes),
        start_time=start_ns,
        record_exception=False,
        set_status_on_exception=False,
    )


def failed(current: Span | None, error_type: str) -> None:
    """Mark ``current`` failed with ``error_type`` (a class of error, never a message)."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR))


def set_attributes(current: Span | None, attributes: Attributes) -> None:
    if current is not None:
        current.set_attributes(clean(attributes))


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent``, or ``None`` (tracing off, or no span)."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def traceparent_of(current: Span | None) -> str | None:
    """``current``'s context as a W3C ``traceparent``."""
    if current is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(current))
    return carrier.get("traceparent")


def context_of(value: str | None) -> Context:
    """The context a stored ``traceparent`` continues; an empty one (a new trace) for
    ``None`` or a malformed value."""
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not value:
        return Context()
    return TraceContextTextMapPropagator().extract({"traceparent": value}, context=Context())


def clean(attributes: Attributes | None) -> dict[str, Any]:
    """``attributes`` without ``None`` values (OpenTelemetry drops them with a warning)."""
    if not attributes:
        return {}
    return {key: value for key, value in attributes.items() if value is not None}


def _kind(kind: Kind) -> Any:
    from opentelemetry.trace import SpanKind

    return {
        "internal": SpanKind.INTERNAL,
        "server": SpanKind.SERVER,
        "client": SpanKind.CLIENT,
        "consumer": SpanKind.CONSUMER,
        "producer": SpanKind.PRODUCER,
    }[kind]
