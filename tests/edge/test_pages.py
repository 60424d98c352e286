"""The pages through the whole ASGI application: what they promise the browser about themselves."""

from __future__ import annotations

import re

import pytest

from tests.edge.conftest import Browser, sign_in

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/api/products/NOPE", "/no-such-page"])
async def test_every_response_forbids_framing_and_carries_the_content_security_policy(path: str) -> None:
    response = await Browser().get(path)
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == POLICY


async def test_the_shop_page_has_nothing_inline_that_the_policy_would_block() -> None:
    page = (await (await sign_in("ada")).get("/")).body.decode()
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts == [
        '<script src="/static/shop.js" defer>',
        '<script id="shop-customer" type="application/json">',  # data, which no policy runs
    ], scripts
    for inline in (" style=", " onclick=", " onload=", "<style", "javascript:"):
        assert inline not in page, inline
