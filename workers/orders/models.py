"""Orders, their saga steps and saga runs, and the outbox that announces changes (orders DB)."""

from __future__ import annotations

import os
import time

from django.db import models
from django.utils import timezone

from bus.outbox import AbstractOutboxMessage
from workers.vocabulary import choices

from .contract import OrderState, StepName


def new_order_id() -> str:
    """Sortable by creation time (milliseconds first), so ids double as page cursors."""
    return f"{int(time.time() * 1000):013d}{os.urandom(5).hex()}"


class Order(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_order_id)
    customer_id = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=100)
    fingerprint = models.CharField(max_length=64)
    lines = models.JSONField()
    total_cents = models.BigIntegerField()
    state = models.CharField(max_length=16, choices=choices(OrderState), default=OrderState.PENDING.value)
    reason = models.CharField(max_length=300, blank=True)
    # What the saga waits for while a domain is away or read-only; cleared at its next step.
    waiting = models.CharField(max_length=300, blank=True)
    # The request that placed it: the saga's calls carry it, whichever worker runs them.
    correlation_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer_id", "idempotency_key"], name="one_order_per_idempotency_key"
            )
        ]
        indexes = [models.Index(fields=["customer_id", "-id"])]

    def __str__(self) -> str:
        return f"order {self.id}: {self.state}"


class Step(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=16, choices=choices(StepName))
    at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"{self.order_id}: {self.name}"


class Saga(models.Model):
    """The checkout run of one order: who holds it, when to try again; purged once finished."""

    bus_retention_field = "finished_at"

    order = models.OneToOneField(Order, on_delete=models.CASCADE, primary_key=True, related_name="saga")
    lease_until = models.DateTimeField(null=True, blank=True)
    # The claim of the runner holding the lease: each of its writes checks it is still its own.
    token = models.CharField(max_length=16, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)

    def __str__(self) -> str:
        return f"saga of {self.order_id}"


class Outbox(AbstractOutboxMessage):
    """orders.updated events, written in the transaction of the change they announce."""
