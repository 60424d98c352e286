"""Management commands that keep the system tidy: seed (idempotent) and bus cleanup (retention)."""

from __future__ import annotations

import datetime
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from tests.echo.models import Processed
from workers.inventory import models as inventory_models
from workers.orders import models as orders_models
from workers.payments import models as payments_models

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]


def snapshot() -> tuple[list[tuple[str, int, int]], list[tuple[str, int]], int]:
    stock = list(
        inventory_models.Product.objects.values_list("sku", "on_hand", "price_cents").order_by("sku")
    )
    balances = list(
        payments_models.Account.objects.values_list("customer_id", "balance_cents").order_by("customer_id")
    )
    return stock, balances, get_user_model().objects.count()


def test_seed_gives_something_to_click_on_and_running_it_again_changes_nothing() -> None:
    out = io.StringIO()
    call_command("seed", stdout=out, verbosity=0)  # as `up` runs it on every start
    first = snapshot()
    assert len(first[0]) == 6 and len(first[1]) == 3 and first[2] == 3
    assert out.getvalue().splitlines() == [
        "Seeded 6 product(s) and 3 customer(s).",
        "Demo logins (username / password, opening balance):",
        "  ada / ada-demo-1815   500.00",
        "  grace / grace-demo-1906   200.00",
        "  linus / linus-demo-1969   10.00",
    ]
    again = io.StringIO()
    call_command("seed", stdout=again, verbosity=0)
    assert again.getvalue() == "", "nothing ran, nothing to say at verbosity 0"
    call_command("seed", stdout=again)
    assert again.getvalue() == (
        "Demo data already seeded; nothing changed (`manage.py seed --help` lists the logins).\n"
    )
    assert snapshot() == first
    assert get_user_model().objects.get(username="ada").check_password("ada-demo-1815")


def test_cleanup_deletes_only_what_is_finished_and_older_than_the_retention() -> None:
    old = timezone.now() - datetime.timedelta(hours=2)
    order = orders_models.Order.objects.create(
        customer_id="ada", idempotency_key="k", fingerprint="f", lines=[], total_cents=0
    )
    orders_models.Saga.objects.create(order=order, finished_at=old)
    fresh_order = orders_models.Order.objects.create(
        customer_id="ada", idempotency_key="k2", fingerprint="f", lines=[], total_cents=0
    )
    orders_models.Saga.objects.create(order=fresh_order)  # still running: never purged
    for message_id, delivered_at in (("a" * 32, old), ("b" * 32, timezone.now()), ("c" * 32, None)):
        orders_models.Outbox.objects.create(
            id=message_id,
            target="orders.updated",
            body={},
            correlation_id=message_id,
            delivered_at=delivered_at,
        )
    Processed.objects.create(message_id="d" * 32, processed_at=old)
    Processed.objects.create(message_id="e" * 32)
    out = io.StringIO()
    call_command("bus", "cleanup", "--older-than", "3600", stdout=out)
    assert list(orders_models.Saga.objects.values_list("order_id", flat=True)) == [fresh_order.id]
    assert sorted(orders_models.Outbox.objects.values_list("id", flat=True)) == ["b" * 32, "c" * 32]
    assert list(Processed.objects.values_list("message_id", flat=True)) == ["e" * 32]
    assert orders_models.Order.objects.count() == 2, "orders themselves are business records"
    assert "orders.Saga: deleted 1 row(s) older than 3600 s" in out.getvalue()
