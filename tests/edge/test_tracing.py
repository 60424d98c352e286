"""One trace from the HTTP request through orders to inventory and payments (the tracing extra)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.edge.conftest import ORDER_ITEMS, sign_in
from tests.polling import apoll

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process: this module is the only one that does.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    yield _exporter


async def test_a_checkout_is_one_trace_across_http_and_every_domain(
    in_process_shop: None, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    ada = await sign_in("ada")
    order = (await ada.post_json("/api/orders", ORDER_ITEMS, key="k")).json()
    await apoll(
        lambda: ada.get(f"/api/orders/{order['order_id']}"),
        lambda response: response.json()["state"] == "confirmed",
        what=f"order {order['order_id']} confirmed",
    )
    finished = spans.get_finished_spans()
    http = next(s for s in finished if s.name == "POST /api/orders")
    in_trace = {s.name for s in finished if s.context.trace_id == http.context.trace_id}
    assert {
        "call orders.place",
        "bus.request orders.place",
        "bus.command orders.advance",
        "bus.request inventory.reserve",
        "bus.request payments.charge",
        "bus.request inventory.commit",
    } <= in_trace, in_trace
    handled = next(s for s in finished if s.name == "bus.request orders.place")
    called = next(s for s in finished if s.name == "call orders.place")
    assert handled.parent is not None and handled.parent.span_id == called.context.span_id
