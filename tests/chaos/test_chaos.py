"""Faults injected into `manage.py up` (daphne + runworker per domain on a private Redis) under load.

Each test prints a table of what was injected and what was checked (run with -s), and appends it
to tests/artifacts/chaos-report.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest

import bus
from bus.exceptions import DeadlineExceeded, NoWorker
from tests.chaos.conftest import (
    DOMAIN_CHILDREN,
    Checked,
    Load,
    System,
    chaos_seed,
    check_invariants,
    checkouts,
    join,
    report,
    run_load,
    stock,
    stock_up,
    wait_terminal,
)
from tests.conftest import RedisServer
from tests.polling import poll
from tests.site import Visitor

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def settle(
    load: Load, count: int, initial: dict[str, dict[str, Any]], timeout: float
) -> tuple[dict[str, dict[str, Any]], float, Checked]:
    """After the load: every client got answers it could read, every checkout was placed, every
    order ended; then the books are checked. The orders, the seconds they took to end, the check."""
    assert not load.errors, load.errors[:10]
    assert not load.bad_bodies, load.bad_bodies[:10]
    placed = load.placed()
    assert len(placed) == count
    orders, waited = wait_terminal([c.order_id for c in placed], timeout=timeout)
    return orders, waited, check_invariants(orders, initial)


@pytest.mark.timeout(420 + checkouts() // 2)
def test_domain_workers_killed_repeatedly_during_checkouts(system: System) -> None:
    count = checkouts()
    initial = stock_up(count)
    began = time.monotonic()
    load, shoppers = run_load(system.base, count, sorted(initial), pace=0.02)
    seed = chaos_seed()
    rng = random.Random(seed)
    # Every domain's worker at least once, in random order, then one to three more at random.
    victims = rng.sample(DOMAIN_CHILDREN, len(DOMAIN_CHILDREN))
    victims += rng.choices(DOMAIN_CHILDREN, k=rng.randint(1, 3))
    kills: list[str] = []
    for name in victims:
        time.sleep(rng.uniform(0.7, 1.3))
        pid = system.pid(name)
        try:
            os.kill(pid, signal.SIGKILL)
            kills.append(f"{name}:{pid}")
        except ProcessLookupError:
            kills.append(f"{name}:{pid} (already gone)")
    chaos_seconds = time.monotonic() - began
    join(shoppers, timeout=120 + count * 0.5)
    load_seconds = time.monotonic() - began
    _, waited, checked = settle(load, count, initial, timeout=180)
    assert checked.confirmed > 0, "some checkouts must get through"
    restarts = {name: len(system.pids(name)) - 1 for name in DOMAIN_CHILDREN}
    report(
        "kill -9 of random domain workers during checkouts",
        [
            ("checkouts (CHAOS_CHECKOUTS)", count),
            ("seed (CHAOS_SEED)", seed),
            ("kills (SIGKILL)", ", ".join(kills)),
            ("kill window / load duration (s)", f"{chaos_seconds:.1f} / {load_seconds:.1f}"),
            ("restarts by the supervisor", restarts),
            ("HTTP statuses seen", dict(sorted(load.statuses.items()))),
            ("POSTs retried with the same key", sum(c.attempts - 1 for c in load.checkouts)),
            ("confirmed / failed", f"{checked.confirmed} / {checked.failed}"),
            ("charge / refund ledger lines", f"{checked.charge_lines} / {checked.refund_lines}"),
            ("units sold", sum(checked.sold.values())),
            ("seconds until all terminal", f"{waited:.1f}"),
            (
                "invariants",
                "no double charge, failed refunded, ledgers balance, sold+available=in, 0 reserved",
            ),
        ],
    )


@pytest.mark.timeout(420)
def test_redis_restarted_under_load(system: System, private_redis: RedisServer) -> None:
    count = min(checkouts(), 200)
    initial = stock_up(count)
    before = system.current()
    started_lines = system.text().count("| started (pid")
    load, shoppers = run_load(system.base, count, sorted(initial), pace=0.05)
    time.sleep(1.5)
    mark = len(load.failure_seconds)
    private_redis.stop()
    down = time.monotonic()
    time.sleep(2.0)
    private_redis.start()
    gap = time.monotonic() - down
    join(shoppers, timeout=240)
    assert not load.errors, load.errors[:10]
    assert not load.bad_bodies, load.bad_bodies[:10]
    failures = Counter(s for s in load.statuses.elements() if s >= 500 or s == 0)
    assert set(failures) <= {503, 504}, f"only 503/504 while Redis is away, saw {failures}"
    slowest = max(load.failure_seconds, default=0.0)
    assert slowest < 15, f"a failure took {slowest:.1f} s: not fast"
    orders, waited = wait_terminal([c.order_id for c in load.placed()], timeout=180)
    checked = check_invariants(orders, initial)
    after = system.current()
    assert after == before, f"no process was restarted: {before} -> {after}"
    assert system.text().count("| started (pid") == started_lines
    report(
        "Redis stopped and started again under load",
        [
            ("checkouts", count),
            ("Redis down (s)", f"{gap:.1f}"),
            ("HTTP statuses seen", dict(sorted(load.statuses.items()))),
            ("5xx during/after the gap", len(load.failure_seconds) - mark),
            ("slowest 5xx (s)", f"{slowest:.2f}"),
            ("5xx without a problem body", len(load.bad_bodies)),
            ("processes restarted", 0),
            ("'Future exception was never retrieved' in logs", system.text().count("never retrieved")),
            ("confirmed / failed", f"{checked.confirmed} / {checked.failed}"),
            ("seconds until all terminal", f"{waited:.1f}"),
            ("invariants", "hold"),
        ],
    )


def payments_status(system: System) -> dict[str, Any]:
    """The payments line of `bus status --json`, as an operator reads it."""
    status = json.loads(system.bus_cli("status", "--json")[1])
    payments: dict[str, Any] = next(d for d in status["domains"] if d["domain"] == "payments")
    return payments


@pytest.mark.timeout(420)
def test_payments_stopped_then_resumed(system: System) -> None:
    initial = stock()
    pid = system.pause("payments")
    stopped = time.monotonic()
    # Orders placed meanwhile (some while the heartbeat still looks fresh, so their charges are
    # queued for a worker that does not take them) wait at the charge step.
    load, shoppers = run_load(system.base, 12, ["TONGS-3", "HAMMER-4"], sessions_per_customer=1, pace=0.5)
    # At first the worker's heartbeat is still fresh: a call waits out its deadline (exit 6);
    # once the heartbeat has expired, callers are told at once that no worker serves it (exit 7).
    early_code, early_output, early_seconds = system.bus_cli(
        "call", "payments.balance", '{"customer_id": "ada"}', "--timeout", "2"
    )
    poll(lambda: payments_status(system)["workers"], lambda workers: not workers,
         what="the stopped payments worker's heartbeat to expire")  # fmt: skip
    code, output, seconds = system.bus_cli("call", "payments.balance", '{"customer_id": "ada"}')
    began = time.monotonic()
    with pytest.raises(NoWorker):
        bus.call("payments.balance", customer_id="ada")
    in_process = time.monotonic() - began
    assert early_code in (6, 7), early_output
    assert code == 7, output
    assert in_process < 2, f"NoWorker took {in_process:.2f} s"
    join(shoppers, timeout=120)
    assert not load.errors, load.errors[:10]
    queued = [payments_status(system)["queued"] for _ in range(4)]
    assert max(queued) <= 1000, queued
    states = Counter(bus.call("orders.get", order_id=c.order_id)["state"] for c in load.placed())
    assert not states.keys() & {"confirmed", "charged"}, f"nothing can be charged yet: {states}"
    down = time.monotonic() - stopped
    system.resume(pid)
    orders, waited = wait_terminal([c.order_id for c in load.placed()], timeout=120)
    checked = check_invariants(orders, initial)
    assert checked.confirmed > 0, "orders resume and confirm once payments is back"
    assert system.pid("payments") == pid, "the same process carried on"
    dropped = system.dropped("payments", "payments.charge")
    report(
        "payments worker stopped (SIGSTOP), then continued (SIGCONT)",
        [
            ("payments down (s)", f"{down:.1f}"),
            ("bus call while heartbeat fresh", f"exit {early_code} in {early_seconds:.1f} s"),
            ("bus call after heartbeat expired", f"exit {code} in {seconds:.1f} s (process start incl.)"),
            ("bus.call in process", f"NoWorker in {in_process:.3f} s"),
            ("payments queue while down", queued),
            ("orders placed while down", len(load.placed())),
            ("expired charges dropped after SIGCONT (log)", dropped),
            ("states while down", dict(states)),
            ("confirmed / failed after SIGCONT", f"{checked.confirmed} / {checked.failed}"),
            ("seconds until all terminal", f"{waited:.1f}"),
        ],
    )


@pytest.mark.timeout(300)
def test_expired_requests_are_not_run_late(system: System) -> None:
    before = bus.call("inventory.stock", sku="TONGS-3")
    visitor = Visitor(system.base)
    assert visitor.request("GET", "/api/products/TONGS-3")[0] == 200  # the edge has a value to fall back on
    # Frozen, yet seen as live: each call waits out its deadline (a worker that beats but takes
    # nothing), whatever the time the CLI's process start takes, instead of a NoWorker once the
    # frozen worker's own presence would have expired.
    pid = system.pause("inventory", seen_as_live=True)
    stopped = time.monotonic()
    outcomes: Counter[str] = Counter()
    try:
        for _ in range(5):
            began = time.monotonic()
            try:
                bus.call("inventory.restock", sku="TONGS-3", quantity=5, timeout=0.5)
                outcomes["ran"] += 1
            except DeadlineExceeded:
                outcomes[f"DeadlineExceeded in {time.monotonic() - began:.1f} s"] += 1
        cli_code, cli_output, cli_seconds = system.bus_cli(
            "call", "inventory.restock", '{"sku": "TONGS-3", "quantity": 7}', "--timeout", "0.5"
        )
        # The edge serves the last known stock, marked stale, instead of hanging.
        edge = []
        for _ in range(3):
            began = time.monotonic()
            status, body = visitor.request("GET", "/api/products/TONGS-3")
            edge.append(
                (status, body.get("stale") if isinstance(body, dict) else body, time.monotonic() - began)
            )
    finally:
        system.resume(pid)
    stopped_for = time.monotonic() - stopped
    assert outcomes == Counter({k: v for k, v in outcomes.items() if k.startswith("DeadlineExceeded")})
    assert cli_code == 6, cli_output
    # The worker catches up: every restock it takes off the queue after SIGCONT has expired (each
    # caller waited out its deadline), so it drops all six (five calls and the CLI's) unrun.
    dropped = poll(
        lambda: system.dropped("inventory", "inventory.restock"),
        lambda count: count >= 6,
        what="the inventory worker to drop the six expired restocks (its log)",
    )
    after = bus.call("inventory.stock", sku="TONGS-3")
    assert after["on_hand"] == before["on_hand"], f"an expired restock ran: {before} -> {after}"
    assert after["version"] == before["version"], f"{before} -> {after}"
    assert all(status == 200 and stale for status, stale, _ in edge), edge
    report(
        "inventory stopped (SIGSTOP) while short-deadline writes are sent",
        [
            ("inventory stopped (s)", f"{stopped_for:.1f}"),
            ("bus.call restock timeout 0.5 x5", dict(outcomes)),
            ("bus call restock --timeout 0.5", f"exit {cli_code} in {cli_seconds:.1f} s"),
            ("GET /api/products/TONGS-3 while stopped", [(s, stale, f"{t:.2f}s") for s, stale, t in edge]),
            ("TONGS-3 on_hand before / after SIGCONT", f"{before['on_hand']} / {after['on_hand']}"),
            ("expired restocks dropped (worker log)", dropped),
            ("expired requests executed late", 0),
        ],
    )


# Sagas give up on a domain after 3 s, holds expire after 2 s, a killed orders worker's claims
# after 4 s: faults of a few seconds then reach the refund branch instead of only delaying it.
SAGA_CLOCKS = {
    "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
    "CHAOS_GIVE_UP_SECONDS": "3",
    "CHAOS_HOLD_SECONDS": "2",
    "CHAOS_LEASE_SECONDS": "4",
}


def kill_while_refunds_run(system: System, victims: list[str]) -> str:
    """Once a refund is due or running (an order undoing its charge, not refunded yet), kill -9
    the victims; then watch the restarted workers finish the refunds (bounded, not asserted)."""
    watch_until = time.monotonic() + 15
    while time.monotonic() < watch_until and len(set(system.undoing_charges())) == 1:
        time.sleep(0.2)
    undoing, refunded = system.undoing_charges()
    for name in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(system.pid(name), signal.SIGKILL)
    watch_until = time.monotonic() + 30
    while time.monotonic() < watch_until and len(set(system.undoing_charges())) > 1:
        time.sleep(0.3)
    return f"{undoing} undoing a charge, {refunded} refunded, when {' and '.join(victims)} were killed"


def flowing(load: Load, accepted: int, shoppers: list[threading.Thread], patience: float = 60) -> None:
    """Until `accepted` checkouts in all were accepted (202), the shoppers are done, or patience ends."""
    until = time.monotonic() + patience
    while load.statuses[202] < accepted and any(t.is_alive() for t in shoppers) and time.monotonic() < until:
        time.sleep(0.2)


def victims(rng: random.Random) -> list[str]:
    return rng.sample(["payments", rng.choice(["orders.1", "orders.2"])], 2)


def freeze_inventory(system: System, rng: random.Random) -> str:
    """Inventory frozen (SIGSTOP): sagas past their charge cannot commit, give up and refund."""
    pid = system.pause("inventory")
    frozen = time.monotonic()
    try:
        killed = kill_while_refunds_run(system, victims(rng))
    finally:
        system.resume(pid)
    return f"inventory frozen {time.monotonic() - frozen:.0f} s; {killed}"


def freeze_payments(system: System, rng: random.Random) -> str:
    """Payments frozen longer than a hold lasts but not past a call's deadline: the queued charges
    land after their holds expired, the commits are refused, and the sagas refund."""
    pid = system.pause("payments")
    try:
        time.sleep(3.0)  # the fault's length: over CHAOS_HOLD_SECONDS, under BUS["TIMEOUT"]
    finally:
        system.resume(pid)
    return f"payments frozen 3 s; {kill_while_refunds_run(system, victims(rng))}"


@pytest.mark.parametrize("system", [SAGA_CLOCKS], indirect=True, ids=["give-up-3s"])
@pytest.mark.timeout(600)
def test_refunds_run_while_inventory_freezes_and_orders_and_payments_are_killed(system: System) -> None:
    count = min(checkouts(), 200)
    initial = stock_up(count)
    seed = chaos_seed()
    rng = random.Random(seed)
    began = time.monotonic()
    load, shoppers = run_load(system.base, count, sorted(initial), pace=0.3, seed=seed)
    cycles: list[str] = []
    # Four faults, and more while none has reached a refund yet: whether a freeze meets a saga
    # between its charge and its commit depends on timing (a third of the runs needed more).
    while any(thread.is_alive() for thread in shoppers) and (
        len(cycles) < 4 or (system.refunds() == 0 and len(cycles) < 12)
    ):
        accepted = load.statuses[202]
        time.sleep(rng.uniform(2.0, 4.0))  # checkouts flow between the faults
        # After a fault the shoppers may all be backing off (503s while a domain restarts): the next
        # fault must meet orders in flight, or the refund branch is reached only by chance.
        flowing(load, accepted + 3, shoppers)
        cycles.append((freeze_inventory, freeze_payments)[len(cycles) % 2](system, rng))
    join(shoppers, timeout=300)
    load_seconds = time.monotonic() - began
    orders, waited, checked = settle(load, count, initial, timeout=240)
    steps = {order_id: {step["name"] for step in order["steps"]} for order_id, order in orders.items()}
    refunded = [order_id for order_id, names in steps.items() if "refunded" in names]
    # The branch this test is for: the saga knew it had charged (a stored step), then failed.
    after_charge = [order_id for order_id in refunded if "charged" in steps[order_id]]
    reasons = Counter(
        re.sub(r"\d+", "N", o["reason"].split(":")[0]) for o in orders.values() if o["state"] == "failed"
    )
    report(
        "refunds: inventory frozen between charge and commit, orders and payments killed meanwhile",
        [
            ("checkouts (CHAOS_CHECKOUTS, at most 200)", count),
            ("seed (CHAOS_SEED)", seed),
            ("saga clocks", "give up 3 s, holds 2 s, leases 4 s"),
            *((f"fault {n}", cycle) for n, cycle in enumerate(cycles, 1)),
            ("load duration (s)", f"{load_seconds:.1f}"),
            ("HTTP statuses seen", dict(sorted(load.statuses.items()))),
            ("confirmed / failed", f"{checked.confirmed} / {checked.failed}"),
            ("why orders failed", dict(reasons.most_common())),
            ("refunds (ledger lines) / orders refunded", f"{checked.refund_lines} / {len(refunded)}"),
            (
                "refunded after their charge step / of a charge that landed unseen",
                f"{len(after_charge)} / {len(refunded) - len(after_charge)}",
            ),
            ("charge ledger lines", checked.charge_lines),
            ("seconds until all terminal", f"{waited:.1f}"),
            ("invariants", "charged at most once, failed refunded, ledgers balance, sold+available=in"),
        ],
    )
    assert checked.refund_lines > 0, "no refund ran: the faults never reached the refund branch"
    assert after_charge, "no saga failed after its charge: the compensation of a charge never ran"
    assert len(refunded) == checked.refund_lines, "each refund shows on its order"
    assert checked.confirmed > 0, "checkouts still get through between the faults"
