"""What the current code is handling: the message, its correlation id and its deadline.

Context variables (not thread locals) so the values follow a message through asyncio tasks and
into the threads `sync_to_async` runs handlers in. Calls made while handling a message inherit
its correlation id and never outlive its deadline.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MessageContext:
    """The message being handled, as code that serves it may need to see it."""

    message_id: str
    correlation_id: str
    target: str
    deadline: float | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    #: Its delivery number: 1, plus one for each worker that died holding it (durable messages).
    delivery: int = 1

    @property
    def redelivered(self) -> bool:
        """Whether a worker died holding this message before: its effects may have happened."""
        return self.delivery > 1


_current: ContextVar[MessageContext | None] = ContextVar("bus_message", default=None)


def current() -> MessageContext | None:
    """The message being handled here, or None outside a handler."""
    return _current.get()


class handling:  # noqa: N801 - used like contextlib's lower-case context managers
    """Mark a block as handling `context`'s message (a class: it runs for every message)."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: MessageContext) -> None:
        self._context = context

    def __enter__(self) -> MessageContext:
        self._token = _current.set(self._context)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


class MessageContextFilter(logging.Filter):
    """Adds `message_id` and `correlation_id` to every log record ('-' outside a message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if not hasattr(record, "message_id"):
            record.message_id = context.message_id if context else "-"
        if not hasattr(record, "correlation_id"):
            record.correlation_id = context.correlation_id if context else "-"
        return True
