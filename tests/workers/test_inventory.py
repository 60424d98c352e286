"""The inventory domain over the bus: catalogue, stock, and reservations idempotent per order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import bus
from bus import wakeups
from bus.testing import serving
from bus.threads import in_pool
from consumers import events
from tests.polling import apoll
from workers.inventory.contract import Inventory, OutOfStock, ReservationClosed, UnknownProduct

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases=["default", "inventory"])]


@pytest.fixture
async def inventory() -> AsyncIterator[Inventory]:
    async with serving("inventory"):
        client = Inventory.client()
        await client.add_product(sku="A-1", name="Anvil", price_cents=1999)
        await client.restock(sku="A-1", quantity=10)
        yield client


async def test_stock_reports_on_hand_reserved_and_available(inventory: Inventory) -> None:
    stock = await bus.acall("inventory.stock", sku="A-1")
    assert stock == {
        "sku": "A-1",
        "name": "Anvil",
        "price_cents": 1999,
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
        "version": 1,
    }
    await inventory.add_product(sku="A-1", name="Better anvil", price_cents=2499)
    updated = await inventory.stock(sku="A-1")
    assert (updated.name, updated.price_cents, updated.on_hand) == ("Better anvil", 2499, 10)
    assert [product.sku for product in await inventory.products()] == ["A-1"]


async def test_unknown_sku_is_a_declared_error(inventory: Inventory) -> None:
    with pytest.raises(UnknownProduct, match="No product has SKU 'B-2'"):
        await inventory.restock(sku="B-2", quantity=1)
    with pytest.raises(UnknownProduct):
        await inventory.reserve(order_id="o-1", sku="B-2", quantity=1)


async def test_invalid_quantities_are_refused_naming_the_field(inventory: Inventory) -> None:
    with pytest.raises(bus.ValidationError, match="quantity: Input should be greater than 0"):
        await inventory.restock(sku="A-1", quantity=0)
    with pytest.raises(bus.ValidationError, match="sku: String should match pattern"):
        await inventory.stock(sku="no spaces please")


async def test_reserve_is_idempotent_per_order_and_sku(inventory: Inventory) -> None:
    first = await inventory.reserve(order_id="o-1", sku="A-1", quantity=3)
    again = await inventory.reserve(order_id="o-1", sku="A-1", quantity=3)
    assert first == again
    assert first.state == "held"
    stock = await inventory.stock(sku="A-1")
    assert (stock.on_hand, stock.reserved, stock.available) == (10, 3, 7)


async def test_out_of_stock_reserves_nothing(inventory: Inventory) -> None:
    with pytest.raises(OutOfStock, match="Only 10 of A-1 available, 11 asked for") as caught:
        await inventory.reserve(order_id="o-1", sku="A-1", quantity=11)
    assert caught.value.details == {"sku": "A-1", "available": 10, "requested": 11}
    assert (await inventory.stock(sku="A-1")).reserved == 0


async def test_commit_turns_a_hold_into_a_sale_once(inventory: Inventory) -> None:
    await inventory.reserve(order_id="o-1", sku="A-1", quantity=4)
    committed = await inventory.commit(order_id="o-1")
    assert [r.state for r in committed] == ["committed"]
    assert await inventory.commit(order_id="o-1") == committed
    stock = await inventory.stock(sku="A-1")
    assert (stock.on_hand, stock.reserved) == (6, 0)


async def test_a_release_after_the_commit_undoes_the_sale(inventory: Inventory) -> None:
    """Only a failed order is released: its commit landed unseen (a lost reply, a saga that gave up)."""
    await inventory.reserve(order_id="o-1", sku="A-1", quantity=4)
    await inventory.commit(order_id="o-1")
    assert [r.state for r in await inventory.release(order_id="o-1")] == ["released"]
    assert [r.state for r in await inventory.release(order_id="o-1")] == ["released"], "once"
    stock = await inventory.stock(sku="A-1")
    assert (stock.on_hand, stock.reserved) == (10, 0)
    with pytest.raises(ReservationClosed, match="was released; its stock cannot be committed"):
        await inventory.commit(order_id="o-1")


async def test_a_hold_that_outlived_inventory_hold_seconds_cannot_be_committed(
    inventory: Inventory, settings: object
) -> None:
    await inventory.reserve(order_id="o-1", sku="A-1", quantity=4)
    settings.INVENTORY_HOLD_SECONDS = 0  # type: ignore[attr-defined]
    # The commit finds it expired (or the sweep released it first): either way it is refused.
    with pytest.raises(ReservationClosed, match="o-1 was released") as refused:
        await inventory.commit(order_id="o-1")
    assert refused.value.details["state"] == "released"
    stock = await inventory.stock(sku="A-1")
    assert (stock.on_hand, stock.reserved) == (10, 0), "the expired hold is given back, not sold"
    with pytest.raises(ReservationClosed):
        await inventory.reserve(order_id="o-1", sku="A-1", quantity=1)


async def test_the_sweep_gives_back_holds_that_outlived_inventory_hold_seconds(
    inventory: Inventory, settings: object
) -> None:
    await inventory.reserve(order_id="o-1", sku="A-1", quantity=4)
    await inventory.reserve(order_id="o-2", sku="A-1", quantity=1)
    await inventory.commit(order_id="o-2")
    settings.INVENTORY_HOLD_SECONDS = 0  # type: ignore[attr-defined]
    stock = await apoll(
        lambda: inventory.stock(sku="A-1"), lambda s: s.reserved == 0, what="the hold released"
    )
    assert (stock.on_hand, stock.available) == (9, 9), "the expired hold is back, the sale stands"


async def test_release_gives_stock_back_and_refuses_late_reserves(inventory: Inventory) -> None:
    await inventory.reserve(order_id="o-1", sku="A-1", quantity=4)
    released = await inventory.release(order_id="o-1")
    assert [r.state for r in released] == ["released"]
    assert await inventory.release(order_id="o-1") == released
    assert (await inventory.stock(sku="A-1")).reserved == 0
    with pytest.raises(ReservationClosed, match="Order o-1 was already released"):
        await inventory.reserve(order_id="o-1", sku="A-1", quantity=1)
    with pytest.raises(ReservationClosed, match="was released; its stock cannot be committed"):
        await inventory.commit(order_id="o-1")


async def test_release_before_reserve_blocks_the_late_reserve(inventory: Inventory) -> None:
    """A saga that gave up on a slow reserve releases first; the late reserve must not hold stock."""
    assert await inventory.release(order_id="o-9") == []
    with pytest.raises(ReservationClosed):
        await inventory.reserve(order_id="o-9", sku="A-1", quantity=1)
    assert (await inventory.stock(sku="A-1")).reserved == 0


async def test_concurrent_reserves_never_oversell(inventory: Inventory) -> None:
    results = await asyncio.gather(
        *(inventory.reserve(order_id=f"o-{n}", sku="A-1", quantity=3) for n in range(8)),
        return_exceptions=True,
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, OutOfStock)]
    assert len(held) == 3 and len(refused) == 5, results
    stock = await inventory.stock(sku="A-1")
    assert (stock.on_hand, stock.reserved, stock.available) == (10, 9, 1)


async def test_stock_changes_leave_through_the_outbox_each_with_its_version(inventory: Inventory) -> None:
    """Every change arrives once; after failed deliveries (the subscriber was down) rows are retried
    each on its own backoff, so they may arrive out of order: the version says which is newest."""
    head = await in_pool(events.head)
    await inventory.reserve(order_id="o-1", sku="A-1", quantity=2)
    await inventory.release(order_id="o-1")
    async with serving("presentation"):  # the subscriber comes up late: the outbox waited for it
        logged = await apoll(
            lambda: in_pool(events.since, head, [events.STOCK]),
            lambda entries: len(entries) == 3,
            what="the three stock changes logged",
        )
    assert {entry.kind for entry in logged} == {"inventory.stock_changed"}
    by_version = sorted((entry.data for entry in logged), key=lambda data: data["version"])
    assert [data["version"] for data in by_version] == [1, 2, 3], "every change, a higher version"
    assert [data["reserved"] for data in by_version] == [0, 2, 0], "restock, reserve, release"
    assert by_version[1] == {"sku": "A-1", "on_hand": 10, "reserved": 2, "available": 8, "version": 2}


async def test_a_committed_stock_change_wakes_the_outbox_relay(inventory: Inventory) -> None:
    with wakeups.listening(wakeups.OUTBOX) as committed:
        await inventory.restock(sku="A-1", quantity=1)
        await asyncio.wait_for(committed.wait(), 10)


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_processes_that_start_the_event_log_at_once_agree_on_its_epoch() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    start = threading.Barrier(8)

    def first_use() -> str:
        try:
            start.wait()  # all at once, as daphne and the presentation worker may on a new log
            return events.epoch()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        epochs = set(pool.map(lambda _: first_use(), range(8)))
    assert len(epochs) == 1, epochs
    assert epochs == {events.epoch()}
