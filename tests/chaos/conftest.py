"""Chaos tests: `manage.py up` on a private Redis, real OS processes, faults injected on purpose.

Run them with `pytest -m chaos -s tests/chaos` (the table of what was injected and checked is
printed and appended to tests/artifacts/chaos-report.md). CHAOS_CHECKOUTS sets the number of
checkouts of the kill -9 test (default 200; the issue's full figure:
`CHAOS_CHECKOUTS=1000 pytest -m chaos -s tests/chaos -k kill`); CHAOS_SEED replays a run's
choice of victims, printed in its table.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
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

import pytest

import bus
from bus.client import default_bus, run_sync
from bus.conf import channel_layers as layers_for
from bus.exceptions import BrokerUnreachable, ChannelFull, DeadlineExceeded, NoWorker
from bus.layers import RedisBusLayer
from tests.conftest import ROOT, RedisServer, UpProcess, on_the_bus
from tests.polling import poll
from tests.site import DEMO_PASSWORDS, Visitor, wait_ready
from workers.orders.contract import TERMINAL_STATES

CUSTOMERS = list(DEMO_PASSWORDS)  # the seeded demo customers
DOMAIN_CHILDREN = ("inventory", "payments", "orders.1", "orders.2", "presentation")
REPORT = ROOT / "tests" / "artifacts" / "chaos-report.md"


def chaos_seed() -> int:
    """CHAOS_SEED replays a run's choices (which worker dies when); unset, a new one each run."""
    return int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))


def checkouts() -> int:
    return int(os.environ.get("CHAOS_CHECKOUTS", "200"))


class System(UpProcess):
    """`manage.py up` with REDIS_URL (daphne + a runworker per domain, orders x2), on its own data."""

    def __init__(self, data_dir: Path, redis_url: str, **environment: str) -> None:
        super().__init__(data_dir, redis_url, log_level="INFO", environment=environment)
        self.redis_url = redis_url
        self.stopped: set[int] = set()

    def pids(self, name: str) -> list[int]:
        """Every pid the supervisor started for child `name`, oldest first."""
        pattern = rf"^{re.escape(name)}\s+\| started \(pid (\d+)\)"
        return [int(pid) for pid in re.findall(pattern, self.text(), re.MULTILINE)]

    def pid(self, name: str) -> int:
        pids = self.pids(name)
        assert pids, f"{name} was never started:\n{self.text()[-3000:]}"
        return pids[-1]

    def current(self) -> dict[str, int]:
        return {name: self.pid(name) for name in ("web", *DOMAIN_CHILDREN)}

    def dropped(self, name: str, target: str) -> int:
        """Requests child `name` dropped unrun because their deadline had passed (its log says so)."""
        pattern = rf"^{re.escape(name)}\s+\|.*Dropped \S+ {re.escape(target)}\b.*deadline passed"
        return len(re.findall(pattern, self.text(), re.MULTILINE))

    def ready(self, timeout: float = 90) -> None:
        wait_ready(Visitor(self.base), timeout=timeout, orders=2)

    def pause(self, name: str, *, seen_as_live: bool = False) -> int:
        """SIGSTOP child `name`. With `seen_as_live`, its presence is kept as a worker that is
        alive but takes nothing (busy, or stalled), so callers wait out their deadlines instead
        of hearing at once that no worker serves the domain; its own next beat, once resumed,
        takes over again."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)
        if seen_as_live:
            channel = name.split(".")[0]
            kept = on_the_bus(self.redis_url, lambda layer: keep_present(layer, channel, pid))
            assert kept, f"{name} (pid {pid}) had no presence on {channel!r} left to keep"
        return pid

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)

    def undoing_charges(self) -> tuple[int, int]:
        """Orders being compensated after their charge, and how many of those are refunded already.

        Read from the orders database file as an operator would, without asking the orders workers
        that the test may have just killed.
        """
        path = self.log.parent / "orders.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            row = db.execute(
                "select count(*), coalesce(sum(exists(select 1 from orders_step r where r.order_id = o.id"
                " and r.name = 'refunded')), 0) from orders_order o where o.state = 'compensating'"
                " and exists(select 1 from orders_step c where c.order_id = o.id and c.name = 'charged')"
            ).fetchone()
        return int(row[0]), int(row[1])

    def refunds(self) -> int:
        """Orders refunded so far, read from the orders database file like `undoing_charges`."""
        path = self.log.parent / "orders.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            row = db.execute("select count(*) from orders_step where name = 'refunded'").fetchone()
        return int(row[0])

    def bus_cli(self, *args: str, timeout: float = 60) -> tuple[int, str, float]:
        """`manage.py bus ARGS` as an operator runs it: exit code, output, seconds taken."""
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "manage.py", "bus", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.returncode, done.stdout + done.stderr, time.monotonic() - began

    def close(self) -> None:
        """Resume paused children and let the system stop gracefully; kill it only if it will not."""
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                self.resume(pid)
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(30)
        super().close()


@pytest.fixture
def system(
    tmp_path: Path, private_redis: RedisServer, settings: Any, request: pytest.FixtureRequest
) -> Iterator[System]:
    """The running system, and this test process's bus pointed at its Redis (same "bus:" prefix).

    Parametrized indirectly with a dict, it is the system's extra environment (tests/chaos/settings.py).
    """
    settings.CHANNEL_LAYERS = layers_for(private_redis.url)
    data = tmp_path / "data"
    data.mkdir()
    running = System(data, private_redis.url, **getattr(request, "param", {}))
    try:
        running.ready()
        yield running
    finally:
        running.close()
        # The sync bus's shared background loop keeps its reply listener: not on the next test's Redis.
        run_sync(default_bus.aclose)


# -- the shoppers ----------------------------------------------------------------------------------


@dataclass
class Checkout:
    customer: str
    key: str
    items: list[dict[str, Any]]
    order_id: str = ""
    attempts: int = 0
    statuses: list[int] = field(default_factory=list)


@dataclass
class Load:
    """What the shoppers saw: every response status, slow failures, bodies that were not problems."""

    checkouts: list[Checkout] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failure_seconds: list[float] = field(default_factory=list)
    bad_bodies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def placed(self) -> list[Checkout]:
        return [c for c in self.checkouts if c.order_id]


def place(visitor: Visitor, checkout: Checkout, load: Load, budget: float = 120) -> None:
    """POST /api/orders with the checkout's Idempotency-Key, retried on 5xx with the same key."""
    deadline = time.monotonic() + budget
    body = bus_json(checkout.items)
    while True:
        checkout.attempts += 1
        began = time.monotonic()
        if not visitor.cookie("csrftoken"):
            with contextlib.suppress(OSError):
                visitor.request("GET", "/")
        try:
            status, answer = visitor.request(
                "POST",
                "/api/orders",
                body,
                **{
                    "Content-Type": "application/json",
                    "X-CSRFToken": visitor.cookie("csrftoken"),
                    "Idempotency-Key": checkout.key,
                    "Referer": visitor.base + "/",
                },
            )
        except OSError:
            status, answer = 0, None  # connection refused or reset: daphne restarting
        took = time.monotonic() - began
        checkout.statuses.append(status)
        with load.lock:
            load.statuses[status] += 1
            if status >= 500:
                load.failure_seconds.append(took)
                if not (isinstance(answer, dict) and answer.get("detail") and answer.get("status") == status):
                    load.bad_bodies.append(f"{status}: {str(answer)[:200]}")
        if status == 202:
            assert isinstance(answer, dict)
            order_id = str(answer["order_id"])
            if checkout.order_id and checkout.order_id != order_id:
                with load.lock:
                    load.errors.append(f"key {checkout.key}: {checkout.order_id} then {order_id}")
            checkout.order_id = order_id
            return
        if status and status < 500:
            with load.lock:
                load.errors.append(f"{checkout.customer} {checkout.key}: {status} {str(answer)[:200]}")
            return
        if time.monotonic() > deadline:
            with load.lock:
                load.errors.append(f"{checkout.customer} {checkout.key}: gave up after {checkout.attempts}")
            return
        time.sleep(random.uniform(0.1, 0.4))


def bus_json(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"items": items}).encode()


def random_items(rng: random.Random, skus: list[str]) -> list[dict[str, Any]]:
    chosen = rng.sample(skus, rng.choice((1, 1, 2)))
    return [{"sku": sku, "quantity": rng.choice((1, 1, 2))} for sku in chosen]


def run_load(
    base: str,
    count: int,
    skus: list[str],
    *,
    sessions_per_customer: int = 2,
    pace: float = 0.0,
    seed: int = 1815,
) -> tuple[Load, list[threading.Thread]]:
    """Start shoppers (signed-in sessions in threads) placing `count` checkouts between them."""
    load = Load()
    rng = random.Random(seed)
    names = list(CUSTOMERS)
    for number in range(count):
        customer = names[number % len(names)]
        load.checkouts.append(Checkout(customer, uuid.uuid4().hex, random_items(rng, skus)))
    threads = []
    for customer in names:
        mine = [c for c in load.checkouts if c.customer == customer]
        for index in range(sessions_per_customer):
            share = mine[index::sessions_per_customer]
            visitor = Visitor(base)
            visitor.sign_in(customer)

            def shop(visitor: Visitor = visitor, share: list[Checkout] = share) -> None:
                for checkout in share:
                    place(visitor, checkout, load)
                    if pace:
                        time.sleep(pace)

            thread = threading.Thread(target=shop, daemon=True, name=f"shopper-{customer}-{index}")
            thread.start()
            threads.append(thread)
    return load, threads


def join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "shoppers still running"


# -- reading the system through the bus ---------------------------------------------------------------


async def keep_present(layer: RedisBusLayer, channel: str, pid: int) -> int:
    """Renew the presence of process `pid` on `channel` for longer than any test runs; how many
    records it had (one per worker it runs on the channel)."""
    mine = {m: info for m, info in (await layer.presence(channel)).items() if f".{pid}." in m}
    for member, info in mine.items():
        await layer.presence_beat(channel, member, info, ttl=3600)
    return len(mine)


#: A domain restarting, or Redis coming back: what `call` waits out.
UNAVAILABLE = (NoWorker, BrokerUnreachable, DeadlineExceeded, ChannelFull)


def call(target: str, *, patience: float = 60, **arguments: Any) -> Any:
    """bus.call, retried while the domain is unavailable (restarting) until `patience` runs out."""
    return poll(
        lambda: bus.call(target, timeout=5, **arguments),
        lambda _: True,
        what=f"{target} to answer",
        timeout=patience,
        every=0.3,
        ignoring=UNAVAILABLE,
    )


def stock_up(count: int) -> dict[str, dict[str, Any]]:
    """Restock and fund for `count` checkouts (linus stays short on purpose); the stock put in."""
    for sku in stock():
        call("inventory.restock", sku=sku, quantity=max(1, count // 5))
    for customer in ("ada", "grace"):
        call("payments.credit", customer_id=customer, amount_cents=count * 5_000, reference=f"chaos-{count}")
    return stock()


def stock() -> dict[str, dict[str, Any]]:
    return {row["sku"]: row for row in call("inventory.products")}


def wait_terminal(order_ids: list[str], timeout: float) -> tuple[dict[str, dict[str, Any]], float]:
    """Every order's final form, once each is confirmed or failed; and the seconds that took."""
    began = time.monotonic()
    final: dict[str, dict[str, Any]] = {}

    def still_open() -> Counter[str]:
        """The states of the orders not final yet (each final one is kept as it is seen)."""
        states: Counter[str] = Counter()
        for order_id in (o for o in order_ids if o not in final):
            order = call("orders.get", order_id=order_id)
            if order["state"] in TERMINAL_STATES:
                final[order_id] = order
            else:
                states[order["state"]] += 1
        return states

    poll(
        still_open,
        lambda states: not states,
        what="every order confirmed or failed",
        timeout=timeout,
        every=1.0,
    )
    return final, time.monotonic() - began


@dataclass
class Checked:
    confirmed: int = 0
    failed: int = 0
    charge_lines: int = 0
    refund_lines: int = 0
    sold: dict[str, int] = field(default_factory=dict)


def check_invariants(orders: dict[str, dict[str, Any]], initial: dict[str, dict[str, Any]]) -> Checked:
    """The books after the storm: money, stock and orders agree with each other."""
    checked = Checked()
    problems: list[str] = []
    for order in orders.values():
        if order["state"] == "confirmed":
            checked.confirmed += 1
        elif order["state"] == "failed":
            checked.failed += 1
        else:
            problems.append(f"{order['order_id']} is {order['state']}")
    # No order was created twice: each customer has exactly the orders placed, one per key (the
    # system starts empty of orders in every test).
    for customer in CUSTOMERS:
        listed: list[str] = []
        cursor = ""
        while True:
            page = call("orders.list", customer_id=customer, limit=100, cursor=cursor)
            listed += [o["order_id"] for o in page["orders"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        mine = {o for o, order in orders.items() if order["customer_id"] == customer}
        if sorted(listed) != sorted(mine):
            problems.append(f"{customer}: {len(listed)} orders listed, {len(mine)} placed (one per key)")
    # Money: at most one charge per order; a failed order's charge refunded; every ledger balances.
    for customer in CUSTOMERS:
        statement = call("payments.statement", customer_id=customer)
        total = 0
        per_order: dict[str, Counter[str]] = {}
        amounts: dict[str, int] = Counter()
        for line in statement["lines"]:
            total += line["amount_cents"]  # signed: charges are negative
            if line["kind"] in ("charge", "refund"):
                per_order.setdefault(line["order_id"], Counter())[line["kind"]] += 1
                amounts[line["order_id"]] += line["amount_cents"]
                checked.charge_lines += line["kind"] == "charge"
                checked.refund_lines += line["kind"] == "refund"
        if total != statement["balance_cents"]:
            problems.append(f"{customer}: ledger lines sum to {total}, balance {statement['balance_cents']}")
        for order_id, kinds in per_order.items():
            if kinds["charge"] > 1 or kinds["refund"] > 1:
                problems.append(f"{order_id}: {dict(kinds)}")
            paid = orders.get(order_id)
            if paid is None:
                problems.append(f"{order_id}: ledger lines for an order nobody placed")
                continue
            if paid["state"] == "failed" and amounts[order_id] != 0:
                problems.append(f"{order_id} failed but {-amounts[order_id]} cents stay charged")
            if paid["state"] == "confirmed" and -amounts[order_id] != paid["total_cents"]:
                problems.append(
                    f"{order_id} confirmed, charged {-amounts[order_id]} of {paid['total_cents']}"
                )
        for order_id, order in orders.items():
            if (
                order["customer_id"] == customer
                and order["state"] == "confirmed"
                and order_id not in per_order
            ):
                problems.append(f"{order_id} confirmed without a charge")
    # Stock: sold + available == put in; nothing left reserved.
    sold: Counter[str] = Counter()
    for order in orders.values():
        if order["state"] == "confirmed":
            for line in order["lines"]:
                sold[line["sku"]] += line["quantity"]
    now = stock()
    for sku, before in initial.items():
        after = now[sku]
        if after["reserved"] != 0:
            problems.append(f"{sku}: {after['reserved']} still reserved")
        if sold[sku] + after["available"] != before["available"]:
            problems.append(
                f"{sku}: sold {sold[sku]} + available {after['available']} != {before['available']}"
            )
    checked.sold = dict(sold)
    assert not problems, "\n".join(problems[:40])
    return checked


def report(title: str, rows: list[tuple[str, object]]) -> None:
    """Print the table (see it with -s) and append it to tests/artifacts/chaos-report.md."""
    width = max(len(name) for name, _ in rows)
    lines = [f"\n### {title}\n", f"| {'what':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as out:
        out.write(text)
