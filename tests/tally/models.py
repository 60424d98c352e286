from django.db import models

from bus.models import AbstractProcessedMessage


class Counter(models.Model):
    name = models.CharField(primary_key=True, max_length=64)
    value = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


class Processed(AbstractProcessedMessage):
    """Commands the tally domain has applied (its inbox)."""
