"""The operators' admin at /admin/: staff only, sign-in throttled like the shop's, each page showing
rows made by the real code paths, read from their own domain's database; replay, purge and the
read-only switch do what `manage.py bus` does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import caches
from django.db import transaction
from django.test import Client, RequestFactory, override_settings

from bus import deadletters, messages, modes
from bus.admin import RoutedAdmin
from bus.client import default_bus
from bus.databases import alias_for
from bus.models import DeadLetter
from bus.outbox import emit
from bus.testing import serving
from bus.threads import in_pool
from consumers.models import Event
from tests.conftest import read_records
from tests.echo.models import Processed
from tests.edge.conftest import Browser, sign_in
from tests.polling import apoll
from tests.workers.conftest import order_when, settled, stock_the_shop
from workers.orders import models as orders
from workers.orders.contract import OrderItem, Orders, OrderUpdated

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

PASSWORD = "operator-password-1"


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    caches["signin"].clear()
    yield
    caches["signin"].clear()


def _user(username: str, *, staff: bool) -> AbstractBaseUser:
    return get_user_model().objects.create_user(
        username=username, password=PASSWORD, is_staff=staff, is_superuser=staff
    )


class Operator:
    """Django's test client, each request in the bus's thread pool: the pool closes the request's
    database connections (AsyncClient's thread keeps them open, and PostgreSQL then cannot drop
    the test databases), and the view's sync bus calls still reach this test's event loop."""

    def __init__(self) -> None:
        self.client = Client()

    async def get(self, path: str, **extra: Any) -> Any:
        return await in_pool(self.client.get, path, **extra)

    async def post(self, path: str, data: dict[str, Any], **extra: Any) -> Any:
        return await in_pool(self.client.post, path, data, **extra)


async def client_for(username: str, *, staff: bool = True) -> Operator:
    operator = Operator()
    await in_pool(operator.client.force_login, await in_pool(_user, username, staff=staff))
    return operator


def rows(response: Any) -> list[Any]:
    """The rows of a change list page, as the admin read them."""
    assert response.status_code == 200, response.content[:500]
    return list(response.context["cl"].result_list)


def databases_of(found: list[Any]) -> set[str]:
    return {row._state.db for row in found}


def _bury_command(target: str, body: dict[str, Any], channel: str) -> DeadLetter:
    envelope = messages.envelope(messages.COMMAND, target, body)
    return deadletters.bury(channel, dict(envelope), "RuntimeError: boom", "Traceback ...", 3)


def _emit_waiting(order: OrderUpdated) -> None:
    with transaction.atomic(using=alias_for("orders", write=True)):
        emit(orders.Outbox, "orders.updated", **order.model_dump(mode="json"))


@pytest.fixture
async def history() -> AsyncIterator[dict[str, str]]:
    """A confirmed order with everything served, an order whose saga waits for payments (served
    no more), an outbox row the relay has not taken, a dead letter, and payments read-only."""
    async with serving("inventory", "payments", "orders", "presentation", "echo"):
        await stock_the_shop()
        done = await Orders.client().place(
            customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)], idempotency_key="done"
        )
        confirmed = await settled(done.order_id)
        assert confirmed.state == "confirmed", confirmed.reason
        echo_inbox = Processed.objects.using(alias_for("echo", write=False))
        await apoll(lambda: in_pool(echo_inbox.count), lambda n: n > 0, what="echo's inbox")
        await apoll(lambda: in_pool(Event.objects.count), lambda n: n > 0, what="the event log")
    async with serving("inventory", "orders"):
        stuck = await Orders.client().place(
            customer_id="ada", items=[OrderItem(sku="A-1", quantity=1)], idempotency_key="stuck"
        )
        await order_when(stuck.order_id, lambda order: "payments" in order.waiting, "to wait for payments")
    await in_pool(_emit_waiting, OrderUpdated(order=confirmed))
    letter = await in_pool(_bury_command, "echo.record", {"n": 7}, "echo")
    await in_pool(modes.set_read_only, "payments", True, "ledger migration")
    yield {"done": done.order_id, "stuck": stuck.order_id, "letter": str(letter.id)}


async def test_a_user_who_is_not_staff_is_refused() -> None:
    anonymous = await Operator().get("/admin/bus/deadletter/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    customer = await client_for("ada", staff=False)
    for page in ("/admin/", "/admin/bus/deadletter/", "/admin/orders/saga/", "/admin/bus/domainmode/"):
        refused = await customer.get(page)
        assert refused.status_code == 302 and refused["Location"].startswith("/admin/login/"), page


async def test_each_page_shows_real_rows_from_its_own_database(history: dict[str, str]) -> None:
    staff = await client_for("operator")
    index = await staff.get("/admin/")
    assert index.status_code == 200
    for page in ("bus/deadletter", "bus/domainmode", "orders/outbox", "inventory/outbox", "orders/saga"):
        assert f'href="/admin/{page}/"' in index.content.decode(), page

    letters = rows(await staff.get("/admin/bus/deadletter/"))
    assert [letter.id for letter in letters] == [int(history["letter"])]
    assert databases_of(letters) == {"default"}
    shown = await staff.get(f"/admin/bus/deadletter/{history['letter']}/change/")
    assert shown.status_code == 200 and b"echo.record" in shown.content and b"Traceback ..." in shown.content
    assert b'name="envelope"' not in shown.content, "the envelope is shown, not editable"

    modes_shown = rows(await staff.get("/admin/bus/domainmode/"))
    assert [(mode.domain, mode.read_only) for mode in modes_shown] == [("payments", True)]
    assert databases_of(modes_shown) == {"default"}

    outbox = rows(await staff.get("/admin/orders/outbox/"))
    assert databases_of(outbox) == {"orders"}
    assert len(outbox) > 1 and outbox[0].delivered_at is None, "the row waiting for the relay comes first"
    assert all(row.delivered_at is not None for row in outbox[1:])
    stock_events = rows(await staff.get("/admin/inventory/outbox/"))
    assert stock_events and databases_of(stock_events) == {"inventory"}
    assert {row.target for row in stock_events} == {"inventory.stock_changed"}

    sagas = rows(await staff.get("/admin/orders/saga/"))
    assert [saga.order_id for saga in sagas] == [history["stuck"], history["done"]], "open first"
    assert databases_of(sagas) == {"orders"}
    detail = await staff.get(f"/admin/orders/saga/{history['stuck']}/change/")
    assert detail.status_code == 200 and b"Waiting for payments" in detail.content

    inbox = rows(await staff.get("/admin/echo/processed/"))
    assert inbox and databases_of(inbox) == {"default"}, "the echo test domain has no database of its own"
    events = rows(await staff.get("/admin/presentation/event/"))
    assert events and databases_of(events) == {"default"}
    assert [event.id for event in events] == sorted((event.id for event in events), reverse=True)


async def test_replay_puts_the_letter_back_on_the_bus_and_purge_deletes(
    monkeypatch: pytest.MonkeyPatch, record_dir: Path
) -> None:
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    letter = await in_pool(_bury_command, "echo.record", {"n": 7}, "echo")
    staff = await client_for("operator")
    action = {"action": "replay", "_selected_action": [str(letter.id)]}
    replayed = await staff.post("/admin/bus/deadletter/", action, follow=True)
    assert f"Replayed 1 dead letter(s): {letter.id}." in replayed.content.decode()
    assert default_bus.durable
    depth = await default_bus.layer.durable_depth("echo")
    assert depth.waiting == 1, "queued durably, though no echo worker is alive"
    async with serving("echo"):
        handled = partial(in_pool, read_records, record_dir, "record")
        await apoll(handled, lambda done: done == ["7"], what="the replay handled")
    again = await staff.post("/admin/bus/deadletter/", action, follow=True)
    assert f"Replayed already: {letter.id}." in again.content.decode()
    assert (await default_bus.layer.durable_depth("echo")).waiting == 0

    purge = {"action": "delete_selected", "_selected_action": [str(letter.id)]}
    confirm = await staff.post("/admin/bus/deadletter/", purge)
    assert confirm.status_code == 200 and b"Are you sure" in confirm.content
    purged = await staff.post("/admin/bus/deadletter/", {**purge, "post": "yes"})
    assert purged.status_code == 302
    assert not await in_pool(DeadLetter.objects.using("default").filter(id=letter.id).exists)


async def test_the_read_only_switch_is_bus_modes() -> None:
    staff = await client_for("operator")
    unknown = await staff.post("/admin/bus/domainmode/add/", {"domain": "nowhere", "read_only": "on"})
    assert unknown.status_code == 200 and b"No service is named" in unknown.content
    added = await staff.post(
        "/admin/bus/domainmode/add/", {"domain": "payments", "read_only": "on", "reason": "ledger migration"}
    )
    assert added.status_code == 302
    assert await in_pool(modes.read_only_reason, "payments") == "ledger migration"
    switched = {"action": "switch_off", "_selected_action": ["payments"]}
    assert (await staff.post("/admin/bus/domainmode/", switched)).status_code == 302
    assert await in_pool(modes.read_only_reason, "payments") is None
    edit = {"read_only": "on", "reason": "again"}
    edited = await staff.post("/admin/bus/domainmode/payments/change/", edit)
    assert edited.status_code == 302
    assert await in_pool(modes.read_only_reason, "payments") == "again"


async def _admin_sign_in(browser: Browser, username: str, password: str, path: str) -> Any:
    token = browser.cookies.setdefault("csrftoken", "t" * 32)
    form = {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"}
    body = urlencode(form)
    return await browser.request(
        "POST", path, body.encode(), **{"content-type": "application/x-www-form-urlencoded"}
    )


@override_settings(SIGNIN_THROTTLE={"ACCOUNT": 3, "ADDRESS": 100, "WINDOW": 600})
async def test_the_admin_sign_in_is_throttled_with_the_shops_counters() -> None:
    await in_pool(_user, "operator", staff=True)
    fine = await _admin_sign_in(Browser(address="10.0.0.3"), "operator", PASSWORD, "/admin/login/")
    assert fine.status == 302 and fine.headers["location"] == "/admin/"
    # Two failures at the shop's sign-in and one at the admin's: the same counter.
    for path in ("/accounts/login/", "/accounts/login/", "/admin/login/"):
        failed = await _admin_sign_in(Browser(address="10.0.0.1"), "operator", "wrong", path)
        assert failed.status == 200, path
    refused = await _admin_sign_in(Browser(address="10.0.0.2"), "operator", PASSWORD, "/admin/login/")
    assert refused.status == 429 and 0 < int(refused.headers["retry-after"]) <= 600
    assert b"Too many failed sign-ins" in refused.body and b"django-distributed operations" in refused.body


def _served(path: str) -> int:
    response = Client().get(path)
    response.close()  # a file response holds its file open until closed
    return response.status_code


async def test_the_admin_works_under_the_content_security_policy() -> None:
    await in_pool(_user, "operator", staff=True)
    browser = await sign_in("operator")
    for page in ("/admin/", "/admin/bus/deadletter/", "/admin/bus/domainmode/add/"):
        shown = await browser.get(page)
        assert shown.status == 200, page
        assert shown.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in shown.headers["content-security-policy"]
        html = shown.body.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>\s*\S", html), f"inline script on {page}"
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert any(asset.endswith(".js") for asset in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:  # from WhiteNoise (through WSGI: ASGI warns about its file iterators)
            assert await in_pool(_served, asset) == 200, asset


def test_the_project_router_alone_routes_the_admins_queries() -> None:
    request = RequestFactory().get("/admin/orders/outbox/")
    plain = admin.ModelAdmin(orders.Outbox, admin.site)
    routed = RoutedAdmin(orders.Outbox, admin.site)
    assert plain.get_queryset(request).db == routed.get_queryset(request).db == "orders"
    with override_settings(DATABASE_ROUTERS=[]):
        assert plain.get_queryset(request).db == "default", "without the router, Django's default"
        assert routed.get_queryset(request).db == "orders", "the routed base names the alias itself"
