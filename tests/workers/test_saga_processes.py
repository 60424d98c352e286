"""The checkout across real worker processes on Redis, with an orders worker killed mid-saga."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.client import default_bus
from tests.conftest import WorkerProcess, migrated
from tests.polling import apoll
from workers.inventory.contract import Inventory
from workers.orders.contract import TERMINAL_STATES, Order, Orders
from workers.payments.contract import Payments

pytestmark = [pytest.mark.redis, pytest.mark.slow]

StartWorker = Callable[..., WorkerProcess]
CUSTOMERS = {"rich": 1_000_000, "poor": 150}


async def orders_now(orders: Orders, order_ids: list[str]) -> list[Order]:
    return [await orders.get(order_id=order_id) for order_id in order_ids]


def all_settled(orders: list[Order]) -> bool:
    return all(order.state in TERMINAL_STATES for order in orders)


def test_an_orders_worker_killed_mid_saga_leaves_every_order_finished_and_paid_once(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker
) -> None:
    env = {"ORDERS_TEST_LEASE_SECONDS": "2"}
    data_dir = migrated(tmp_path)
    start_worker(redis_layer, "inventory", data_dir=data_dir, extra_env=env)
    start_worker(redis_layer, "payments", data_dir=data_dir, extra_env=env)
    first = start_worker(redis_layer, "orders", data_dir=data_dir, extra_env=env, concurrency=4)

    async def run() -> None:
        inventory, payments, orders = Inventory.client(), Payments.client(), Orders.client()
        await inventory.add_product(sku="K-1", name="Kettle", price_cents=100)
        await inventory.restock(sku="K-1", quantity=25)
        for customer, cents in CUSTOMERS.items():
            await payments.credit(customer_id=customer, amount_cents=cents)
        placing = [
            orders.place(
                customer_id="poor" if n % 5 == 0 else "rich",
                items=[{"sku": "K-1", "quantity": 1}],  # type: ignore[list-item]
                idempotency_key=f"k{n}",
            )
            for n in range(40)
        ]
        placed = [order.order_id for order in await asyncio.gather(*placing)]
        first.kill()  # kill -9 while sagas are running: their claims must run out, not stick
        database = sqlite3.connect(data_dir / "orders.sqlite3")
        unfinished = database.execute(
            f"select count(*) from orders_order where state not in ({', '.join('?' * len(TERMINAL_STATES))})",
            tuple(TERMINAL_STATES),
        )
        assert unfinished.fetchone()[0] > 0, "the kill must land while sagas are running"
        database.close()
        start_worker(redis_layer, "orders", data_dir=data_dir, extra_env=env)
        finished = await apoll(
            lambda: orders_now(orders, placed), all_settled, what="every order settled", timeout=90
        )

        confirmed = [order for order in finished if order.state == "confirmed"]
        failed = [order for order in finished if order.state == "failed"]
        assert confirmed and failed and all(order.reason for order in failed)
        stock = await inventory.stock(sku="K-1")
        assert stock.reserved == 0
        assert stock.on_hand + len(confirmed) == 25, "stock sold plus stock left equals stock put in"
        for customer, opening in CUSTOMERS.items():
            statement = await payments.statement(customer_id=customer)
            assert sum(line.amount_cents for line in statement.lines) == statement.balance_cents
            charges = Counter(line.order_id for line in statement.lines if line.kind == "charge")
            refunds = Counter(line.order_id for line in statement.lines if line.kind == "refund")
            assert all(count == 1 for count in charges.values()), "no order is charged twice"
            mine = [order for order in finished if order.customer_id == customer]
            for order in mine:
                net = charges[order.order_id] - refunds[order.order_id]
                assert net == (1 if order.state == "confirmed" else 0), f"{order.order_id} {order.state}"
            spent = sum(order.total_cents for order in mine if order.state == "confirmed")
            assert statement.balance_cents == opening - spent
        await default_bus.aclose()

    asyncio.run(run())
