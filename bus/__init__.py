"""A service bus on the Django Channels channel layer.

import bus
bus.call("inventory.stock", sku="A-1")
await bus.acall("inventory.reserve", order_id="o-1", sku="A-1", quantity=2)
"""

from .client import Bus, default_bus
from .contracts import Contract, Delivery, Event, Schema, rpc
from .exceptions import (
    BadMessage,
    BrokerUnreachable,
    BusError,
    ChannelFull,
    ContractError,
    DeadlineExceeded,
    Forbidden,
    InvalidResult,
    MessageTooLarge,
    NoWorker,
    ReadOnly,
    RemoteError,
    Unauthenticated,
    Unavailable,
    UnknownTarget,
    ValidationError,
)
from .services import Service, every, subscribe

call = default_bus.call
acall = default_bus.acall
send = default_bus.send
asend = default_bus.asend
publish = default_bus.publish
apublish = default_bus.apublish

__all__ = [
    "BadMessage",
    "BrokerUnreachable",
    "Bus",
    "BusError",
    "ChannelFull",
    "Contract",
    "ContractError",
    "DeadlineExceeded",
    "Delivery",
    "Event",
    "Forbidden",
    "InvalidResult",
    "MessageTooLarge",
    "NoWorker",
    "ReadOnly",
    "RemoteError",
    "Schema",
    "Service",
    "Unauthenticated",
    "Unavailable",
    "UnknownTarget",
    "ValidationError",
    "acall",
    "apublish",
    "asend",
    "call",
    "every",
    "publish",
    "rpc",
    "send",
    "subscribe",
]
