"""When each benchmark message was handled, told by the worker that handled it (bench/delivery.py).

A handler of any stack (bus, Celery, FastStream) calls `record(sent)` with the ``time.time()``
its producer took just before sending. That costs an append: a thread of the worker process
writes what was recorded to Redis every FLUSH_SECONDS, in one transaction per flush, so that
the handler does no I/O of its own and the transport is what is measured. The producer reads
the count to know when a batch has been handled, then every (sent, handled) pair.

Both sides find Redis in the BENCH_REDIS_URL environment variable. A worker process that has
started says so with `announce_ready`, under the name its starter gave it in BENCH_PROCESS_NAME
(the key bench/rpc.py's own servers set too).
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from typing import Any

URL_VARIABLE = "BENCH_REDIS_URL"
NAME_VARIABLE = "BENCH_PROCESS_NAME"
READY_KEY = "benchready:{}"
COUNT_KEY = "benchprobe:count"
TIMES_KEY = "benchprobe:times"
FLUSH_SECONDS = 0.02

_lock = threading.Lock()
_pending = array("d")
_flusher: threading.Thread | None = None


def record(sent: float) -> None:
    """A message sent at `sent` (``time.time()``) has been handled now."""
    global _flusher
    now = time.time()
    with _lock:
        _pending.append(sent)
        _pending.append(now)
        if _flusher is None:
            _flusher = threading.Thread(target=_flush_forever, name="bench-probe", daemon=True)
            _flusher.start()


def announce_ready() -> None:
    """Tell the benchmark that this worker process is serving (a no-op outside one)."""
    name = os.environ.get(NAME_VARIABLE)
    if name:
        import redis

        with redis.Redis.from_url(os.environ[URL_VARIABLE]) as client:
            client.set(READY_KEY.format(name), os.getpid())


def _flush_forever() -> None:
    import redis

    client = redis.Redis.from_url(os.environ[URL_VARIABLE])
    while True:
        time.sleep(FLUSH_SECONDS)
        with _lock:
            if not _pending:
                continue
            data = _pending.tobytes()
            count = len(_pending) // 2
            del _pending[:]
        pipe = client.pipeline(transaction=True)
        pipe.rpush(TIMES_KEY, data)
        pipe.incrby(COUNT_KEY, count)
        pipe.execute()


# --------------------------------------------------------------------------------------------
# The producer's side
# --------------------------------------------------------------------------------------------


def reset(client: Any) -> None:
    """Forget what was recorded (`client`: a sync redis-py client)."""
    client.delete(COUNT_KEY, TIMES_KEY)


def handled(client: Any) -> int:
    """How many messages the workers have recorded since the last reset."""
    return int(client.get(COUNT_KEY) or 0)


def collected(client: Any) -> list[tuple[float, float]]:
    """Every (sent, handled) pair recorded since the last reset."""
    pairs: list[tuple[float, float]] = []
    for chunk in client.lrange(TIMES_KEY, 0, -1):
        values = array("d")
        values.frombytes(chunk)
        pairs.extend(zip(values[0::2], values[1::2], strict=True))
    return pairs
