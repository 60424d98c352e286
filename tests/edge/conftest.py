"""The edge through the whole ASGI app (routing, middleware, auth), every domain served in-process."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.routing import get_default_application
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from bus.testing import serving
from bus.threads import in_pool
from workers.inventory.contract import Inventory
from workers.payments.contract import Payments

ORIGIN = (b"origin", b"http://localhost")
ORDER_ITEMS = {"items": [{"sku": "A-1", "quantity": 1}]}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Browser:
    """Cookies and a CSRF token, like a tab: every request goes through the full ASGI app."""

    cookies: dict[str, str] = field(default_factory=dict)
    address: str = "127.0.0.1"

    def _headers(self, extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
        headers = {"host": "localhost", **extra}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def request(self, method: str, path: str, body: bytes = b"", **headers: str) -> Response:
        communicator = HttpCommunicator(get_default_application(), method, path, body, self._headers(headers))
        communicator.scope["client"] = (self.address, 40000)  # read when the app first runs
        raw = await communicator.get_response(timeout=15)
        # A browser hangs up after the response: let Django's handler see it and finish.
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(timeout=5)
        return Response(
            raw["status"], {k.decode().lower(): v.decode() for k, v in raw["headers"]}, raw["body"]
        )

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post_json(self, path: str, data: Any, *, key: str | None = None, csrf: bool = True) -> Response:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["idempotency-key"] = key
        if csrf:
            token = self.cookies.setdefault("csrftoken", secrets.token_hex(16))
            headers["x-csrftoken"] = token
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        return await self.request("POST", path, body, **headers)

    def socket(self, *, origin: tuple[bytes, bytes] | None = ORIGIN) -> WebsocketCommunicator:
        headers = [(b"host", b"localhost")]
        if origin is not None:
            headers.append(origin)
        if self.cookies:
            headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()))
        return WebsocketCommunicator(get_default_application(), "/ws/", headers=headers)


def _signed_in_cookies(username: str) -> dict[str, str]:
    user, _ = get_user_model().objects.get_or_create(username=username)
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


async def sign_in(username: str) -> Browser:
    return Browser(cookies=await in_pool(_signed_in_cookies, username))


@pytest.fixture
async def in_process_shop() -> AsyncIterator[None]:
    """Every domain served in this loop, a small catalogue, and two funded customers."""
    async with serving("inventory", "payments", "orders", "presentation", "echo", "tally"):
        inventory = Inventory.client()
        await inventory.add_product(sku="A-1", name="Anvil", price_cents=1_000)
        await inventory.restock(sku="A-1", quantity=5)
        await inventory.add_product(sku="B-2", name="Bellows", price_cents=2_500)
        await inventory.restock(sku="B-2", quantity=2)
        for customer in ("ada", "bob"):
            await Payments.client().credit(customer_id=customer, amount_cents=100_000)
        yield
