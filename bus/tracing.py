"""OpenTelemetry trace context in the envelope, when the `tracing` extra is installed.

With opentelemetry-api present, every call opens a client span and carries the trace context in
`headers["trace"]`; the worker continues the trace in a span around the handler, and the HTTP
middleware opens the request's span, so one trace spans HTTP -> orders -> inventory and payments.
Without it, these functions cost nothing and change nothing. Exporting the spans is configured the
usual OpenTelemetry way (a TracerProvider with an exporter), outside the bus.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the extra is not installed
    trace = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]


def enabled() -> bool:
    return trace is not None


def _recording() -> bool:
    """Whether a TracerProvider is set: until one is, spans would be non-recording no-ops."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextlib.contextmanager
def span(name: str, kind: str, parent: Any = None) -> Iterator[None]:
    """A span named `name` (kind: "client", "server" or "consumer"), continuing `parent` if given."""
    if trace is None:
        yield
        return
    valid = isinstance(parent, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in parent.items()
    )
    # A malformed header from a sender must not cost the message: the span just starts a new trace.
    context = propagate.extract(parent) if valid and parent else None
    if not _recording():
        # No span to record (about 10 µs a call saved); a sender's context still passes through.
        token = otel_context.attach(context) if context is not None else None
        try:
            yield
        finally:
            if token is not None:
                otel_context.detach(token)
        return
    span_kind = {"client": trace.SpanKind.CLIENT, "server": trace.SpanKind.SERVER}.get(
        kind, trace.SpanKind.CONSUMER
    )
    with trace.get_tracer("bus").start_as_current_span(name, context=context, kind=span_kind):
        yield


def carrier() -> dict[str, str]:
    """The current trace context, to put in an envelope's headers (empty without tracing)."""
    if propagate is None:
        return {}
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers
