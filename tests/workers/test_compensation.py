"""The saga failing after payments charged: the refund branch, run on purpose (SQLite and PostgreSQL).

Each way in is a real fault of a real domain, served in-process: a hold that expired before its
commit, inventory gone after the charge, payments in read-only mode when the saga gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bus.modes import set_read_only
from bus.testing import serving
from bus.threads import in_pool
from tests.polling import apoll
from tests.workers.conftest import (
    OPENING_BALANCE,
    balance,
    money_of,
    order_when,
    settled,
    stock,
    stock_the_shop,
)
from workers.inventory.contract import Inventory
from workers.orders.contract import Order, Orders
from workers.payments.contract import ChargeRefused, Payments

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

TWO_ANVILS = [{"sku": "A-1", "quantity": 2}]


@contextlib.contextmanager
def logged(logger: str, text: str) -> Iterator[threading.Event]:
    """Set once `logger` logs a message containing `text`, from any thread. (Not caplog: the first
    `serving()` sets Django up, and its LOGGING replaces the root handlers, caplog's included.)"""
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    watch = Watch()
    logging.getLogger(logger).addHandler(watch)
    try:
        yield seen
    finally:
        logging.getLogger(logger).removeHandler(watch)


def steps(order: Order) -> list[str]:
    return [step.name for step in order.steps]


async def test_a_commit_refused_after_the_charge_refunds_once_and_releases_the_stock(
    orders: Orders, settings: object
) -> None:
    settings.INVENTORY_HOLD_SECONDS = 0  # type: ignore[attr-defined]  # every hold expired by its commit
    placed = await orders.place(customer_id="ada", items=TWO_ANVILS, idempotency_key="k1")  # type: ignore[arg-type]
    order = await settled(placed.order_id)
    assert order.state == "failed"
    assert order.reason.startswith("The stock hold was lost: "), order.reason
    assert f"order {placed.order_id} was released" in order.reason, order.reason
    assert steps(order) == ["placed", "reserved", "charged", "released", "refunded", "failed"]
    assert order.steps[4].detail == "20.00", "money as a person reads it"
    assert await money_of(placed.order_id) == [("charge", -2_000), ("refund", 2_000)]
    assert await balance() == OPENING_BALANCE
    assert await stock("A-1") == (5, 0), "nothing sold, nothing held"


async def test_inventory_gone_after_the_charge_refunds_at_once_and_releases_when_it_is_back(
    settings: object,
) -> None:
    settings.ORDERS_GIVE_UP_SECONDS = 60  # type: ignore[attr-defined]
    async with serving("orders"):
        async with serving("inventory"):
            async with serving("payments"):
                await stock_the_shop()
            placed = await Orders.client().place(customer_id="ada", items=TWO_ANVILS, idempotency_key="k1")  # type: ignore[arg-type]
            order_id = placed.order_id
            waiting = await order_when(order_id, lambda o: bool(o.waiting), "to say what it waits for")
            assert (waiting.state, waiting.waiting) == (
                "reserved",
                "Waiting for payments: no worker is running.",
            )
        # Inventory is gone; payments comes: the charge goes through, the commit cannot.
        async with serving("payments"):
            await order_when(
                order_id,
                lambda o: o.state == "charged" and "inventory" in o.waiting,
                "to wait for its commit",
            )
            settings.ORDERS_GIVE_UP_SECONDS = 0  # type: ignore[attr-defined]  # its patience has run out
            undoing = await order_when(
                order_id,
                lambda o: "refunded" in steps(o) and bool(o.waiting),
                "to be refunded, then wait for inventory",
            )
            assert undoing.state == "compensating"
            assert re.fullmatch(
                r"Gave up after \d+ s waiting for inventory: no worker is running\.", undoing.reason
            )
            assert undoing.waiting == "Waiting for inventory: no worker is running."
            assert await money_of(order_id) == [("charge", -2_000), ("refund", 2_000)]
            async with serving("inventory"):
                order = await settled(order_id)
                assert await stock("A-1") == (5, 0), "the held units are back"
            assert order.state == "failed"
            assert (order.reason, order.waiting) == (undoing.reason, "")
            assert steps(order) == ["placed", "reserved", "charged", "refunded", "released", "failed"]
            assert await money_of(order_id) == [("charge", -2_000), ("refund", 2_000)], "refunded once"
            assert await balance() == OPENING_BALANCE


async def test_read_only_payments_the_order_says_why_it_waits_and_a_refund_of_nothing_needs_no_write(
    orders: Orders, settings: object
) -> None:
    settings.BUS = {**settings.BUS, "MODE_CACHE_SECONDS": 0.05}  # type: ignore[attr-defined]
    settings.ORDERS_GIVE_UP_SECONDS = 60  # type: ignore[attr-defined]
    await in_pool(set_read_only, "payments", True, "ledger migration")
    placed = await orders.place(customer_id="ada", items=TWO_ANVILS, idempotency_key="k1")  # type: ignore[arg-type]
    order_id = placed.order_id
    waiting = await order_when(order_id, lambda o: bool(o.waiting), "to say what it waits for")
    assert (waiting.state, waiting.waiting) == (
        "reserved",
        "Waiting for payments: read-only (ledger migration).",
    )
    # The saga gives up on the charge; its refund cannot be written, but nothing was charged.
    settings.ORDERS_GIVE_UP_SECONDS = 0  # type: ignore[attr-defined]
    order = await settled(order_id)
    assert order.state == "failed", "a refund of nothing does not wait for read-only to end"
    assert re.fullmatch(
        r"Gave up after \d+ s waiting for payments: read-only \(ledger migration\)\.", order.reason
    )
    assert steps(order) == ["placed", "reserved", "released", "failed"]
    assert await stock("A-1") == (5, 0)
    payments = Payments.client()
    assert (await payments.payment(order_id=order_id, customer_id="ada")).state == "none"
    # Once payments takes writes again, the saga writes the refund that blocks a late charge.
    await in_pool(set_read_only, "payments", False)
    await apoll(
        lambda: payments.payment(order_id=order_id, customer_id="ada"),
        lambda payment: payment.state == "refunded",
        what="the refund written once read-only ended",
    )
    with pytest.raises(ChargeRefused, match=f"Order {order_id} was refunded"):
        await payments.charge(order_id=order_id, customer_id="ada", amount_cents=2_000)
    assert await money_of(order_id) == []
    assert await balance() == OPENING_BALANCE


async def test_a_runner_frozen_past_its_lease_cannot_confirm_an_order_the_sweep_compensated(
    settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the refund chaos run: an order confirmed with its charge refunded.

    Runner A's commit lands, then A freezes before storing it. Its lease runs out, the sweep's
    runner B finds inventory gone, gives up, undoes the commit and refunds the charge. When A
    wakes, its step must not be stored over B's: the claim's token fences every write.
    """
    settings.ORDERS_LEASE_SECONDS = 1  # type: ignore[attr-defined]
    settings.ORDERS_GIVE_UP_SECONDS = 0  # type: ignore[attr-defined]
    landed, wake = threading.Event(), threading.Event()
    commit = Inventory.commit.call

    def commit_then_freeze(*, order_id: str) -> Any:
        result = commit(order_id=order_id)
        if not landed.is_set():  # runner A only: B and later runners go straight on
            landed.set()
            assert wake.wait(60), "the test never woke runner A"
        return result

    monkeypatch.setattr(Inventory.commit, "call", commit_then_freeze)
    with logged("workers.orders.service", "claimed by another runner") as overtaken:
        async with serving("payments", "orders"):
            async with serving("inventory"):
                await stock_the_shop()
                placed = await Orders.client().place(
                    customer_id="ada",
                    items=TWO_ANVILS,  # type: ignore[arg-type]
                    idempotency_key="k1",
                )
                order_id = placed.order_id
                assert await asyncio.to_thread(landed.wait, 30), "runner A never committed"
            # Inventory is gone; A is frozen with the commit landed. B gives up and compensates.
            await order_when(order_id, lambda o: o.state == "compensating", "to be given up by runner B")
            async with serving("inventory"):
                failed = await settled(order_id)
                wake.set()
                order = await order_when(
                    order_id,
                    lambda o: o.state != "failed" or overtaken.is_set(),
                    "to be left alone by runner A, which wakes overtaken",
                )
                assert order.state == "failed", "runner A's late step was not stored"
                assert steps(order) == steps(failed)
                assert steps(order) == ["placed", "reserved", "charged", "released", "refunded", "failed"]
                assert await stock("A-1") == (5, 0), "the commit that landed unseen was undone"
                assert await money_of(order_id) == [("charge", -2_000), ("refund", 2_000)], "refunded once"
