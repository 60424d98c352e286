"""The shop page in headless Chromium against real processes: the three journeys of the issue.

1. An order placed on the page reaches `confirmed` on the page, live, and stock drops with it.
2. The server kills the socket (a short lifetime: 4000; then daphne SIGKILLed and restarted):
   the page comes back live and shows every event that happened meanwhile.
3. With the inventory worker dead, a reload shows the last stock marked stale, and nothing breaks.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

import bus
from tests.browser.conftest import Shop, Tab, in_thread, sign_in
from tests.conftest import presence
from tests.polling import apoll

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.timeout(120)]

# What `manage.py seed` stocks.
SEEDED = {"ANVIL-1": 20, "BELLOWS-2": 12, "TONGS-3": 30, "HAMMER-4": 25, "APRON-5": 15, "QUENCH-6": 3}
CARDS = "[data-testid^='product-']"
ORDER_ROWS = "[data-testid^='order-']"


def card(page: Page, sku: str) -> Locator:
    return page.get_by_test_id(f"product-{sku}")


async def wait_live(page: Page, timeout: float = 30_000) -> None:
    await expect(page.get_by_test_id("socket-state")).to_have_attribute("data-state", "live", timeout=timeout)


async def shop_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("() => ({...window.shopState})")
    return state


async def cards(page: Page) -> dict[str, dict[str, str]]:
    """Every product card's data attributes, by SKU."""
    found: dict[str, dict[str, str]] = await page.eval_on_selector_all(
        CARDS, "els => Object.fromEntries(els.map(el => [el.dataset.sku, {...el.dataset}]))"
    )
    return found


def is_event_poll(url: str) -> bool:
    """The page's catch-up polls, `GET /api/events?since=CURSOR`, used while its socket is down."""
    return "/api/events?since=" in url


async def session_cookie(page: Page) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in await page.context.cookies())


async def test_an_order_placed_on_the_page_reaches_confirmed_without_a_reload(
    shop_processes: Shop, tab: Tab
) -> None:
    page = tab.page
    await sign_in(page, "ada")
    shown = await page.reload()
    assert shown is not None and shown.headers["x-frame-options"] == "DENY"
    assert "script-src 'self';" in shown.headers["content-security-policy"]
    await wait_live(page)
    anvil = card(page, "ANVIL-1")
    await expect(anvil).to_have_attribute("data-available", str(SEEDED["ANVIL-1"]))
    await expect(page.get_by_test_id("balance")).to_have_text("500.00")
    await page.evaluate("() => { window.__sameDocument = true; }")

    await page.get_by_test_id("add-ANVIL-1").click()
    await expect(page.get_by_test_id("cart").locator(".cart-line")).to_have_count(1)
    await expect(page.get_by_test_id("place-order")).to_be_enabled()
    await page.get_by_test_id("place-order").click()

    rows = page.locator(ORDER_ROWS)
    await expect(rows).to_have_count(1)
    order_id = (await rows.get_attribute("data-testid") or "").removeprefix("order-")
    await expect(rows).to_have_attribute("data-state", "confirmed", timeout=30_000)
    await expect(anvil).to_have_attribute("data-available", str(SEEDED["ANVIL-1"] - 1))
    await expect(page.get_by_test_id("alert")).to_be_hidden()
    assert await page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
    await expect(page.get_by_test_id("cart").locator(".cart-line")).to_have_count(0)
    await expect(page.get_by_test_id("balance")).to_have_text("371.00")  # the anvil's 129.00 charged

    # The server tells the same story.
    status, order = await in_thread(
        shop_processes.get, f"/api/orders/{order_id}", cookie=await session_cookie(page)
    )
    assert status == 200, order
    assert order["state"] == "confirmed"
    assert [step["name"] for step in order["steps"]] == ["placed", "reserved", "charged", "confirmed"]

    await apoll(
        lambda: in_thread(shop_processes.get, "/api/products/ANVIL-1"),
        lambda answer: answer[1]["available"] == SEEDED["ANVIL-1"] - 1,
        what="GET /api/products/ANVIL-1 to show the order's stock",
    )
    assert tab.errors == []
    # All of it (the sign-in form, the script, the styles, the socket) under the page's own policy.
    assert tab.violations == []
    assert not [line for line in tab.console if "Content Security Policy" in line], tab.console


SHORT_LIFETIME = {"EDGE_TEST_WEBSOCKET": json.dumps({"LIFETIME": 3, "LIFETIME_JITTER": 0})}


@pytest.mark.parametrize("edge", [SHORT_LIFETIME], indirect=True, ids=["lifetime-3s"])
async def test_a_socket_the_server_kills_comes_back_live_and_no_event_is_lost(
    shop_processes: Shop, tab: Tab
) -> None:
    page = tab.page
    await sign_in(page, "ada")
    await wait_live(page)
    await expect(card(page, "TONGS-3")).to_have_attribute("data-available", str(SEEDED["TONGS-3"]))
    first = await shop_state(page)

    # 1. The socket's lifetime runs out: the server closes it with 4000, the page resumes at
    #    once, and a restock made across those reconnects shows.
    restocked = asyncio.create_task(
        in_thread(shop_processes.bus_call, "inventory.restock", sku="TONGS-3", quantity=5)
    )
    await page.wait_for_function("() => window.__socketCloses.filter(code => code === 4000).length >= 2")
    assert (await restocked)["available"] == SEEDED["TONGS-3"] + 5
    await wait_live(page)
    await expect(card(page, "TONGS-3")).to_have_attribute("data-available", str(SEEDED["TONGS-3"] + 5))
    assert (await shop_state(page))["connects"] >= first["connects"] + 2

    # 2. daphne dies (every socket drops, no close frame); while it is down ada's order runs
    #    its whole saga and APRON-5 is restocked; then daphne comes back on the same port. The
    #    page's polling fallback is cut meanwhile, so what it missed must come through the
    #    socket's resume from its cursor.
    before = await shop_state(page)
    await page.route(is_event_poll, lambda route: route.abort())
    await in_thread(shop_processes.web.kill)
    frames_before = len(tab.frames)
    await expect(page.get_by_test_id("socket-state")).not_to_have_attribute("data-state", "live")
    apron = asyncio.create_task(
        in_thread(shop_processes.bus_call, "inventory.restock", sku="APRON-5", quantity=4)
    )
    placed = await bus.acall(
        "orders.place",
        customer_id="ada",
        items=[{"sku": "HAMMER-4", "quantity": 2}],
        idempotency_key=f"browser-{secrets.token_hex(8)}",
    )

    await apoll(
        lambda: bus.acall("orders.get", order_id=placed["order_id"]),
        lambda order: order["state"] == "confirmed",
        what="the order placed while daphne was down to be confirmed",
    )
    assert (await apron)["available"] == SEEDED["APRON-5"] + 4
    assert await page.locator(ORDER_ROWS).count() == 0, "the page saw an order while daphne was down"
    await in_thread(shop_processes.web.start)

    await wait_live(page, timeout=45_000)
    after = await shop_state(page)
    assert after["connects"] > before["connects"]
    closes = await page.evaluate("() => window.__socketCloses")
    assert 1006 in closes, f"no abnormal close seen after daphne died: {closes}"
    row = page.get_by_test_id(f"order-{placed['order_id']}")
    await expect(row).to_have_attribute("data-state", "confirmed", timeout=30_000)
    expected = {
        **SEEDED,
        "TONGS-3": SEEDED["TONGS-3"] + 5,
        "HAMMER-4": SEEDED["HAMMER-4"] - 2,
        "APRON-5": SEEDED["APRON-5"] + 4,
    }

    async def page_and_server() -> tuple[dict[str, int], dict[str, int]]:
        on_page = {sku: int(data["available"]) for sku, data in (await cards(page)).items()}
        on_server = {}
        for sku in expected:
            _, stock = await in_thread(shop_processes.get, f"/api/products/{sku}")
            on_server[sku] = stock["available"]
        return on_page, on_server

    await apoll(
        page_and_server,
        lambda seen: seen[0] == seen[1] == expected,
        what=f"page and GET /api/products/<sku> to show {expected}",
    )

    # Those came over the new socket: it resumed from the cursor the page had before the drop.
    sent = [frame for way, frame in tab.frames[frames_before:] if way == "sent"]
    assert {"type": "resume", "cursor": before["cursor"]} in sent, sent
    received = [frame for way, frame in tab.frames[frames_before:] if way == "received"]
    assert any(
        frame.get("kind") == "orders.updated"
        and frame["data"]["order_id"] == placed["order_id"]
        and frame["data"]["state"] == "confirmed"
        for frame in received
    ), received
    assert {frame["data"]["sku"] for frame in received if frame.get("kind") == "inventory.stock_changed"} >= {
        "HAMMER-4",
        "APRON-5",
    }
    await page.unroute(is_event_poll)
    assert tab.errors == []


@pytest.mark.parametrize("edge", [{"EDGE_TEST_STOCK_TTL": "1"}], indirect=True, ids=["stock-ttl-1s"])
async def test_with_inventory_down_a_reload_shows_stale_stock_and_nothing_breaks(
    shop_processes: Shop, tab: Tab
) -> None:
    page = tab.page
    await sign_in(page, "grace")
    await wait_live(page)
    banner = page.get_by_test_id("stale-banner")
    await expect(page.locator(CARDS)).to_have_count(len(SEEDED))
    await expect(card(page, "QUENCH-6")).to_have_attribute("data-stale", "false")
    await expect(banner).to_be_hidden()
    fresh = await cards(page)
    assert {sku: int(data["available"]) for sku, data in fresh.items()} == SEEDED

    shop_processes.workers["inventory"].kill()

    await apoll(
        lambda: in_thread(presence, shop_processes.redis_url, "inventory"),
        lambda live: not live,
        what="the killed inventory worker's heartbeat to lapse",
    )
    # Past EDGE_STOCK_TTL the edge asks inventory, which is gone, and serves what it last knew.
    await apoll(
        lambda: in_thread(shop_processes.get, "/api/products"),
        lambda answer: answer[1]["stale"] is True,
        what="GET /api/products to serve stale stock",
    )
    await page.reload()

    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("out of date")
    await expect(card(page, "QUENCH-6")).to_have_attribute("data-stale", "true")
    stale = await cards(page)
    assert {sku: data["available"] for sku, data in stale.items()} == {
        sku: data["available"] for sku, data in fresh.items()
    }, "the cards show the last stock known"
    assert {data["stale"] for data in stale.values()} == {"true"}
    _, listing = await in_thread(shop_processes.get, "/api/products")
    assert listing["stale"] is True

    # The rest of the page still works: live updates, and the cart.
    await wait_live(page)
    await page.get_by_test_id("add-TONGS-3").click()
    await expect(page.get_by_test_id("cart").locator(".cart-line")).to_have_count(1)
    await expect(page.get_by_test_id("place-order")).to_be_enabled()
    assert tab.errors == [], tab.errors
