"""The inbox: message ids a domain has processed, stored with the effects of processing them.

A domain declares a concrete model of `bus.models.AbstractProcessedMessage` in its own app, so
the table lives in its database and shares its transactions:

    class Processed(AbstractProcessedMessage): ...

    class PaymentsService(Service, contract=Payments, inbox=Processed): ...

With `inbox=`, the worker runs each durable command or event for a plain (sync) method inside one
transaction on the domain's database that first records the message id: a redelivery whose
effects committed (its worker died before acknowledging it) finds the id and is acknowledged
without running again, and one whose transaction did not commit runs as if for the first time.
Effects elsewhere (an e-mail, another domain, an HTTP call) are not covered: such a handler reads
`self.context.delivery` (1, 2, ...) and `self.context.redelivered` to decide. Coroutine methods
run without the inbox, at least once. Rows are deleted by `manage.py bus cleanup` after
BUS["RETENTION_SECONDS"].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from django.db import IntegrityError, models, transaction

from .databases import alias_for

__all__ = ["ALREADY_PROCESSED", "first_delivery", "once"]

#: What a handler run through `once` returns when its message was processed before.
ALREADY_PROCESSED: Final = object()


def first_delivery(model: type[models.Model], message_id: str) -> bool:
    """Record `message_id` as processed in the caller's transaction; False if it already was."""
    alias = alias_for(model._meta.app_label, write=True)
    try:
        with transaction.atomic(using=alias):
            model._default_manager.using(alias).create(message_id=message_id)
    except IntegrityError:
        return False
    return True


def once(handler: Callable[..., Any], inbox: type[models.Model], message_id: str) -> Callable[..., Any]:
    """`handler` in one transaction with its message's inbox row; `ALREADY_PROCESSED` instead
    of running it again when that row exists."""

    def run(**arguments: Any) -> Any:
        with transaction.atomic(using=alias_for(inbox._meta.app_label, write=True)):
            if not first_delivery(inbox, message_id):
                return ALREADY_PROCESSED
            return handler(**arguments)

    return run
