"""The event log: what browsers missed while their socket was down, by cursor "epoch:offset".

Domain events reach the presentation worker once each (the outboxes re-send until it
acknowledges, and it deduplicates by message id); it appends them here, then pushes them to the
sockets of their topic. A page that reconnects, or polls /api/events, asks for everything after
its cursor; a cursor from another epoch, or older than what the log still holds, is "gone" and
the page reloads its state over HTTP instead.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from bus.databases import alias_for

from .models import Epoch, Event

STOCK = "stock"


def orders_topic(customer_id: str) -> str:
    """A customer's private topic: only that signed-in customer may follow it."""
    return f"orders:{customer_id}"


def group_for(topic: str) -> str:
    """The Channels group of a topic's sockets (group names allow only a few characters)."""
    return "ws." + hashlib.sha256(topic.encode()).hexdigest()[:32]


_OFFSET = re.compile(r"[0-9]{1,18}")


def parse_cursor(cursor: str) -> tuple[str, int] | None:
    """(epoch, offset) of a cursor "epoch:offset", or None when it is not one (ASCII digits only)."""
    epoch_id, _, offset = cursor.partition(":")
    return (epoch_id, int(offset)) if _OFFSET.fullmatch(offset) else None


class CursorGone(Exception):
    """The cursor cannot be resumed: another epoch, or older than the log keeps."""


@dataclass(frozen=True)
class Entry:
    cursor: str
    topic: str
    kind: str
    data: dict[str, Any]

    def as_message(self) -> dict[str, Any]:
        return {
            "type": "event",
            "cursor": self.cursor,
            "topic": self.topic,
            "kind": self.kind,
            "data": self.data,
        }


def _epoch() -> Epoch:
    alias = alias_for("presentation", write=True)
    current = Epoch.objects.using(alias).first()
    if current is None:
        try:
            with transaction.atomic(using=alias):
                current = Epoch.objects.using(alias).create(id=secrets.token_hex(4))
        except IntegrityError:  # another process created it first: that one is the epoch
            current = Epoch.objects.using(alias).get()
    return current


def epoch() -> str:
    """This log's epoch, created on first use."""
    return _epoch().id


def append(message_id: str, topic: str, kind: str, data: dict[str, Any]) -> Entry | None:
    """Add an event once per bus message; None if this message was logged before."""
    alias = alias_for("presentation", write=True)
    try:
        with transaction.atomic(using=alias):
            event = Event.objects.using(alias).create(
                message_id=message_id, topic=topic, kind=kind, data=data
            )
    except IntegrityError:
        return None
    return Entry(f"{epoch()}:{event.id}", topic, kind, data)


def head() -> str:
    """The cursor of the newest event: where a page that just loaded its state starts."""
    alias = alias_for("presentation", write=True)
    last = Event.objects.using(alias).order_by("-id").values_list("id", flat=True).first()
    return f"{epoch()}:{last or 0}"


def since(cursor: str, topics: list[str], limit: int = 500) -> list[Entry]:
    """Events on `topics` after `cursor`, oldest first; CursorGone when it cannot be resumed."""
    current = _epoch()
    parsed = parse_cursor(cursor)
    if parsed is None or parsed[0] != current.id:
        raise CursorGone(
            f"Cursor {cursor[:80]!r} is not from this log (epoch {current.id}); reload the page's state."
        )
    offset = parsed[1]
    if offset < current.purged_through:
        raise CursorGone(f"Events after {cursor} were already cleaned up; reload the page's state.")
    alias = alias_for("presentation", write=True)
    rows = Event.objects.using(alias).filter(id__gt=offset, topic__in=topics).order_by("id")[:limit]
    return [Entry(f"{current.id}:{row.id}", row.topic, row.kind, row.data) for row in rows]


def purge(older_than: datetime.timedelta) -> int:
    """Delete events older than the retention, remembering how far, so old cursors get "gone"."""
    alias = alias_for("presentation", write=True)
    with transaction.atomic(using=alias):
        old = Event.objects.using(alias).filter(created_at__lt=timezone.now() - older_than)
        newest = old.order_by("-id").values_list("id", flat=True).first()
        if newest is None:
            return 0
        deleted, _ = Event.objects.using(alias).filter(id__lte=newest).delete()
        Epoch.objects.using(alias).filter(id=_epoch().id).update(purged_through=newest)
    return int(deleted)
