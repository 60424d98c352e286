"""The JSON API through the whole ASGI application: answers, and every error as problem details."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.modes import set_read_only
from bus.testing import serving
from bus.threads import in_pool
from tests.edge.conftest import Browser, Response, sign_in
from tests.polling import apoll
from workers.orders.contract import TERMINAL_STATES

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

ORDER = {"items": [{"sku": "A-1", "quantity": 2}]}


def assert_problem(response: Response, status: int, detail: str) -> dict[str, object]:
    assert response.status == status, response.body
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status and detail in str(body["detail"]), body
    return body


async def settled(browser: Browser, order_id: str) -> dict[str, object]:
    """The order as its customer reads it, once its saga has ended."""
    answer = await apoll(
        lambda: browser.get(f"/api/orders/{order_id}"),
        lambda response: response.json()["state"] in TERMINAL_STATES,
        what=f"order {order_id} to settle",
    )
    order: dict[str, object] = answer.json()
    return order


async def test_products_and_one_product_with_its_stock(in_process_shop: None) -> None:
    listing = (await Browser().get("/api/products")).json()
    assert [p["sku"] for p in listing["products"]] == ["A-1", "B-2"]
    assert listing["stale"] is False
    one = await Browser().get("/api/products/A-1")
    assert one.json()["available"] == 5
    assert_problem(await Browser().get("/api/products/NOPE"), 404, "No product has SKU 'NOPE'")


async def test_placing_an_order_returns_202_and_the_saga_confirms_it(in_process_shop: None) -> None:
    ada = await sign_in("ada")
    placed = await ada.post_json("/api/orders", ORDER, key="k-1")
    assert placed.status == 202
    order = placed.json()
    assert order["state"] == "pending" and order["customer_id"] == "ada" and order["total_cents"] == 2_000
    assert placed.headers["location"] == f"/api/orders/{order['order_id']}"
    assert (await settled(ada, order["order_id"]))["state"] == "confirmed"
    retried = await ada.post_json("/api/orders", ORDER, key="k-1")
    assert (retried.status, retried.json()["order_id"]) == (202, order["order_id"]), (
        "a retry returns the same order"
    )
    assert_problem(
        await ada.post_json("/api/orders", {"items": [{"sku": "B-2", "quantity": 1}]}, key="k-1"),
        409,
        "Idempotency key 'k-1' was used for order",
    )


async def test_order_requests_are_checked_and_each_mistake_is_named(in_process_shop: None) -> None:
    assert_problem(
        await Browser().post_json("/api/orders", ORDER, key="k"), 401, "sign in at /accounts/login/"
    )
    ada = await sign_in("ada")
    assert_problem(await ada.post_json("/api/orders", ORDER, key="k", csrf=False), 403, "X-CSRFToken header")
    body = assert_problem(await ada.post_json("/api/orders", ORDER), 400, "Send an Idempotency-Key header")
    assert body["errors"] == [{"field": "Idempotency-Key", "message": "required"}]
    assert_problem(
        await ada.post_json("/api/orders", b"{not json", key="k"), 400, "The body is not valid JSON"
    )
    assert_problem(
        await ada.post_json("/api/orders", {"lines": []}, key="k"), 400, 'exactly one member, "items"'
    )
    body = assert_problem(
        await ada.post_json("/api/orders", {"items": [{"sku": "A-1", "quantity": "2"}]}, key="k"),
        400,
        "items.0.quantity: Input should be a valid integer",
    )
    assert body["errors"] == [{"field": "items.0.quantity", "message": "Input should be a valid integer"}]
    assert_problem(
        await ada.post_json("/api/orders", {"items": [{"sku": "ZZZ", "quantity": 1}]}, key="k"),
        400,
        "No product has SKU 'ZZZ'",
    )
    assert_problem(await ada.post_json("/api/orders", b"[" * 70_000, key="k"), 413, "over 65536 bytes")


async def test_customers_see_only_their_own_orders(in_process_shop: None) -> None:
    ada, bob = await sign_in("ada"), await sign_in("bob")
    order = (await ada.post_json("/api/orders", ORDER, key="k")).json()
    assert (await ada.get(f"/api/orders/{order['order_id']}")).status == 200
    assert_problem(await bob.get(f"/api/orders/{order['order_id']}"), 404, "No order has id")
    assert_problem(await ada.get("/api/orders/0000000000000ffff"), 404, "No order has id")
    assert_problem(await Browser().get(f"/api/orders/{order['order_id']}"), 401, "sign in at")
    page = (await ada.get("/api/customers/ada/orders?limit=1")).json()
    assert [o["order_id"] for o in page["orders"]] == [order["order_id"]] and page["next_cursor"] == ""
    assert_problem(await bob.get("/api/customers/ada/orders"), 403, "only their own orders")
    assert_problem(await ada.get("/api/customers/ada/orders?limit=x"), 400, "limit must be a whole number")


async def test_events_since_a_cursor_are_the_pages_polling_fallback(in_process_shop: None) -> None:
    ada, bob = await sign_in("ada"), await sign_in("bob")
    head = (await ada.get("/api/events")).json()["cursor"]
    order = (await ada.post_json("/api/orders", ORDER, key="k")).json()
    await settled(ada, order["order_id"])

    async def events_since_head() -> dict[str, Any]:
        events: dict[str, Any] = (await ada.get(f"/api/events?since={head}")).json()
        return events

    def kinds(seen: dict[str, Any]) -> list[tuple[str, object]]:
        return [(e["kind"], e["data"].get("state")) for e in seen["events"]]

    # The outboxes relay, the presentation worker logs: the confirmation is the last to come.
    seen = await apoll(
        events_since_head,
        lambda seen: ("orders.updated", "confirmed") in kinds(seen),
        what="the order's confirmation in the event log",
    )
    assert ("inventory.stock_changed", None) in kinds(seen)
    assert seen["cursor"] == seen["events"][-1]["cursor"]
    others = (await bob.get(f"/api/events?since={head}")).json()["events"]
    assert others and all(e["kind"] == "inventory.stock_changed" for e in others), (
        "private topics stay private"
    )
    assert (await ada.get(f"/api/events?since={seen['cursor']}")).json()["events"] == []
    assert_problem(await ada.get("/api/events?since=otherepoch:3"), 410, "is not from this log")


async def test_unavailable_domains_are_503_with_retry_after_and_late_answers_504(
    in_process_shop: None, settings: object
) -> None:
    ada = await sign_in("ada")
    settings.BUS = {"MODE_CACHE_SECONDS": 0.01}  # type: ignore[attr-defined]
    await in_pool(set_read_only, "orders", True, "maintenance")
    await asyncio.sleep(0.05)
    response = await ada.post_json("/api/orders", ORDER, key="k")
    assert_problem(response, 503, "orders is in read-only mode (maintenance)")
    assert response.headers["retry-after"] == "30"
    await in_pool(set_read_only, "orders", False)
    settings.BUS = {"TIMEOUT": 0.0001}  # type: ignore[attr-defined]
    assert_problem(await ada.get("/api/customers/ada/orders"), 504, "did not answer within")


async def test_stale_stock_is_served_when_inventory_is_down_and_503_when_nothing_is_known(
    settings: object,
) -> None:
    settings.EDGE_STOCK_TTL = 0.01  # type: ignore[attr-defined]
    async with serving("inventory"):
        from workers.inventory.contract import Inventory

        await Inventory.client().add_product(sku="A-1", name="Anvil", price_cents=1_000)
        assert (await Browser().get("/api/products")).json()["stale"] is False
    # Past EDGE_STOCK_TTL the edge asks inventory again, finds it gone, and serves what it knew.
    answer = await apoll(
        lambda: Browser().get("/api/products"),
        lambda response: response.json()["stale"],
        what="the listing served stale",
    )
    listing = answer.json()
    assert listing["products"][0]["sku"] == "A-1"
    response = await Browser().get("/api/products/NEVER")
    assert_problem(response, 503, "No worker serves 'inventory'")
    assert response.headers["retry-after"] == "5"


async def test_health_and_readiness(in_process_shop: None) -> None:
    assert (await Browser().get("/healthz")).json() == {"status": "ok"}
    ready = await Browser().get("/readyz")
    assert ready.status == 200, ready.body
    assert ready.json()["domains"]["orders"] == 1


async def test_readiness_names_the_domains_without_workers_and_what_can_start_them() -> None:
    async with serving("inventory"):
        body = assert_problem(await Browser().get("/readyz"), 503, "No worker serves echo, orders, ")
    assert body["missing"] == ["echo", "orders", "payments", "presentation", "tally"]
    # runserver, or daphne alone, on the in-memory layer: a runworker elsewhere cannot help.
    detail = str(body["detail"])
    assert "The channel layer is in memory (REDIS_URL is not set)" in detail
    assert "serve the site with `manage.py up`" in detail
    assert "or set REDIS_URL for every process and start `manage.py runworker echo orders " in detail


async def test_customers_see_their_own_balance_as_payments_has_it(in_process_shop: None) -> None:
    ada = await sign_in("ada")
    assert (await ada.get("/api/customers/ada/balance")).json() == {
        "customer_id": "ada",
        "balance_cents": 100_000,
    }
    order = (await ada.post_json("/api/orders", ORDER, key="k")).json()
    await settled(ada, order["order_id"])
    assert (await ada.get("/api/customers/ada/balance")).json()["balance_cents"] == 100_000 - 2_000
    assert_problem(await (await sign_in("bob")).get("/api/customers/ada/balance"), 403, "their own balance")
    assert_problem(await Browser().get("/api/customers/ada/balance"), 401, "sign in at")
    carol = await sign_in("carol")
    assert_problem(await carol.get("/api/customers/carol/balance"), 404, "'carol' has no account")


async def test_metrics_count_calls_and_handling_for_allowed_readers_only(
    in_process_shop: None, settings: object
) -> None:
    ada = await sign_in("ada")
    order = (await ada.post_json("/api/orders", ORDER, key="k")).json()
    await settled(ada, order["order_id"])
    scraped = await Browser().get("/metrics")
    assert scraped.status == 200 and scraped.headers["content-type"].startswith("text/plain")
    text = scraped.body.decode()
    assert 'bus_calls_total{outcome="ok",target="orders.place"}' in text
    assert 'bus_messages_total{outcome="ok",target="payments.charge",type="bus.request"}' in text
    assert 'bus_call_duration_seconds_bucket{le="0.1",target="inventory.reserve"}' in text
    assert "bus_worker_in_flight{" in text and "bus_queue_depth{" in text
    assert "bus_websockets_open" in text
    outsider = Browser(address="10.1.2.3")
    denied = await outsider.get("/metrics")
    assert denied.status == 403 and b"METRICS_ALLOWED_NETWORKS" in denied.body
    settings.BUS = {"METRICS_TOKEN": "s3cret"}  # type: ignore[attr-defined]
    assert (await outsider.request("GET", "/metrics", authorization="Bearer s3cret")).status == 200
    assert (await outsider.request("GET", "/metrics", authorization="Bearer wrong")).status == 403
