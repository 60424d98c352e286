"""A real load on `manage.py up` with Redis: 20 signed-in clients placing orders through the API at once.

On its default SQLite files the issue saw 1 request in 6 answered 504, "database is locked" in
the orders worker and orders ending 31 s after the load; on PostgreSQL, 20 clients took more
connections than its default max_connections (100) and two orders sharing products deadlocked.
bench/checkout.py measures the same load on both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import RedisServer, UpProcess
from tests.load import place_orders, postgres_databases, stock_up, wait_terminal
from tests.site import wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLIENTS = 20
ORDERS = 300
#: Lines that must never appear in the log of a system under a load it can hold.
NEVER = ("database is locked", "deadlock detected", "too many clients", "Traceback")


def hold_the_load(up: UpProcess) -> None:
    """Every checkout placed, at most 1% of requests 5xx, every order terminal, nothing alarming logged."""
    try:
        wait_ready(up.visitor, timeout=120, orders=2)
        stock_up(up.env, ORDERS)
        load = place_orders(up.base, clients=CLIENTS, orders=ORDERS)
        assert not load.errors, load.errors[:10]
        orders = wait_terminal(load, timeout=120)
        assert len(orders) == ORDERS
        alarming = [line for line in up.text().splitlines() if any(text in line for text in NEVER)]
        assert not alarming, f"{len(alarming)} alarming log lines, e.g. {alarming[:5]}"
        failures = load.server_errors()
        assert failures <= len(load.responses) / 100, (
            f"{failures} of {len(load.responses)} requests failed with 5xx: {dict(load.statuses)}"
        )
    finally:
        up.close()


def test_twenty_clients_on_the_default_sqlite_files(tmp_path: Path, private_redis: RedisServer) -> None:
    hold_the_load(UpProcess(tmp_path, private_redis.url, log_level="INFO"))


@pytest.mark.db
def test_twenty_clients_on_postgresql(tmp_path: Path, private_redis: RedisServer) -> None:
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith("postgres"):
        pytest.skip("runs in the PostgreSQL pass of scripts/test (DATABASE_URL=postgres://...)")
    server, _, name = configured.rpartition("/")
    # Databases of its own beside the test run's, e.g. bus_default_x -> bus_<alias>_x_load.
    suffix = "_".join(filter(None, [name.removeprefix("bus_default").strip("_"), "load"]))
    with postgres_databases(server, suffix) as databases:
        hold_the_load(UpProcess(tmp_path, private_redis.url, log_level="INFO", databases=databases))
