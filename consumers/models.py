"""The presentation side's own data (default database): the event log that pages resume from."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Epoch(models.Model):
    """The log's identity: a cursor from another epoch (a reset log) cannot be resumed."""

    id = models.CharField(primary_key=True, max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    # Events up to this offset were cleaned up: cursors before it cannot be resumed.
    purged_through = models.BigIntegerField(default=0)
    # There is one epoch: two processes creating the first one at once cannot both succeed.
    singleton = models.BooleanField(default=True, unique=True, editable=False)

    def __str__(self) -> str:
        return self.id


class Event(models.Model):
    """One event a page may show; `id` is the offset, increasing, kept across restarts."""

    id = models.BigAutoField(primary_key=True)
    message_id = models.CharField(max_length=32, unique=True)  # the bus message: delivered once here
    topic = models.CharField(max_length=100, db_index=True)
    kind = models.CharField(max_length=100)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.id} {self.kind} on {self.topic}"
