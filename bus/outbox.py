"""The transactional outbox: events written with the change they announce, delivered until acknowledged.

A domain declares a concrete model from the abstract one here, so it lives in its own database
and shares its transactions:

    class Outbox(AbstractOutboxMessage): ...

    with transaction.atomic(using=alias):
        order.save(...)
        emit(Outbox, "orders.updated", **snapshot)     # same transaction: both or neither

`relay(Outbox)` (run it from an `@every(seconds, woken_by=bus.wakeups.OUTBOX)` method, which
then also runs as soon as an emitting transaction commits in this process) hands each event to
the bus's at-least-once delivery: it is queued on the durable channel of every domain that
subscribes to it (bus.Client.adeliver), and from there the bus delivers it like any durable
event, with retries and dead letters. Only putting the row on the bus is the relay's job: a row
Redis did not take is tried again with backoff (settings.BUS["RETRY_BACKOFF"]). Each row keeps
its message id on every attempt, and subscribers deduplicate by it (an inbox, bus/inbox.py),
since a relay that dies between queueing and recording will queue again.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, TypeVar

from django.db import models, transaction
from django.utils import timezone

from . import context, messages, wakeups
from .client import Bus, default_bus
from .conf import backoff_setting
from .databases import alias_for
from .exceptions import BusError
from .services import subscribers
from .targets import lookup_event
from .threads import in_pool, run_sync

logger = logging.getLogger(__name__)

OutboxT = TypeVar("OutboxT", bound="AbstractOutboxMessage")

# Seconds a relay holds the rows it is delivering, so relays in other workers skip them.
_CLAIM_SECONDS = 30.0


class AbstractOutboxMessage(models.Model):
    """An event waiting to be delivered to the domains that subscribe to it."""

    # `manage.py bus cleanup` deletes rows whose field is older than BUS["RETENTION_SECONDS"].
    bus_retention_field = "delivered_at"

    id = models.CharField(primary_key=True, max_length=32)
    target = models.CharField(max_length=200)
    body = models.JSONField()
    correlation_id = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.target} {self.id}"


def emit(model: type[OutboxT], target: str, /, **payload: Any) -> OutboxT:
    """Write event `target` to the outbox; call it inside the transaction of the change it announces."""
    event = lookup_event(target)
    handling = context.current()
    message_id = messages.new_id()
    alias = alias_for(model._meta.app_label, write=True)
    row: OutboxT = model._default_manager.using(alias).create(
        id=message_id,
        target=event.target,
        body=event.validate(payload),
        correlation_id=handling.correlation_id if handling else message_id,
    )
    transaction.on_commit(lambda: wakeups.wake(wakeups.OUTBOX), using=alias)
    return row


def _claim(model: type[OutboxT], batch: int) -> list[OutboxT]:
    """Take due rows for this relay: a conditional update per row, so no two relays share one."""
    alias = alias_for(model._meta.app_label, write=True)
    now = timezone.now()
    rows = (
        model._default_manager.using(alias)
        .filter(delivered_at=None, next_attempt_at__lte=now)
        .order_by("created_at")
    )
    claimed = []
    for row in rows[:batch]:
        hold = now + datetime.timedelta(seconds=_CLAIM_SECONDS)
        taken = (
            model._default_manager.using(alias)
            .filter(pk=row.pk, next_attempt_at=row.next_attempt_at)
            .update(next_attempt_at=hold)
        )
        if taken:
            claimed.append(row)
    return claimed


def _record(row: AbstractOutboxMessage, error: str) -> None:
    row.attempts += 1
    now = timezone.now()
    if error:
        wait = backoff_setting("RETRY_BACKOFF").delay(row.attempts)
        row.next_attempt_at = now + datetime.timedelta(seconds=wait)
        row.last_error = error
    else:
        row.delivered_at = now
        row.last_error = ""
    row.save(update_fields=["attempts", "next_attempt_at", "delivered_at", "last_error"])


async def arelay(model: type[AbstractOutboxMessage], *, batch: int = 100, bus: Bus | None = None) -> int:
    """Queue due outbox rows for their subscribers; returns how many are on the bus now."""
    via = bus or default_bus
    rows = await in_pool(_claim, model, batch)
    delivered = 0
    for row in rows:
        try:
            await via.adeliver(
                row.target,
                row.body,
                message_id=row.id,
                correlation_id=row.correlation_id,
                subscribers=subscribers(row.target),
            )
        except Exception as exc:
            if not isinstance(exc, BusError):
                logger.error("Relaying %s %s failed unexpectedly: %r", row.target, row.id, exc)
            await in_pool(_record, row, f"{type(exc).__name__}: {exc}")
        else:
            await in_pool(_record, row, "")
            delivered += 1
    return delivered


def relay(model: type[AbstractOutboxMessage], *, batch: int = 100) -> int:
    """The sync twin of `arelay`, for `@every` methods that are plain functions."""
    result: int = run_sync(arelay, model, batch=batch)
    return result


def purge(model: type[models.Model], field: str, older_than: datetime.timedelta) -> int:
    """Delete rows of `model` whose `field` is older than the retention period; returns the count."""
    alias = alias_for(model._meta.app_label, write=True)
    cutoff = timezone.now() - older_than
    deleted, _ = model._default_manager.using(alias).filter(**{f"{field}__lt": cutoff}).delete()
    return int(deleted)
