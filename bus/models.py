"""The bus's own durable state, in the "default" database: the control plane, not a domain's data;
and the abstract inbox model a domain makes its own table from (bus/inbox.py)."""

from django.db import models
from django.utils import timezone


class DomainMode(models.Model):
    """A domain's operating mode; read-only refuses its write methods while reads go on."""

    domain = models.CharField(primary_key=True, max_length=64)
    read_only = models.BooleanField(default=False)
    reason = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.domain}: {'read-only' if self.read_only else 'read-write'}"


class DeadLetter(models.Model):
    """A command or event whose handler kept failing: kept with its error, to read and replay."""

    message_id = models.CharField(max_length=32, db_index=True)
    channel = models.CharField(max_length=100)
    target = models.CharField(max_length=200)
    envelope = models.JSONField()
    error = models.TextField()
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    replayed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.target} {self.message_id}: {self.error[:60]}"


class AbstractProcessedMessage(models.Model):
    """A message id a domain has processed (bus/inbox.py): deliveries after the first are skipped."""

    # `manage.py bus cleanup` deletes rows whose field is older than BUS["RETENTION_SECONDS"].
    bus_retention_field = "processed_at"

    message_id = models.CharField(primary_key=True, max_length=32)
    processed_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.message_id
