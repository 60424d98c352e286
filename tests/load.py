"""Checkouts through the HTTP API by many signed-in clients at once, as a shop's customers place them.

`tests/test_load.py` checks what such a load does to a running system and `bench/checkout.py`
measures it; both drive the system with this module, so they see the same load:

    stock_up(env, orders)                          # stock and money enough for every checkout
    load = place_orders(base, clients=20, orders=600)
    finished = wait_terminal(load, timeout=120)    # every order's final form, read over HTTP

Each client is a session of its own (signed in, CSRF cookie) that places its share of the orders
one after the other, each with a new Idempotency-Key; a 5xx or a dropped connection is retried
with the same key after a short pause, as a careful client would, and every response is counted.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.polling import poll
from tests.site import Visitor
from workers.orders.contract import TERMINAL_STATES

ROOT = Path(__file__).resolve().parent.parent
# The seed's demo logins (consumers/management/commands/seed.py, which needs Django to import).
CUSTOMERS = {"ada": "ada-demo-1815", "grace": "grace-demo-1906", "linus": "linus-demo-1969"}
SKUS = ["ANVIL-1", "BELLOWS-2", "TONGS-3", "HAMMER-4", "APRON-5", "QUENCH-6"]
ALIASES = ("default", "inventory", "orders", "payments")  # the databases of `up` (PAYMENTS_SHARDS=1)
#: Seconds a client goes on retrying one checkout answered with 5xx before it gives up on it.
RETRY_BUDGET = 120.0
MOST_EXPENSIVE_CENTS = 12_900  # ANVIL-1


def stock_up(env: dict[str, str], orders: int) -> None:
    """Restock every product and fund every customer for `orders` checkouts of up to 2 units.

    One `manage.py shell` in the system's own environment, so the calls go through its bus.
    """
    reference = f"load-{uuid.uuid4().hex[:8]}"
    cents = 2 * orders * MOST_EXPENSIVE_CENTS
    script = "\n".join(
        [
            "import bus",
            f"for sku in {SKUS!r}:",
            f"    bus.call('inventory.restock', sku=sku, quantity={2 * orders})",
            f"for customer in {sorted(CUSTOMERS)!r}:",
            f"    bus.call('payments.credit', customer_id=customer, amount_cents={cents},",
            f"             reference={reference!r})",
        ]
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, timeout=120
    )


@contextlib.contextmanager
def postgres_databases(server: str, suffix: str) -> Iterator[dict[str, str]]:
    """Empty PostgreSQL databases bus_<alias>_<suffix> on `server` for the time of the block, as the
    <ALIAS>_DATABASE_URL variables of a system that should use them; dropped before and after."""
    import psycopg

    server = server.rstrip("/")
    names = {alias: f"bus_{alias}_{suffix}" for alias in ALIASES}

    def drop(connection: psycopg.Connection[Any]) -> None:
        for name in names.values():
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        drop(connection)
        for name in names.values():
            connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DATABASE_URL" if alias == "default" else f"{alias.upper()}_DATABASE_URL": f"{server}/{name}"
            for alias, name in names.items()
        }
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
            drop(connection)


@dataclass
class Client:
    """One signed-in session and the orders it placed."""

    customer: str
    visitor: Visitor
    order_ids: list[str] = field(default_factory=list)


@dataclass
class Load:
    """What the clients saw: each response's status and seconds, and when the load ran (epoch seconds)."""

    clients: list[Client]
    responses: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    began: float = 0.0
    ended: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def order_ids(self) -> list[str]:
        return [order_id for client in self.clients for order_id in client.order_ids]

    @property
    def statuses(self) -> Counter[int]:
        return Counter(status for status, _ in self.responses)

    def server_errors(self) -> int:
        """Responses that were 5xx, or none at all (status 0: the connection failed)."""
        return sum(count for status, count in self.statuses.items() if status >= 500 or status == 0)

    def seconds(self) -> float:
        return self.ended - self.began


def sign_in(base: str, clients: int) -> list[Client]:
    """`clients` sessions spread over the demo customers, each signed in and with its CSRF cookie."""
    names = sorted(CUSTOMERS)
    signed = []
    for number in range(clients):
        customer = names[number % len(names)]
        visitor = Visitor(base)
        visitor.sign_in(customer, CUSTOMERS[customer])
        visitor.request("GET", "/")  # the page sets the CSRF cookie that the API asks for
        signed.append(Client(customer, visitor))
    return signed


def checkout(client: Client, load: Load, items: list[dict[str, Any]]) -> None:
    """POST /api/orders under one Idempotency-Key until it is placed (5xx are retried) or refused."""
    key = uuid.uuid4().hex
    body = json.dumps({"items": items}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-CSRFToken": client.visitor.cookie("csrftoken"),
        "Idempotency-Key": key,
        "Referer": client.visitor.base + "/",
    }
    deadline = time.monotonic() + RETRY_BUDGET
    while True:
        began = time.monotonic()
        try:
            status, answer = client.visitor.request("POST", "/api/orders", body, **headers)
        except OSError:
            status, answer = 0, None
        with load.lock:
            load.responses.append((status, time.monotonic() - began))
        if status == 202:
            client.order_ids.append(str(answer["order_id"]))
            return
        if 0 < status < 500 or time.monotonic() > deadline:
            with load.lock:
                load.errors.append(f"{client.customer} {key}: {status} {str(answer)[:300]}")
            return
        time.sleep(random.uniform(0.1, 0.3))  # a client's pause before its retry, not a synchronisation


def place_orders(base: str, *, clients: int, orders: int, seed: int = 1815) -> Load:
    """Sign `clients` sessions in, then let them place `orders` checkouts between them, all at once."""
    load = Load(sign_in(base, clients))
    rng = random.Random(seed)
    shares: list[list[list[dict[str, Any]]]] = [[] for _ in range(clients)]
    for number in range(orders):
        skus = rng.sample(SKUS, rng.choice((1, 1, 2)))
        shares[number % clients].append([{"sku": sku, "quantity": rng.choice((1, 2))} for sku in skus])

    def shop(client: Client, share: list[list[dict[str, Any]]]) -> None:
        for items in share:
            checkout(client, load, items)

    threads = [
        threading.Thread(target=shop, args=(client, share), name=f"client-{n}", daemon=True)
        for n, (client, share) in enumerate(zip(load.clients, shares, strict=True))
    ]
    load.began = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.ended = time.time()
    return load


def orders_of(client: Client) -> list[dict[str, Any]] | None:
    """Every order of the client's customer, through GET /api/customers/<id>/orders page by page;
    None when a page could not be had (a 5xx, a dropped connection), for the caller to ask again."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        try:
            status, page = client.visitor.request(
                "GET", f"/api/customers/{client.customer}/orders?limit=100&cursor={cursor}"
            )
        except OSError:
            return None
        if status >= 500:
            return None
        assert status == 200, f"listing {client.customer}'s orders answered {status}: {str(page)[:300]}"
        found += page["orders"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


def wait_terminal(load: Load, timeout: float) -> dict[str, dict[str, Any]]:
    """The final form of every order the load placed, polling the API until all are terminal."""
    readers = {client.customer: client for client in load.clients}
    placed = set(load.order_ids)
    seen: dict[str, dict[str, Any]] = {}

    def progress() -> tuple[int, dict[str, int]] | None:
        """(orders listed, states of those not ended); None while the listings cannot be read."""
        listings = [orders_of(client) for client in readers.values()]
        if any(listing is None for listing in listings):
            return None
        seen.clear()
        seen.update(
            (order["order_id"], order)
            for listing in listings
            for order in listing or []
            if order["order_id"] in placed
        )
        open_states = Counter(o["state"] for o in seen.values() if o["state"] not in TERMINAL_STATES)
        return len(seen), dict(open_states)

    poll(
        progress,
        lambda now: now == (len(placed), {}),
        what=f"all {len(placed)} orders listed and ended (orders listed, states of those not ended)",
        timeout=timeout,
        every=0.2,
    )
    return dict(seen)


def settled_after(load: Load, orders: dict[str, dict[str, Any]]) -> float:
    """Seconds from the end of the load to the last order's final change, by the orders' own clock."""
    last = max(datetime.datetime.fromisoformat(order["updated_at"]).timestamp() for order in orders.values())
    return max(0.0, last - load.ended)
