"""Dead letters: commands and events that kept failing, kept durably instead of lost.

A `send` or a published event whose handler fails with an undeclared error is tried again with
exponential backoff (`@rpc(retries=...)`, `@subscribe(..., retries=...)`); after the last try it
is stored here with its envelope, error and traceback. `manage.py bus deadletters` lists, shows,
replays and purges them. Calls are not retried by the worker: they fail at once with RemoteError
and the caller decides. Declared errors (a business refusal) are not retried either.
"""

from __future__ import annotations

import random
from typing import Any

from django.utils import timezone

from .databases import alias_for
from .models import DeadLetter

# Seconds before the first retry; each next one waits twice as long, up to the cap.
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 60.0


def backoff(attempt: int) -> float:
    """Seconds to wait before try number `attempt + 1`: exponential, with jitter, capped."""
    return float(min(_FIRST_BACKOFF * 2 ** (attempt - 1), _MAX_BACKOFF) * random.uniform(0.8, 1.2))


def bury(channel: str, envelope: dict[str, Any], error: str, traceback: str, attempts: int) -> DeadLetter:
    """Keep a message that will not be tried again."""
    letter: DeadLetter = DeadLetter.objects.using(alias_for("bus", write=True)).create(
        message_id=envelope.get("id", ""),
        channel=channel,
        target=envelope.get("target", ""),
        envelope=envelope,
        error=error,
        traceback=traceback,
        attempts=attempts,
    )
    return letter


def waiting() -> list[DeadLetter]:
    """Dead letters not replayed yet, oldest first."""
    return list(
        DeadLetter.objects.using(alias_for("bus", write=False)).filter(replayed_at=None).order_by("id")
    )


def take_for_replay(letter_id: int) -> DeadLetter | None:
    """Mark a dead letter replayed and return it (None if unknown or already replayed)."""
    alias = alias_for("bus", write=True)
    taken = (
        DeadLetter.objects.using(alias)
        .filter(id=letter_id, replayed_at=None)
        .update(replayed_at=timezone.now())
    )
    letter: DeadLetter | None = DeadLetter.objects.using(alias).get(id=letter_id) if taken else None
    return letter


def fresh_attempt(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope to send again: same message id (receivers deduplicate), attempts from one."""
    return {**envelope, "headers": {**envelope.get("headers", {}), "attempt": 1}}
