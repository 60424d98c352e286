"""Database discipline: read-your-writes over replicas, shards behind one function, read-only, stale reads."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

import bus
from bus import databases
from bus.cache import acall_cached
from bus.client import default_bus
from bus.modes import set_read_only
from bus.testing import serving
from bus.threads import in_pool
from tests.conftest import ROOT, WorkerProcess, migrated, process_env
from workers.inventory.contract import Inventory
from workers.payments import models as payments_models
from workers.payments.contract import Payments

StartWorker = Callable[..., WorkerProcess]


# -- read-your-writes: the routing functions ---------------------------------


@pytest.fixture
def replicated(settings: object) -> None:
    settings.DATABASE_REPLICAS = {"inventory": ["inventory_replica"]}  # type: ignore[attr-defined]


def test_reads_go_to_the_replica_until_the_same_scope_writes(replicated: None) -> None:
    with databases.consistency_scope():
        assert databases.alias_for("inventory", write=False) == "inventory_replica"
        assert databases.alias_for("inventory", write=True) == "inventory"
        assert databases.alias_for("inventory", write=False) == "inventory", "read-your-writes"
        assert databases.alias_for("orders", write=False) == "orders", "no replica: the primary"
    with databases.consistency_scope():
        assert databases.alias_for("inventory", write=False) == "inventory_replica", (
            "a new request starts unpinned"
        )


def test_pins_travel_to_the_next_call_of_the_same_caller_for_a_window(
    replicated: None, settings: object
) -> None:
    settings.BUS = {"READ_YOUR_WRITES_SECONDS": 0.2}  # type: ignore[attr-defined]
    with databases.consistency_scope():
        databases.alias_for("inventory", write=True)
        handed_on = databases.current_pins()
    assert set(handed_on) == {"inventory"}
    with databases.consistency_scope(handed_on):
        assert databases.alias_for("inventory", write=False) == "inventory"
    time.sleep(0.25)
    with databases.consistency_scope(handed_on):
        assert databases.alias_for("inventory", write=False) == "inventory_replica", "the window has passed"
    with databases.consistency_scope({"inventory": "tomorrow", 7: 1.0}):
        assert databases.alias_for("inventory", write=False) == "inventory_replica", "junk pins are ignored"


# -- read-your-writes: real processes, a replica that never catches up ---------


@pytest.mark.redis
def test_a_lagging_replica_is_read_only_by_callers_that_did_not_write(
    tmp_path: Path, redis_layer: str, start_worker: StartWorker
) -> None:
    """The replica is a separate, empty database: whoever reads it sees the permanent lag."""
    env = {
        "INVENTORY_REPLICA_DATABASE_URL": f"sqlite:///{tmp_path}/inventory_replica.sqlite3",
        "MIGRATE_REPLICAS": "1",
    }
    data_dir = migrated(tmp_path, **env)
    start_worker(redis_layer, "inventory", data_dir=data_dir, extra_env=env)

    def shell(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); import bus\n{code}"],
            cwd=ROOT,
            env=process_env(data_dir, BUS_TEST_REDIS_URL=redis_layer, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    # One caller writes, then reads: its pins come back in the reply, so it reads the primary.
    writer = shell(
        'bus.call("inventory.add_product", sku="R-1", name="Rasp", price_cents=500)\n'
        'print(bus.call("inventory.stock", sku="R-1")["name"])'
    )
    assert writer == "Rasp"
    # Another caller, with no writes of its own, reads the replica, which has not caught up.
    reader = shell(
        "try:\n    bus.call('inventory.stock', sku='R-1')\nexcept bus.ContractError as e:\n    print(e.code)"
    )
    assert reader == "inventory.UnknownProduct"
    assert sqlite3.connect(tmp_path / "inventory.sqlite3").execute(
        "select name from inventory_product"
    ).fetchall() == [("Rasp",)]


# -- shards -------------------------------------------------------------------


def expected_shard(customer_id: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(customer_id.encode()).digest()[:8], "big") % shards


@pytest.mark.redis
@pytest.mark.parametrize("shards", [2, 4])
def test_accounts_live_on_their_customers_shard_and_nowhere_else(
    shards: int, tmp_path: Path, redis_layer: str, start_worker: StartWorker
) -> None:
    env = {"PAYMENTS_SHARDS": str(shards)}
    data_dir = migrated(tmp_path, **env)
    assert not (tmp_path / "payments.sqlite3").exists(), "sharded: there is no unsharded payments database"
    start_worker(redis_layer, "payments", data_dir=data_dir, extra_env=env)
    customers = [f"customer-{n}" for n in range(24)]

    async def exercise() -> None:
        payments = Payments.client()
        for customer in customers:
            await payments.credit(customer_id=customer, amount_cents=1_000, reference="opening")
            await payments.charge(order_id=f"order-{customer}", customer_id=customer, amount_cents=300)
            await payments.refund(order_id=f"order-{customer}", customer_id=customer)
            await payments.charge(order_id=f"second-{customer}", customer_id=customer, amount_cents=100)
            assert (await payments.balance(customer_id=customer)).balance_cents == 900
            statement = await payments.statement(customer_id=customer)
            assert sum(line.amount_cents for line in statement.lines) == statement.balance_cents
        await default_bus.aclose()

    asyncio.run(exercise())
    used = set()
    for shard in range(shards):
        database = sqlite3.connect(tmp_path / f"payments_{shard}.sqlite3")
        accounts = {row[0] for row in database.execute("select customer_id from payments_account")}
        charged = {row[0] for row in database.execute("select customer_id from payments_ordercharge")}
        ledger = {row[0] for row in database.execute("select account_id from payments_ledgerentry")}
        mine = {customer for customer in customers if expected_shard(customer, shards) == shard}
        assert accounts == charged == ledger == mine, f"shard {shard} holds rows of other customers"
        used |= mine
    assert used == set(customers)
    assert len({expected_shard(customer, shards) for customer in customers}) == shards, "every shard is used"


def test_a_query_that_skips_the_shard_function_is_refused(settings: object) -> None:
    settings.DATABASE_SHARDS = {"payments": ["payments_0", "payments_1"]}  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match=r"The 'payments' tables are sharded over \['payments_0'"):
        payments_models.Account.objects.count()
    assert databases.alias_for("payments", key="ada", write=False) in ("payments_0", "payments_1")
    assert databases.alias_for("payments", key="ada", write=False) == databases.alias_for(
        "payments", key="ada", write=True
    ), "the same customer always lands on the same shard"


# -- read-only mode and stale reads --------------------------------------------


@pytest.mark.db
@pytest.mark.django_db(transaction=True, databases="__all__")
async def test_read_only_refuses_writes_and_serves_reads(settings: object) -> None:
    settings.BUS = {"MODE_CACHE_SECONDS": 0.05}  # type: ignore[attr-defined]
    async with serving("payments"):
        payments = Payments.client()
        await payments.credit(customer_id="ada", amount_cents=500)
        await in_pool(set_read_only, "payments", True, "ledger migration")
        await asyncio.sleep(0.1)
        with pytest.raises(
            bus.ReadOnly, match=r"payments is in read-only mode \(ledger migration\)"
        ) as caught:
            await payments.credit(customer_id="ada", amount_cents=500)
        assert caught.value.details["reason"] == "ledger migration"
        assert (await payments.balance(customer_id="ada")).balance_cents == 500, "reads go on"
        await in_pool(set_read_only, "payments", False)
        await asyncio.sleep(0.1)
        assert (await payments.credit(customer_id="ada", amount_cents=1)).balance_cents == 501


@pytest.mark.db
@pytest.mark.django_db(transaction=True, databases="__all__")
async def test_stock_is_served_stale_when_inventory_is_down() -> None:
    async with serving("inventory"):
        await Inventory.client().add_product(sku="S-1", name="Saw", price_cents=900)
        fresh = await acall_cached("inventory.stock", ttl=0.05, sku="S-1")
        assert (fresh.stale, fresh.value["name"]) == (False, "Saw")
        again = await acall_cached("inventory.stock", ttl=60, sku="S-1")
        assert again.stale is False and again.age >= 0, "within the TTL, from the cache"
    await asyncio.sleep(0.1)
    stale = await acall_cached("inventory.stock", ttl=0.05, sku="S-1")
    assert (stale.stale, stale.value["name"]) == (True, "Saw")
    assert stale.age > 0.05
    with pytest.raises(bus.NoWorker):
        await acall_cached("inventory.stock", ttl=0.05, sku="NEVER-SEEN")
    with pytest.raises(bus.BusError, match="is not a read method"):
        await acall_cached("inventory.restock", ttl=1, sku="S-1", quantity=1)
