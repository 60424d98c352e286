"""Under /api/ every answer is problem+json, whatever the body, its size, its fields or the Host."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tests.edge.conftest import Browser, Response, sign_in

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]


def assert_problem(response: Response, status: int, detail: str) -> None:
    assert response.status == status, response.body[:500]
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert body["status"] == status and detail in body["detail"], body
    assert b"Traceback" not in response.body and b"SECRET" not in response.body


async def post(browser: Browser, body: bytes, content_type: str) -> Response:
    token = browser.cookies.setdefault("csrftoken", "x" * 32)
    return await browser.request(
        "POST", "/api/orders", body, **{"content-type": content_type, "x-csrftoken": token}
    )


async def test_a_multipart_body_is_415_not_a_500(in_process_shop: None) -> None:
    ada = await sign_in("ada")
    boundary = "b0undary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="items"\r\n\r\n[]\r\n--{boundary}--\r\n'
    response = await post(ada, body.encode(), f"multipart/form-data; boundary={boundary}")
    assert_problem(response, 415, "The API reads JSON bodies only, not multipart/form-data")


async def test_a_form_with_too_many_fields_is_415_even_signed_out(in_process_shop: None) -> None:
    body = "&".join(f"f{n}=1" for n in range(1_500)).encode()
    response = await post(Browser(), body, "application/x-www-form-urlencoded")
    assert_problem(response, 415, "send Content-Type: application/json")


async def test_a_form_over_the_upload_limit_is_415(in_process_shop: None) -> None:
    body = b"a=" + b"x" * 3_000_000
    response = await post(Browser(), body, "application/x-www-form-urlencoded")
    assert_problem(response, 415, "application/x-www-form-urlencoded")


async def test_a_json_body_over_the_upload_limit_is_a_problem(in_process_shop: None) -> None:
    ada = await sign_in("ada")
    response = await post(ada, b'{"items": "' + b"x" * 3_000_000 + b'"}', "application/json")
    assert response.status in (400, 413)
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_host_this_site_does_not_serve_is_a_400_problem(in_process_shop: None) -> None:
    response = await Browser().request("GET", "/api/products", host="evil.example")
    assert_problem(response, 400, "The Host header names a host this server does not answer to")


async def test_pages_outside_the_api_keep_html_errors(in_process_shop: None) -> None:
    response = await Browser().request("GET", "/", host="evil.example")
    assert response.status == 400 and "text/html" in response.headers["content-type"]


@override_settings(DEBUG=True)
async def test_even_with_debug_on_the_api_never_shows_a_debug_page(in_process_shop: None) -> None:
    response = await Browser().request("GET", "/api/products", host="evil.example")
    assert_problem(response, 400, "see the API description at /api/openapi.json")
