"""Sign-in failures are throttled per account and per client address (429 with Retry-After)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.test import override_settings

from bus.threads import in_pool
from tests.edge.conftest import Browser, Response

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    caches["signin"].clear()
    yield
    caches["signin"].clear()


async def sign_in(browser: Browser, username: str, password: str) -> Response:
    token = browser.cookies.setdefault("csrftoken", "t" * 32)
    body = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token}).encode()
    return await browser.request(
        "POST", "/accounts/login/", body, **{"content-type": "application/x-www-form-urlencoded"}
    )


def make_user(username: str, password: str) -> None:
    get_user_model().objects.create_user(username=username, password=password)


@override_settings(SIGNIN_THROTTLE={"ACCOUNT": 3, "ADDRESS": 100, "WINDOW": 600})
async def test_an_account_is_locked_after_failures_even_with_the_right_password() -> None:
    await in_pool(make_user, "ada", "right-password-1")
    for _ in range(3):
        assert (await sign_in(Browser(address="10.0.0.1"), "ada", "wrong")).status == 200
    # From another address, with the right password: still refused until the window ends.
    refused = await sign_in(Browser(address="10.0.0.2"), "ada", "right-password-1")
    assert refused.status == 429
    assert 0 < int(refused.headers["retry-after"]) <= 600
    assert b"Too many failed sign-ins" in refused.body and b"10 minutes" in refused.body
    # Another account is not affected.
    await in_pool(make_user, "grace", "right-password-2")
    assert (await sign_in(Browser(address="10.0.0.2"), "grace", "right-password-2")).status == 302


@override_settings(SIGNIN_THROTTLE={"ACCOUNT": 100, "ADDRESS": 4, "WINDOW": 600})
async def test_an_address_trying_many_accounts_is_throttled() -> None:
    await in_pool(make_user, "ada", "right-password-1")
    for n in range(4):
        assert (await sign_in(Browser(address="10.0.0.9"), f"guess{n}", "wrong")).status == 200
    refused = await sign_in(Browser(address="10.0.0.9"), "ada", "right-password-1")
    assert refused.status == 429 and "retry-after" in refused.headers
    assert (await sign_in(Browser(address="10.0.0.10"), "ada", "right-password-1")).status == 302


@override_settings(SIGNIN_THROTTLE={"ACCOUNT": 100, "ADDRESS": 2, "WINDOW": 600}, BEHIND_PROXY=True)
async def test_behind_the_balancer_the_address_it_appended_counts() -> None:
    for _ in range(2):
        browser = Browser(address="172.16.0.5")
        token = browser.cookies.setdefault("csrftoken", "t" * 32)
        body = urlencode({"username": "x", "password": "y", "csrfmiddlewaretoken": token}).encode()
        await browser.request(
            "POST",
            "/accounts/login/",
            body,
            **{"content-type": "application/x-www-form-urlencoded", "x-forwarded-for": "1.2.3.4, 10.9.9.9"},
        )
    assert caches["signin"].get("signin:address:10.9.9.9") == 2
    assert caches["signin"].get("signin:address:172.16.0.5") is None
