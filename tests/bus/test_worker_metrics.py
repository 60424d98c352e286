"""`runworker --metrics-port`: a real worker process serves its bus metrics to a Prometheus scrape."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import WorkerProcess, free_port, run_bus
from tests.polling import poll

pytestmark = [pytest.mark.redis, pytest.mark.slow]

StartWorker = Callable[..., WorkerProcess]

# Every family of bus/metrics.py: a worker process registers them all, calls it makes included.
BUS_FAMILIES = {
    "bus_calls",
    "bus_call_duration_seconds",
    "bus_messages",
    "bus_handle_duration_seconds",
    "bus_worker_in_flight",
    "bus_queue_depth",
    "bus_dead_letters",
    "bus_websockets_open",
}


def scrape(port: int) -> tuple[set[str], list[Sample]]:
    """The metric families the worker serves at /metrics, and all their samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    return {family.name for family in families}, [sample for family in families for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels; 0 if the worker has none yet."""
    return next((s.value for s in samples if s.name == name and s.labels == labels), 0.0)


def test_a_worker_serves_the_calls_it_handled_on_its_metrics_port(
    redis_layer: str, start_worker: StartWorker, worker_data_dir: Path
) -> None:
    port = free_port()
    start_worker(redis_layer, "echo", metrics_port=port)
    called = run_bus(worker_data_dir, redis_layer, "call", "echo.add", '{"a": 1, "b": 2}')
    assert (called.returncode, called.stdout.strip()) == (0, "3"), called.stderr

    call = {"target": "echo.add", "type": "bus.request"}
    # The worker counts a message after it has replied: the caller may be a moment ahead of it.
    names, samples = poll(
        lambda: scrape(port),
        lambda scraped: value(scraped[1], "bus_messages_total", outcome="ok", **call),
        what="the worker to count the call",
    )
    assert names >= BUS_FAMILIES, sorted(names)
    assert value(samples, "bus_messages_total", outcome="ok", **call) == 1
    assert value(samples, "bus_handle_duration_seconds_count", **call) == 1
