"""The FastStream side of bench/delivery.py and bench/rpc.py: a Redis broker and its subscriber.

    BENCH_PROCESS_NAME=faststream-1 BENCH_REDIS_URL=redis://... .venv/bin/python bench/faststream_app.py take

`take` (bench/delivery.py) reads the stream TAKE_STREAM in the consumer group TAKE_GROUP
(XREADGROUP), as a consumer named after the process (BENCH_PROCESS_NAME), and acknowledges each
message after its handler returned (AckPolicy.ACK): FastStream's at-least-once on Redis. `add`
(bench/rpc.py) answers `broker.request(..., list=ADD_LIST)`, FastStream's RPC. A process
subscribes to one of the two, so that it polls Redis for nothing else while the benchmark
measures. Everything else is FastStream's default, but its log line per message (see
`quiet_logger`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub

from bench import probe

TAKE_STREAM = "bench.faststream.take"
TAKE_GROUP = "bench.workers"
ADD_LIST = "bench.faststream.add"


def quiet_logger() -> logging.Logger:
    """FastStream's logger at WARNING: errors show, the line per message it logs at INFO does not
    (the bus's workers and Celery's log none by default)."""
    logger = logging.getLogger("bench.faststream")
    logger.setLevel(logging.WARNING)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    return logger


ROLES = ("take", "add")


def broker_for(url: str, role: str, consumer: str) -> RedisBroker:
    """A broker with the subscriber of `role`, reading the stream (if it does) as `consumer`."""
    broker = RedisBroker(url, logger=quiet_logger())
    if role == "take":

        @broker.subscriber(
            stream=StreamSub(TAKE_STREAM, group=TAKE_GROUP, consumer=consumer), ack_policy=AckPolicy.ACK
        )
        async def take(sent: float) -> None:
            probe.record(sent)

    else:

        @broker.subscriber(list=ADD_LIST)
        async def add(a: int, b: int) -> int:
            return a + b

    return broker


async def serve(role: str, consumer: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    url = os.environ[probe.URL_VARIABLE]
    broker = broker_for(url, role, consumer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await broker.start()
    probe.announce_ready()
    try:
        await stop.wait()
    finally:
        await broker.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ROLES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(ROLES)}")
    asyncio.run(serve(sys.argv[1], os.environ.get(probe.NAME_VARIABLE) or f"faststream-{os.getpid()}"))
