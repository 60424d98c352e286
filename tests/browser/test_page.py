"""The shop page as a person sees it: a phone, the balance, the cart's limits, money, the system panel.

Each runs the page in headless Chromium against real processes: the distributed shop of
conftest.py, `manage.py up` in one process, or daphne alone with no worker at all.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import ViewportSize, expect

from tests.browser.conftest import Shop, Tab, in_thread, sign_in
from tests.browser.test_shop import ORDER_ROWS, wait_live
from tests.conftest import UpProcess, process_env
from tests.edge.servers import Daphne
from tests.site import wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.timeout(120)]

PHONE: ViewportSize = {"width": 390, "height": 844}
OpenTab = Callable[[str], Awaitable[Tab]]


def no_policy_violations(tab: Tab) -> None:
    assert tab.violations == [], tab.violations
    assert not [line for line in tab.console if "Content Security Policy" in line], tab.console


async def test_on_a_phone_the_cart_is_at_hand_and_every_saga_step_shows(
    shop_processes: Shop, tab: Tab
) -> None:
    page = tab.page
    await page.set_viewport_size(PHONE)
    await sign_in(page, "ada")
    await wait_live(page)
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways: {width} px wide"

    # The cart is below every product; a bar at the bottom of the screen shows it and goes there.
    await page.get_by_test_id("add-TONGS-3").click()
    bar = page.get_by_test_id("cart-bar")
    await expect(bar).to_be_in_viewport()
    await expect(bar).to_contain_text("23.90")
    await bar.click()
    await expect(page.get_by_test_id("cart")).to_be_in_viewport()
    await page.get_by_test_id("place-order").click()

    row = page.locator(ORDER_ROWS)
    await expect(row).to_have_attribute("data-state", "confirmed", timeout=30_000)
    last = row.locator(".saga-step").last
    await last.scroll_into_view_if_needed()
    await expect(last).to_be_in_viewport()
    await expect(last).to_contain_text("confirmed", ignore_case=True)
    clipped = await row.locator(".saga").evaluate(
        """saga => {
            const box = saga.getBoundingClientRect();
            return saga.scrollWidth > saga.clientWidth ||
                [...saga.children].some(step => step.getBoundingClientRect().right > box.right + 0.5);
        }"""
    )
    assert not clipped, "a saga step is cut off or scrolled out of its strip"
    assert tab.errors == []
    no_policy_violations(tab)


async def test_balance_cart_limits_and_money_read_as_a_person_expects(shop_processes: Shop, tab: Tab) -> None:
    page = tab.page
    await sign_in(page, "linus")
    await wait_live(page)
    balance = page.get_by_test_id("balance")
    await expect(balance).to_have_text("10.00")

    # Seven asked, three there are: the cart says so instead of "Added 3".
    await page.get_by_test_id("product-QUENCH-6").locator("input").fill("7")
    await page.get_by_test_id("add-QUENCH-6").click()
    cart = page.get_by_test_id("cart")
    capped = "Added 3 \N{MULTIPLICATION SIGN} Quench oil, 5 l, not 7: only 3 available."
    await expect(cart.locator("#cart-count")).to_have_text(capped)
    await expect(cart.locator(".cart-qty")).to_have_text("3")
    await expect(page.get_by_test_id("cart-over-balance")).to_have_text(
        "That is more than your balance of 10.00: payments will refuse it."
    )

    await page.get_by_test_id("place-order").click()
    row = page.locator(ORDER_ROWS)
    await expect(row).to_have_attribute("data-state", "failed", timeout=30_000)
    reason = await row.locator(".order-reason").inner_text()
    assert "10.00" in reason and "59.70" in reason and "cents" not in reason, reason
    await expect(balance).to_have_text("10.00")  # nothing was charged
    assert tab.errors == []
    no_policy_violations(tab)


async def test_in_one_process_the_system_panel_says_one_process_serves_every_domain(
    tmp_path: Path, open_tab: OpenTab
) -> None:
    up = UpProcess(tmp_path, None)
    try:
        await in_thread(wait_ready, up.visitor)
        tab = await open_tab(up.base)
        page = tab.page
        await page.goto("/")
        panel = page.locator("#system")
        await panel.locator("summary").click()
        summary = page.locator("#system-summary")
        await expect(summary).to_have_text("one process serves all 4 domains \N{MIDDLE DOT} healthy")
        process = panel.locator("[data-process]")
        await expect(process).to_have_count(1)
        await expect(process).to_contain_text("One process serves every domain")
        # Its counts are the process's, shown once; no domain claims them (or "4 workers").
        for domain in ("inventory", "orders", "payments", "presentation"):
            card = panel.locator(f"[data-domain={domain}]")
            await expect(card).to_contain_text("1 · shared")
            await expect(card).not_to_contain_text("handled")
        assert tab.errors == []
        no_policy_violations(tab)
    finally:
        await in_thread(up.stop)
        up.close()


async def test_with_no_worker_at_all_the_page_says_why_once(
    tmp_path: Path, worker_data_dir: Path, open_tab: OpenTab
) -> None:
    # `runserver` (or daphne alone) on the in-memory layer: no domain is served in the process.
    data = tmp_path / "data"
    shutil.copytree(worker_data_dir, data)
    web = Daphne(process_env(data, PYTHONUNBUFFERED="1"), tmp_path)
    await in_thread(web.start)
    try:
        tab = await open_tab(web.url)
        page = tab.page
        await page.goto("/")
        products = page.locator(".products-panel")
        await expect(products).to_contain_text("No worker serves 'inventory' in this process")
        text = await products.inner_text()
        assert text.count("No worker serves 'inventory'") == 1, text
        await expect(page.locator("#system-summary")).to_contain_text("inventory: no worker")
        no_policy_violations(tab)
    finally:
        await in_thread(web.stop)
