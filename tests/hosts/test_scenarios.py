"""The five scenarios of the many-machine topology, in one cluster, in order (see tests/hosts/system.py).

Each prints what it injected and what it checked; the books (every order terminal, nobody charged
twice, stock and ledgers balanced) are checked over every order placed so far.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import check_invariants, wait_terminal
from tests.hosts.conftest import (
    Shop,
    finish_shopping,
    offset,
    report,
    shoppers,
    stock_offsets,
    watch,
)
from tests.hosts.system import Cluster
from tests.polling import poll

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(600)]


def settle(shop: Shop, timeout: float = 180) -> tuple[dict[str, dict], float]:
    orders, seconds = wait_terminal(shop.order_ids, timeout)
    checked = check_invariants(orders, shop.initial)
    return orders, seconds, checked


def test_checkouts_across_hosts_reach_every_socket_on_both_web_hosts(shop: Shop, operator: Cluster) -> None:
    cluster = shop.cluster
    watchers = [
        watch(cluster, f"watch-{web.name}", f"ws://{web.address}:8000/ws/") for web in cluster.web
    ]
    start = offset(next(f for f in watchers[0].frames() if f["type"] == "hello")["cursor"])
    began = time.monotonic()
    result = finish_shopping(shop, shoppers(shop, "scenario-1", clients=4, orders=80))
    orders, seconds, checked = settle(shop)
    expected = stock_offsets(cluster, start)
    for watcher in watchers:
        poll(
            lambda: {offset(e["cursor"]) for e in watcher.events() if e["topic"] == "stock"},
            lambda seen: seen >= set(expected),
            what=f"{watcher.name} to see all {len(expected)} stock events",
            timeout=60,
        )
        watcher.stop()
    report(
        "1. checkouts across hosts",
        [
            ("injected", "nothing: 4 shoppers on the client host, 80 checkouts through the balancer"),
            ("responses", result["statuses"]),
            ("orders", f"{checked.confirmed} confirmed, {checked.failed} failed, all terminal"),
            ("took", f"{time.monotonic() - began:.1f} s"),
            ("stock events", f"{len(expected)} logged; each web host's watcher saw every one"),
            ("books", "no order twice, at most one charge each, ledgers and stock balance"),
        ],
    )
