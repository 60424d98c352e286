"""The many-machine topology, built once per module (tests/hosts/system.py), and what drives it.

Needs root (network namespaces), iproute2, haproxy, redis-server and PostgreSQL's binaries, which
.ci/run installs. Each test prints what it injected and what it checked (see them with -s).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bus.client import default_bus, run_sync
from tests.chaos.conftest import stock_up
from tests.hosts.network import Host, Network, Process
from tests.hosts.services import POSTGRES_VERSIONS
from tests.hosts.system import PYTHON, Cluster
from tests.polling import poll

pytestmark = [pytest.mark.hosts]


def unusable_here() -> str | None:
    """Why the many-host tests cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "haproxy", "redis-server", "runuser", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it)"
    if not any(POSTGRES_VERSIONS.glob("*/bin/initdb")):
        return "PostgreSQL's server programs are not in /usr/lib/postgresql (apt-get install postgresql)"
    return None


@dataclass
class Shop:
    """The running cluster, and what the tests placed on it so far (the books are checked whole)."""

    cluster: Cluster
    initial: dict[str, dict[str, Any]]
    order_ids: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    missing = unusable_here()
    if missing:
        pytest.fail(f"The many-host tests cannot run here: {missing}.")
    directory = tmp_path_factory.mktemp("hosts")
    with Network(Path(__file__).resolve().parents[2], directory / "logs") as network:
        cluster = Cluster(network, directory)
        try:
            cluster.start()
            with cluster.operator():
                initial = stock_up(2_000)
            yield Shop(cluster, initial)
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            run_sync(default_bus.aclose)
            cluster.close()


@pytest.fixture
def operator(shop: Shop, settings: Any) -> Iterator[Cluster]:
    """The test's own bus on the cluster's Redis, as an operator (for the books)."""
    with shop.cluster.operator():
        yield shop.cluster


def shoppers(shop: Shop, name: str, *, clients: int, orders: int) -> Process:
    """Start checkouts from the client host through the balancer; `finish_shopping` reads them."""
    return shop.cluster.shop(name, clients=clients, orders=orders)


def finish_shopping(shop: Shop, process: Process, timeout: float = 300) -> dict[str, Any]:
    """Wait for the shoppers to end; what they placed and saw. Their orders join the books."""
    result = shop.cluster.shopped(process, timeout)
    shop.order_ids += result["order_ids"]
    return result


@dataclass
class Watcher:
    """A WebSocket watcher on the client host and the frames it recorded."""

    host: Host
    name: str
    out: Path

    def frames(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def events(self) -> list[dict[str, Any]]:
        return [frame for frame in self.frames() if frame["type"] == "event"]

    def stop(self) -> None:
        self.host.stop(self.name, signal.SIGTERM)


def watch(cluster: Cluster, name: str, uri: str) -> Watcher:
    out = cluster.directory / f"{name}.jsonl"
    command = [PYTHON, "-m", "tests.hosts.agents", "watch", uri, "--origin", cluster.base, "--out", str(out)]
    cluster.client.spawn(name, command, env=cluster.env("operators", cluster.client))
    watcher = Watcher(cluster.client, name, out)
    poll(
        lambda: [frame["type"] for frame in watcher.frames()],
        lambda types: "hello" in types,
        what=f"watcher {name} to be greeted",
        timeout=30,
    )
    return watcher


def stock_offsets(cluster: Cluster, after: int) -> list[int]:
    """The event log's stock events after offset `after`, from the shared database."""
    with cluster.postgres.superuser("site") as connection:
        rows = connection.execute(
            "SELECT id FROM presentation_event WHERE topic = 'stock' AND id > %s ORDER BY id", [after]
        ).fetchall()
    return [row[0] for row in rows]


def offset(cursor: str) -> int:
    return int(cursor.rpartition(":")[2])


def workers_by_host(cluster: Cluster) -> dict[str, dict[str, int]]:
    """host -> domain -> messages its live worker handled, from the heartbeats (/api/system)."""
    status, body = cluster.get("/api/system")
    assert status == 200, body
    by_host: dict[str, dict[str, int]] = {}
    for domain in body["domains"]:
        for info in domain["workers"].values():
            by_host.setdefault(info["host"], {})[domain["domain"]] = info["handled"]
    return by_host


class Prober:
    """GETs `path` through the balancer every 0.1 s in a thread: when, what status, how long."""

    def __init__(self, cluster: Cluster, path: str) -> None:
        self.cluster = cluster
        self.path = path
        self.answers: list[tuple[float, int, float]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.1):
            began = time.monotonic()
            try:
                status, _ = self.cluster.get(self.path, timeout=HANG)
            except (OSError, http.client.HTTPException, ValueError):
                status = 0  # no answer within HANG seconds, or a broken one
            self.answers.append((began, status, time.monotonic() - began))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(HANG + 5)

    def recovered_after(self, since: float) -> float | None:
        """Seconds from `since` to the first success that followed the last failure (to the first
        success, when nothing failed); None while there is none."""
        answers = [(at, status, took) for at, status, took in self.answers if at >= since]
        failures = [at for at, status, _ in answers if status != 200]
        later = [
            at + took for at, status, took in answers if status == 200 and (not failures or at > failures[-1])
        ]
        return later[0] - since if later else None


#: Seconds without an answer that count as a hang (far above any answer the shop should give).
HANG = 30.0
