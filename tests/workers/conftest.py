"""The shop the saga tests run against, and polling an order as a page without a socket would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from bus.testing import serving
from tests.polling import apoll
from workers.inventory.contract import Inventory
from workers.orders.contract import TERMINAL_STATES, Order, Orders
from workers.payments.contract import Payments

OPENING_BALANCE = 10_000


async def stock_the_shop() -> None:
    """Two products and ada's account; inventory and payments must be served."""
    inventory = Inventory.client()
    await inventory.add_product(sku="A-1", name="Anvil", price_cents=1_000)
    await inventory.add_product(sku="B-2", name="Bellows", price_cents=2_500)
    await inventory.restock(sku="A-1", quantity=5)
    await inventory.restock(sku="B-2", quantity=1)
    await Payments.client().credit(customer_id="ada", amount_cents=OPENING_BALANCE)


@pytest.fixture
async def orders() -> AsyncIterator[Orders]:
    """The orders client of a stocked shop: inventory, payments and orders served in this loop."""
    async with serving("inventory", "payments", "orders"):
        await stock_the_shop()
        yield Orders.client()


async def order_when(order_id: str, done: Callable[[Order], bool], what: str, timeout: float = 30) -> Order:
    """The order once `done` holds for it, as a page without a socket would poll it."""
    return await apoll(
        lambda: Orders.client().get(order_id=order_id), done, what=f"order {order_id} {what}", timeout=timeout
    )


async def settled(order_id: str, timeout: float = 30) -> Order:
    """The order once its saga has ended."""
    return await order_when(order_id, lambda order: order.state in TERMINAL_STATES, "to end", timeout)


async def stock(sku: str) -> tuple[int, int]:
    current = await Inventory.client().stock(sku=sku)
    return current.on_hand, current.reserved


async def balance() -> int:
    return (await Payments.client().balance(customer_id="ada")).balance_cents


async def money_of(order_id: str) -> list[tuple[str, int]]:
    """The ledger lines of one order (kind, signed cents); the whole ledger must add up."""
    statement = await Payments.client().statement(customer_id="ada")
    assert sum(line.amount_cents for line in statement.lines) == statement.balance_cents
    return [(line.kind, line.amount_cents) for line in statement.lines if line.order_id == order_id]
