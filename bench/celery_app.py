"""The Celery side of bench/delivery.py and bench/rpc.py: one app, two queues, trivial tasks.

    .venv/bin/python -m celery -A bench.celery_app worker -P solo -Q bench.take

Redis (BENCH_REDIS_URL) is the broker and, for the RPC task, the result backend. Everything else
is Celery's default but what the comparison needs: `take` is acknowledged late (after it ran,
`task_acks_late=True`, Celery's at-least-once) and stores no result, like a bus command; `add`
is acknowledged as Celery does by default and stores its result for `AsyncResult.get`.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from celery.signals import worker_ready  # type: ignore[import-untyped]

from bench import probe

TAKE_QUEUE = "bench.take"
ADD_QUEUE = "bench.add"

url = os.environ.get(probe.URL_VARIABLE, "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=url, backend=url)
app.conf.update(
    task_acks_late=True,
    task_routes={"bench.take": {"queue": TAKE_QUEUE}, "bench.add": {"queue": ADD_QUEUE}},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(**_: Any) -> None:
    probe.announce_ready()


@app.task(name="bench.take", ignore_result=True)  # type: ignore[untyped-decorator]
def take(sent: float) -> None:
    """Note that a message sent at `sent` (time.time()) was handled."""
    probe.record(sent)


@app.task(name="bench.add", acks_late=False)  # type: ignore[untyped-decorator]
def add(a: int, b: int) -> int:
    """The RPC benchmark's call: the sum, back through the result backend."""
    return a + b
