"""The five scenarios of the many-machine topology, in one cluster, in order (see tests/hosts/system.py).

Each prints what it injected and what it checked; the books (every order terminal, nobody charged
twice, stock and ledgers balanced) are checked over every order placed so far.
"""

from __future__ import annotations

import functools
import time

import pytest

from tests.chaos.conftest import Checked, check_invariants, report, wait_terminal
from tests.hosts.conftest import (
    Prober,
    Shop,
    Watcher,
    finish_shopping,
    offset,
    shoppers,
    stock_offsets,
    watch,
    workers_by_host,
)
from tests.hosts.system import Cluster
from tests.polling import poll

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(600)]


def settle(shop: Shop, timeout: float = 180) -> tuple[float, Checked]:
    """Every order placed so far terminal, and the books of all of them balanced."""
    orders, seconds = wait_terminal(shop.order_ids, timeout)
    return seconds, check_invariants(orders, shop.initial)


def test_checkouts_across_hosts_reach_every_socket_on_both_web_hosts(shop: Shop, operator: Cluster) -> None:
    cluster = shop.cluster
    watchers = [watch(cluster, f"watch-{web.name}", f"ws://{web.address}:8000/ws/") for web in cluster.web]
    start = offset(next(f for f in watchers[0].frames() if f["type"] == "hello")["cursor"])
    began = time.monotonic()
    result = finish_shopping(shop, shoppers(shop, "scenario-1", clients=4, orders=80))
    seconds, checked = settle(shop)
    expected = stock_offsets(cluster, start)
    for watcher in watchers:
        poll(
            functools.partial(_stock_seen, watcher),
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
            (
                "took",
                f"{time.monotonic() - began:.1f} s, the last order terminal {seconds:.1f} s after the load",
            ),
            ("stock events", f"{len(expected)} logged; each web host's watcher saw every one"),
            ("books", "no order twice, at most one charge each, ledgers and stock balance"),
        ],
    )


def test_a_lost_web_host_moves_its_sockets_to_the_other_and_they_resume_without_a_gap(
    shop: Shop, operator: Cluster
) -> None:
    cluster = shop.cluster
    lost = cluster.web[0]
    watchers = [watch(cluster, f"ws4-{n}", f"ws://{cluster.balancer.address}/ws/") for n in range(4)]
    on_lost = [w for w in watchers if _served_by(w) == lost.name]
    assert on_lost and len(on_lost) < len(watchers), [_served_by(w) for w in watchers]
    start = min(offset(next(f for f in w.frames() if f["type"] == "hello")["cursor"]) for w in watchers)
    shopping = shoppers(shop, "scenario-4", clients=4, orders=80)
    poll(lambda: len(on_lost[0].events()), lambda n: n >= 5, what="events flowing", timeout=60)
    cut_at = time.time()
    with cluster.network.fault(lost, "cut"):
        reopened = poll(
            lambda: [_reopened_after(w, cut_at) for w in on_lost],
            lambda times: None not in times,
            what=f"the sockets of {lost.name} to be greeted again",
            timeout=60,
        )
        assert {_served_by(w) for w in on_lost} == {cluster.web[1].name}
        moved = [at - cut_at for at in reopened if at is not None]
        result = finish_shopping(shop, shopping)
        seconds, checked = settle(shop)
    expected = set(stock_offsets(cluster, start))
    for watcher in watchers:
        missing = {o for o in expected if o > _first_cursor(watcher)} - _stock_seen(watcher)
        assert not missing, f"{watcher.name} missed {len(missing)} stock events: {sorted(missing)[:10]}"
        assert not [f for f in watcher.frames() if f["type"] == "reload"], f"{watcher.name} had to reload"
        watcher.stop()
    cluster.wait_ready()
    report(
        "4. a web host lost",
        [
            ("injected", f"{lost.name}'s link taken down under load, {len(on_lost)} of 4 sockets on it"),
            ("sockets moved", f"all {len(on_lost)} reopened on {cluster.web[1].name} through the balancer"),
            ("time to move", f"{max(moved):.1f} s at most (client pings every 1 s, gives up after 2 s)"),
            (
                "events",
                f"{len(expected)} stock events; every socket saw every one after its cursor, no reload",
            ),
            ("responses", result["statuses"]),
            (
                "orders",
                f"{checked.confirmed} confirmed, {checked.failed} failed, all terminal in {seconds:.1f} s",
            ),
            ("books", "no order twice, at most one charge each, ledgers and stock balance"),
        ],
    )


def _stock_seen(watcher: Watcher) -> set[int]:
    return {offset(e["cursor"]) for e in watcher.events() if e["topic"] == "stock"}


def _served_by(watcher: Watcher) -> str | None:
    opened = [f for f in watcher.frames() if f["type"] == "open"]
    return opened[-1]["served_by"] if opened else None


def _first_cursor(watcher: Watcher) -> int:
    return offset(next(f for f in watcher.frames() if f["type"] == "hello")["cursor"])


def _reopened_after(watcher: Watcher, since: float) -> float | None:
    """When the watcher was first greeted after `since`, if it was."""
    return next((float(f["at"]) for f in watcher.frames() if f["type"] == "hello" and f["at"] > since), None)


def test_a_worker_host_cut_off_under_load_has_its_work_taken_over(shop: Shop, operator: Cluster) -> None:
    cluster = shop.cluster
    victim, other = cluster.workers
    before = workers_by_host(cluster)
    shopping = shoppers(shop, "scenario-2", clients=4, orders=120)
    poll(
        lambda: workers_by_host(cluster)[victim.name].get("orders", 0),
        lambda n: n > before[victim.name].get("orders", 0),
        what="load on the victim",
        timeout=60,
    )
    with cluster.network.fault(victim, "drop"):
        during = workers_by_host(cluster)
        time.sleep(10)  # the fault's length, not a wait for something to happen
        after_cut = workers_by_host(cluster)
    result = finish_shopping(shop, shopping)
    seconds, checked = settle(shop)
    handled = {
        host: sum(after_cut.get(host, {}).values()) - sum(during.get(host, {}).values())
        for host in (victim.name, other.name)
    }
    assert handled[other.name] > 0, f"{other.name} handled nothing while {victim.name} was cut off"
    assert victim.name not in after_cut, f"{victim.name} still seen as live after 10 s of silence"
    poll(
        lambda: workers_by_host(cluster),
        lambda hosts: victim.name in hosts,
        what=f"{victim.name} back",
        timeout=60,
    )
    report(
        "2. a worker host cut off for 10 s under load",
        [
            ("injected", f"every packet to and from {victim.name} dropped for 10 s while 120 checkouts ran"),
            ("taken over", f"{other.name} handled {handled[other.name]} messages during the cut"),
            ("seen as dead", f"{victim.name} was no longer live at the end of the cut"),
            ("after", f"{victim.name}'s workers live again without a restart"),
            ("responses", result["statuses"]),
            (
                "orders",
                f"{checked.confirmed} confirmed, {checked.failed} failed, all terminal in {seconds:.1f} s",
            ),
            ("money", f"{checked.charge_lines} charges, {checked.refund_lines} refunds, none twice"),
            ("books", "no order twice, at most one charge each, ledgers and stock balance"),
        ],
    )


def test_a_third_worker_host_added_under_load_takes_a_share(shop: Shop, operator: Cluster) -> None:
    cluster = shop.cluster
    shopping = shoppers(shop, "scenario-5", clients=4, orders=120)
    poll(lambda: workers_by_host(cluster), lambda hosts: len(hosts) == 2, what="two worker hosts", timeout=30)
    added = cluster.network.host("worker-3", 43)
    cluster.workers.append(added)
    cluster.start_workers(added)
    poll(
        lambda: workers_by_host(cluster).get(added.name, {}),
        lambda handled: len(handled) == 4 and sum(handled.values()) > 0,
        what=f"{added.name}'s workers live and handling messages",
        timeout=120,
    )
    result = finish_shopping(shop, shopping)
    seconds, checked = settle(shop)
    share = workers_by_host(cluster)[added.name]
    report(
        "5. a third worker host added under load",
        [
            ("injected", f"{added.name} started (every domain's runworker) while 120 checkouts ran"),
            ("its share", f"handled {sum(share.values())} messages: {share}"),
            ("restarted", "nothing: the other hosts' processes kept running"),
            ("responses", result["statuses"]),
            (
                "orders",
                f"{checked.confirmed} confirmed, {checked.failed} failed, all terminal in {seconds:.1f} s",
            ),
        ],
    )


def test_the_redis_primary_host_lost_sentinel_promotes_the_replica_and_everyone_follows(
    shop: Shop, operator: Cluster
) -> None:
    cluster = shop.cluster
    lost = cluster.redis_hosts[0]
    primary = cluster.redis.primary(cluster.redis_hosts[2])
    assert primary == lost.address, f"the primary is {primary}, not on {lost.name}"
    servers = [host for host in cluster.network.hosts.values() if host not in (lost, cluster.client)]
    pids = {(h.name, p.name): p.popen.pid for h in servers for p in h.processes.values()}
    prober = Prober(cluster, "/readyz")
    shopping = shoppers(shop, "scenario-3", clients=4, orders=120)
    time.sleep(2)
    cut = time.monotonic()
    with cluster.network.fault(lost, "cut"):
        poll(
            lambda: cluster.redis.primary(cluster.redis_hosts[2]),
            lambda address: address != lost.address,
            what="Sentinel to promote the replica",
            timeout=60,
            ignoring=(OSError,),
        )
        promoted = time.monotonic() - cut
        result = finish_shopping(shop, shopping)
        poll(
            lambda: prober.recovered_after(cut), lambda s: s is not None, what="/readyz 200 again", timeout=60
        )
        prober.stop()
        seconds, checked = settle(shop)
    gap = [(status, took) for at, status, took in prober.answers if at >= cut and status != 200]
    assert all(status == 503 for status, _ in gap), f"not 503 in the gap: {sorted({s for s, _ in gap})}"
    for host in servers:
        for process in host.processes.values():
            assert process.popen.poll() is None, f"{host.name} {process.name} died"
            assert process.popen.pid == pids[(host.name, process.name)], (
                f"{host.name} {process.name} restarted"
            )
    report(
        "3. the Redis primary's host lost",
        [
            (
                "injected",
                f"{lost.name}'s link taken down (the primary and a Sentinel) while 120 checkouts ran",
            ),
            ("promoted", f"{cluster.redis.primary(cluster.redis_hosts[2])} after {promoted:.1f} s"),
            ("recovered", f"/readyz answered 200 again {prober.recovered_after(cut):.1f} s after the loss"),
            (
                "in the gap",
                f"{len(gap)} answers, all 503, slowest {max((t for _, t in gap), default=0):.1f} s",
            ),
            ("restarted", "nothing: every process on the other hosts kept its pid"),
            ("responses", result["statuses"]),
            (
                "orders",
                f"{checked.confirmed} confirmed, {checked.failed} failed, all terminal in {seconds:.1f} s",
            ),
        ],
    )
