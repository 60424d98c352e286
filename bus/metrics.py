"""Prometheus metrics of the bus, per process: calls, handling, workers, queues, dead letters.

    bus_calls_total{target, outcome}              calls made from this process (outcome: ok or the error kind)
    bus_call_duration_seconds{target}             their round trip, reply included
    bus_messages_total{target, type, outcome}     messages handled by this process's workers
    bus_handle_duration_seconds{target, type}     time spent handling each
    bus_worker_in_flight{channel}                 messages being handled now
    bus_queue_depth{channel}                      messages waiting on the channel (read at each heartbeat)
    bus_dead_letters_total{target}                messages kept as dead letters by this process
    bus_refused_total{channel, reason}            messages its workers refused unrun (bus/verification.py)
    bus_redelivered_total{channel}                durable messages this process took back from dead workers
    bus_websockets_open                           WebSockets open on this daphne (set by the edge)

Workers serve them with `runworker --metrics-port`; the web process at /metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

calls = Counter("bus_calls", "Calls made from this process.", ["target", "outcome"])
call_duration = Histogram(
    "bus_call_duration_seconds",
    "Round trip of calls made from this process.",
    ["target"],
    buckets=_LATENCY_BUCKETS,
)
handled = Counter(
    "bus_messages", "Messages handled by this process's workers.", ["target", "type", "outcome"]
)
handle_duration = Histogram(
    "bus_handle_duration_seconds",
    "Time spent handling a message.",
    ["target", "type"],
    buckets=_LATENCY_BUCKETS,
)
in_flight = Gauge("bus_worker_in_flight", "Messages being handled now.", ["channel"])
queue_depth = Gauge("bus_queue_depth", "Messages waiting on a channel, read at each heartbeat.", ["channel"])
dead_letters = Counter("bus_dead_letters", "Messages kept as dead letters by this process.", ["target"])
redelivered = Counter(
    "bus_redelivered", "Durable messages this process took back from workers that died.", ["channel"]
)
refused = Counter(
    "bus_refused",
    "Messages this process's workers refused before running them: unsigned, bad_signature, "
    "unknown_service, unknown_key, expired or forbidden.",
    ["channel", "reason"],
)
websockets_open = Gauge("bus_websockets_open", "WebSockets open on this web process.")
