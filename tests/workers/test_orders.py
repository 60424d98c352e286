"""The checkout saga over the bus, all domains in one process: confirm, or compensate and explain."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

import bus
from bus.testing import serving
from bus.threads import in_pool
from consumers import events
from tests.conftest import read_records
from tests.polling import apoll
from tests.workers.conftest import balance, order_when, settled, stock, stock_the_shop
from workers.inventory.contract import Inventory
from workers.orders import models
from workers.orders.contract import IdempotencyConflict, InvalidOrder, OrderItem, Orders
from workers.orders.saga import _retry_backoff
from workers.payments.contract import Payments

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]


async def test_a_checkout_reserves_charges_and_confirms(orders: Orders) -> None:
    placed = await orders.place(
        customer_id="ada",
        items=[OrderItem(sku="A-1", quantity=2), OrderItem(sku="B-2", quantity=1)],
        idempotency_key="k1",
    )
    assert placed.state == "pending"
    assert placed.total_cents == 2 * 1_000 + 2_500
    assert [line.name for line in placed.lines] == ["Anvil", "Bellows"]
    order = await settled(placed.order_id)
    assert order.state == "confirmed", order.reason
    assert [step.name for step in order.steps] == ["placed", "reserved", "charged", "confirmed"]
    assert await stock("A-1") == (3, 0)
    assert await stock("B-2") == (0, 0)
    assert await balance() == 10_000 - 4_500


async def test_out_of_stock_fails_with_a_reason_and_gives_the_stock_back(orders: Orders) -> None:
    placed = await orders.place(
        customer_id="ada",
        items=[OrderItem(sku="A-1", quantity=1), OrderItem(sku="B-2", quantity=2)],
        idempotency_key="k1",
    )
    order = await settled(placed.order_id)
    assert order.state == "failed"
    assert order.reason == "Not enough stock: Only 1 of B-2 available, 2 asked for."
    assert [step.name for step in order.steps] == ["placed", "released", "failed"]
    assert await stock("A-1") == (5, 0)
    assert await balance() == 10_000


async def test_insufficient_funds_release_the_stock_and_charge_nothing(orders: Orders) -> None:
    await Inventory.client().restock(sku="B-2", quantity=10)
    placed = await orders.place(
        customer_id="ada", items=[OrderItem(sku="B-2", quantity=5)], idempotency_key="k1"
    )
    order = await settled(placed.order_id)
    assert order.state == "failed"
    assert order.reason.startswith(
        "Payment refused: The balance of ada is 100.00 and 125.00 was asked for; nothing was charged."
    )
    assert [step.name for step in order.steps] == ["placed", "reserved", "released", "failed"]
    assert await stock("B-2") == (11, 0)
    assert await balance() == 10_000
    kinds = [line.kind for line in (await Payments.client().statement(customer_id="ada")).lines]
    assert kinds == ["credit"], "a refused charge leaves no trace in the ledger"


async def test_placing_twice_with_one_key_yields_one_order(orders: Orders) -> None:
    items = [OrderItem(sku="A-1", quantity=1)]
    first, second = await asyncio.gather(
        orders.place(customer_id="ada", items=items, idempotency_key="same"),
        orders.place(customer_id="ada", items=items, idempotency_key="same"),
    )
    assert first.order_id == second.order_id
    await settled(first.order_id)
    assert await balance() == 9_000
    with pytest.raises(
        IdempotencyConflict, match=r"Idempotency key 'same' was used for order .* with other items"
    ):
        await orders.place(
            customer_id="ada", items=[OrderItem(sku="A-1", quantity=2)], idempotency_key="same"
        )


async def test_orders_that_cannot_be_priced_are_refused(orders: Orders) -> None:
    with pytest.raises(InvalidOrder, match="No product has SKU 'Z-9'"):
        await orders.place(customer_id="ada", items=[OrderItem(sku="Z-9", quantity=1)], idempotency_key="k1")
    with pytest.raises(InvalidOrder, match="Each SKU may appear once per order"):
        await orders.place(
            customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)] * 2, idempotency_key="k2"
        )
    with pytest.raises(bus.ValidationError, match=r"items: List should have at least 1 item"):
        await bus.acall("orders.place", customer_id="ada", items=[], idempotency_key="k3")


async def test_a_customers_orders_come_a_page_at_a_time_newest_first(orders: Orders) -> None:
    placed = []
    for n in range(5):
        placed.append(
            await orders.place(
                customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)], idempotency_key=f"k{n}"
            )
        )
    first = await orders.list(customer_id="ada", limit=2)
    second = await orders.list(customer_id="ada", limit=2, cursor=first.next_cursor)
    third = await orders.list(customer_id="ada", limit=2, cursor=second.next_cursor)
    seen = [order.order_id for page in (first, second, third) for order in page.orders]
    assert seen == [order.order_id for order in reversed(placed)]
    assert third.next_cursor == ""
    assert (await orders.list(customer_id="nobody")).orders == []


async def test_every_state_change_is_delivered_as_orders_updated(orders: Orders) -> None:
    """Each state is logged once; the outbox may deliver them out of order (each row retries on
    its own backoff), so a reader orders them by `updated_at`, as the page does."""
    head = await in_pool(events.head)
    placed = await orders.place(
        customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)], idempotency_key="k1"
    )
    await settled(placed.order_id)
    expected = ["pending", "reserved", "charged", "confirmed"]
    async with serving("presentation"):
        logged = await apoll(
            lambda: in_pool(events.since, head, [events.orders_topic("ada")]),
            lambda entries: len(entries) >= len(expected),
            what="every orders.updated of the order logged",
        )
    in_time = sorted(logged, key=lambda entry: entry.data["updated_at"])
    assert [entry.data["state"] for entry in in_time] == expected


async def test_the_outbox_queues_events_for_subscribers_that_are_down_and_they_deduplicate(
    orders: Orders, record_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    placed = await orders.place(
        customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)], idempotency_key="k1"
    )
    await settled(placed.order_id)
    # The subscribers (echo, presentation) are down: the events wait in their durable channels.
    rows = await apoll(
        lambda: in_pool(list, models.Outbox.objects.filter(delivered_at__isnull=False)),
        lambda delivered: len(delivered) == 4,
        what="each of the order's four events on the bus",
    )
    layer = get_channel_layer()
    assert (await layer.durable_depth("echo")).waiting == 4
    # A relay that died after queueing but before recording it queues them again.
    await in_pool(models.Outbox.objects.filter(pk__in=[row.pk for row in rows]).update, delivered_at=None)
    await apoll(
        lambda: in_pool(models.Outbox.objects.filter(delivered_at=None).count),
        lambda undelivered: undelivered == 0,
        what="the outbox to queue them again",
    )
    assert (await layer.durable_depth("echo")).waiting == 8
    async with serving("echo", "presentation"):
        await apoll(
            lambda: layer.durable_depth("echo"),
            lambda depth: (depth.waiting, depth.held, depth.delayed) == (0, 0, 0),
            what="echo to handle them",
        )
    records = read_records(record_dir, "order")
    assert sorted(records) == sorted(
        f"{placed.order_id}:{state}" for state in ("pending", "reserved", "charged", "confirmed")
    ), "each event handled once"


async def test_a_saga_retries_an_absent_domain_at_the_pace_of_orders_retry_backoff(settings: object) -> None:
    """The saga's retries go through bus.backoff.Backoff; jitter 0 makes the wait exactly its ceiling."""
    settings.ORDERS_RETRY_BACKOFF = {"base": 3600.0, "cap": 3600.0, "jitter": 0.0}  # type: ignore[attr-defined]
    async with serving("orders", "inventory"):
        async with serving("payments"):
            await stock_the_shop()
        placed = await Orders.client().place(
            customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)], idempotency_key="k1"
        )
        await order_when(placed.order_id, lambda order: bool(order.waiting), "to wait for payments")
        saga = await in_pool(models.Saga.objects.get, order_id=placed.order_id)
    assert saga.attempts == 1 and "NoWorker" in saga.last_error
    assert saga.next_attempt_at - timezone.now() > datetime.timedelta(minutes=59), "the setting's hour"


def test_a_bad_orders_retry_backoff_names_the_setting_the_problem_and_the_default(settings: object) -> None:
    settings.ORDERS_RETRY_BACKOFF = {"base": 0}  # type: ignore[attr-defined]
    with pytest.raises(
        ImproperlyConfigured,
        match=r"ORDERS_RETRY_BACKOFF must be a dict with some of the keys base, cap and jitter "
        r"\(bus/backoff.py\), not \{'base': 0\}: base must be more than 0 seconds, not 0\. The default is",
    ):
        _retry_backoff()
    settings.ORDERS_RETRY_BACKOFF = {"cap": 30}  # type: ignore[attr-defined]
    assert _retry_backoff().ceiling(10) == 30.0, "the keys not given keep their defaults"
