"""bus.tracing without a TracerProvider: no spans are made, but a sender's trace passes through."""

from __future__ import annotations

import pytest

from bus import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}


def test_without_a_provider_the_senders_trace_still_reaches_nested_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "_recording", lambda: False)
    assert "traceparent" not in tracing.carrier()
    with tracing.span("handle orders.place", "server", PARENT):
        nested = tracing.carrier()
    assert nested["traceparent"].split("-")[1] == TRACE_ID
    assert "traceparent" not in tracing.carrier(), "the context is restored afterwards"


def test_without_a_provider_a_malformed_parent_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_recording", lambda: False)
    with tracing.span("handle x", "server", {"traceparent": 7}):
        assert "traceparent" not in tracing.carrier()
