"""Checkouts through the balancer of the many-host topology, with one worker host and with two.

    sudo .venv/bin/python bench/hosts.py [--orders N] [--clients N] [--output PATH]

Needs root: it builds the hosts of tests/hosts/system.py as network namespaces (Redis primary,
replica and three Sentinels with TLS and ACL users; PostgreSQL primary and streaming replica with
a role per domain; HAProxy before two daphne hosts; every message signed), starts the workers on
worker-1 only, and has `--clients` shoppers on the client host place `--orders` checkouts through
the balancer (tests/load.py: signed-in sessions, 5xx retried with the same Idempotency-Key). Then
it starts worker-2's workers beside them and runs the same load again. For each run it reports
checkouts per second (orders placed / seconds from the first request until every order is
confirmed or failed) and the CPU each process used, as a share of one core over the run, so a
reader sees where the time goes and what more cores would give.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from bench import common  # noqa: E402
from tests.chaos.conftest import stock_up, wait_terminal  # noqa: E402
from tests.hosts.network import Network, namespace_pids  # noqa: E402
from tests.hosts.system import Cluster  # noqa: E402

RESULTS = common.ROOT / "bench" / "results" / "hosts.md"


def labelled_cpu(cluster: Cluster) -> dict[str, float]:
    """CPU seconds used so far by every process on every host, summed per host and program."""
    used: dict[str, float] = defaultdict(float)
    for host in cluster.network.hosts.values():
        for pid in namespace_pids(host.namespace):
            seconds = common.process_cpu(pid)
            if seconds is not None:
                used[f"{host.name} {program(pid)}"] += seconds
    return dict(used)


def program(pid: int) -> str:
    """What a process is, from its command line: `runworker orders`, daphne, postgres, ..."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    text = " ".join(argv)
    if "runworker" in argv:
        return f"runworker {argv[argv.index('runworker') + 1]}"
    for name in ("daphne", "haproxy", "sentinel", "redis-server", "postgres", "tests.hosts.agents"):
        if name in text:
            return {"tests.hosts.agents": "shoppers", "redis-server": "redis"}.get(name, name)
    return Path(argv[0]).name or "?"


def idle(cluster: Cluster, seconds: float = 10.0) -> float:
    """Cores the whole topology uses with no load at all (heartbeats, polls, checks)."""
    before = labelled_cpu(cluster)
    time.sleep(seconds)
    after = labelled_cpu(cluster)
    return sum(after.get(label, 0.0) - used for label, used in before.items()) / seconds


def run(cluster: Cluster, name: str, clients: int, orders: int) -> tuple[float, dict[str, float], float]:
    """One load: checkouts per second, CPU share per process, and the wall seconds."""
    before = labelled_cpu(cluster)
    began = time.monotonic()
    result = cluster.shopped(cluster.shop(name, clients=clients, orders=orders), timeout=900)
    with cluster.operator():
        wait_terminal(result["order_ids"], timeout=300)
    seconds = time.monotonic() - began
    # The shoppers' own process has ended by now: the client host's CPU is not in the table.
    after = labelled_cpu(cluster)
    shares = {label: (used - before.get(label, 0.0)) / seconds for label, used in after.items()}
    return len(result["order_ids"]) / seconds, shares, seconds


Row = tuple[str, float, dict[str, float], float, float]


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| worker hosts | checkouts/s | seconds | CPU, all processes (cores) | of which idle (cores) "
        "| CPU ms per checkout | busiest process | checkouts/s if it had a core of its own |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, rate, shares, seconds, quiet in rows:
        busiest, share = max(shares.items(), key=lambda item: item[1])
        lines.append(
            f"| {name} | {rate:.1f} | {seconds:.1f} | {sum(shares.values()):.2f} | {quiet:.2f} | "
            f"{1000 * sum(shares.values()) / rate:.0f} | {busiest} ({share:.2f} core) | {rate / share:.0f} |"
        )
    labels = sorted({label for _, _, shares, _, _ in rows for label in shares})
    lines += [
        "",
        "CPU ms per checkout, per process (share of one core over the run / checkouts per second):",
        "",
    ]
    lines.append("| process | " + " | ".join(f"{name} worker host(s)" for name, *_ in rows) + " |")
    lines.append("|---|" + "---:|" * len(rows))
    for label in sorted(labels, key=lambda label: -sum(row[2].get(label, 0.0) for row in rows)):
        values = [1000 * shares.get(label, 0.0) / rate for _, rate, shares, _, _ in rows]
        if max(values) >= 0.5:
            lines.append(f"| {label} | " + " | ".join(f"{value:.1f}" for value in values) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/hosts.py builds network namespaces: run it as root.", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    rows: list[Row] = []
    hosts = 0
    with Network(common.ROOT, directory / "logs") as network:
        cluster = Cluster(network, directory)
        try:
            cluster.start(worker_hosts=1)
            with cluster.operator():
                stock_up(4 * arguments.orders)
            hosts = len(network.hosts)
            for count in (1, 2):
                if count == 2:
                    cluster.start_workers(cluster.workers[1])
                    cluster.wait_ready()
                    time.sleep(10)  # the new workers' start (imports, first connections) is not idling
                common.progress(f"{count} worker host(s): 10 s idle, then {arguments.orders} checkouts")
                quiet = idle(cluster)
                rate, shares, seconds = run(cluster, f"load-{count}", arguments.clients, arguments.orders)
                rows.append((f"{count}", rate, shares, seconds, quiet))
        finally:
            cluster.close()
    lines = [
        f"# Checkouts through the balancer, one and two worker hosts ({time.strftime('%Y-%m-%d')})",
        "",
        f"`sudo .venv/bin/python bench/hosts.py --orders {arguments.orders} --clients {arguments.clients}`, "
        f"{os.cpu_count()} CPU cores for all {hosts} hosts (the shoppers' client host not counted below).",
        "",
        *table(rows),
    ]
    return common.publish(lines, arguments.output)


if __name__ == "__main__":
    sys.exit(main())
