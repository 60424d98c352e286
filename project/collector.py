"""Python's garbage collector, tuned for servers that hold many long-lived objects.

A daphne process with 1,000 open sockets keeps hundreds of thousands of objects alive for
minutes. With the default thresholds a broadcast's short-lived objects trigger young
collections that promote some of them, and every so often a full collection walks the whole
heap: a pause of about 170 ms in the middle of a fan-out (bench/edge.py: p99 253 ms with the
defaults, 80 ms without collections). Freezing what start-up made and collecting less often
keeps full collections rare; cycles are still collected.
"""

import gc

#: Allocations before a young collection (default 700); then 20 young per middle one (default
#: 10) and 10 middle ones per full collection (the default): a full collection every 10 million
#: allocations or so (about 70,000 by default), often enough that cycles from closed sockets do
#: not pile up.
THRESHOLDS = (50_000, 20, 10)


def tune_for_a_server() -> None:
    """Call once start-up is done (imports, django.setup): its objects are never scanned again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
