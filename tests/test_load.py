"""The default setup under a real load: `manage.py up` with Redis on its SQLite files, 20 clients at once.

SQLite is what a new user runs; the issue saw 1 request in 6 answered 504 and "database is
locked" in the orders worker with 20 clients. The figures of the same load, on SQLite and
PostgreSQL, come from bench/checkout.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RedisServer, UpProcess
from tests.load import place_orders, stock_up, wait_terminal
from tests.site import wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLIENTS = 20
ORDERS = 300


def test_twenty_clients_on_the_default_sqlite_files(tmp_path: Path, private_redis: RedisServer) -> None:
    """No "database is locked", at most 1% of requests 5xx, and every order ends once the load does."""
    up = UpProcess(tmp_path, private_redis.url, log_level="INFO")
    try:
        wait_ready(up.visitor, timeout=120, orders=2)
        stock_up(up.env, ORDERS)
        load = place_orders(up.base, clients=CLIENTS, orders=ORDERS)
        assert not load.errors, load.errors[:10]
        orders = wait_terminal(load, timeout=120)
        assert len(orders) == ORDERS
        locked = [line for line in up.text().splitlines() if "database is locked" in line]
        assert not locked, f"{len(locked)} log lines say the database is locked, e.g. {locked[:3]}"
        failures = load.server_errors()
        assert failures <= len(load.responses) / 100, (
            f"{failures} of {len(load.responses)} requests failed with 5xx: {dict(load.statuses)}"
        )
    finally:
        up.close()
