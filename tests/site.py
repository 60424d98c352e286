"""A signed-in visitor of a running site over real sockets: HTTP with cookies, and the event socket."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import websockets

from consumers.management.commands.seed import CUSTOMERS
from tests.polling import poll

#: The demo logins `manage.py seed` creates: username -> password.
DEMO_PASSWORDS = {username: password for username, password, _ in CUSTOMERS}


class Visitor:
    """Cookies, CSRF and JSON over urllib; the WebSocket through the `websockets` client."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next((c.value or "" for c in self.jar if c.name == name), "")

    def request(self, method: str, path: str, data: bytes | None = None, **headers: str) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            with error:  # it holds the socket: left to the collector, it warns at a random moment
                body, status = error.read(), error.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def sign_in(self, username: str, password: str | None = None) -> None:
        """Through the login form; a demo customer's password by default."""
        password = DEMO_PASSWORDS[username] if password is None else password
        _, page = self.request("GET", "/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, "the login page has no CSRF field"
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
        ).encode()
        status, _ = self.request("POST", "/accounts/login/", form, Referer=self.base + "/accounts/login/")
        assert self.cookie("sessionid"), f"sign-in failed ({status})"

    def place(self, items: list[dict[str, Any]], correlation: str = "") -> tuple[int, Any]:
        if not self.cookie("csrftoken"):
            self.request("GET", "/")
        return self.request(
            "POST",
            "/api/orders",
            json.dumps({"items": items}).encode(),
            **{
                "Content-Type": "application/json",
                "X-CSRFToken": self.cookie("csrftoken"),
                "Idempotency-Key": uuid.uuid4().hex,
                "Referer": self.base + "/",
                **({"X-Correlation-ID": correlation} if correlation else {}),
            },
        )

    def socket(self) -> Any:
        url = self.base.replace("http", "ws", 1) + "/ws/"
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.jar)
        return websockets.connect(url, origin=self.base, additional_headers={"Cookie": cookies})  # type: ignore[arg-type]


async def frames_until(
    socket: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> list[Any]:
    """Frames up to the first that satisfies `predicate`; pings are answered, acks sent."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no matching frame within {timeout} s; saw {seen[-5:]}"
        frame = json.loads(await asyncio.wait_for(socket.recv(), remaining))
        if frame["type"] == "ping":
            await socket.send(json.dumps({"type": "pong"}))
            continue
        if frame["type"] == "event":
            await socket.send(json.dumps({"type": "ack", "cursor": frame["cursor"]}))
        seen.append(frame)
        if predicate(frame):
            return seen


def confirmed(frame: dict[str, Any]) -> bool:
    return bool(
        frame["type"] == "event"
        and frame["kind"] == "orders.updated"
        and frame["data"]["state"] == "confirmed"
    )


#: The states a confirmed checkout's orders.updated events go through.
SAGA = ("pending", "reserved", "charged", "confirmed")


def order_states(frames: list[Any]) -> list[str]:
    return [f["data"]["state"] for f in frames if f["type"] == "event" and f["kind"] == "orders.updated"]


def whole_saga() -> Callable[[dict[str, Any]], bool]:
    """A `frames_until` predicate, true once every state of a confirmed checkout has arrived.

    Each orders worker relays its outbox on its own, so with two of them one order's updates
    may arrive out of order (pages keep the newest by updated_at); the end is when all are in.
    """
    seen: set[str] = set()

    def done(frame: dict[str, Any]) -> bool:
        seen.update(order_states([frame]))
        return seen >= set(SAGA)

    return done


def wait_ready(visitor: Visitor, timeout: float = 60, **workers: int) -> dict[str, Any]:
    """Wait for /readyz, and for at least `workers[domain]` live workers of the domains named."""

    def ready(answer: tuple[int, Any]) -> bool:
        status, body = answer
        return status == 200 and all(body["domains"].get(name, 0) >= n for name, n in workers.items())

    _, body = poll(
        lambda: visitor.request("GET", "/readyz"),
        ready,
        what=f"/readyz to answer 200 with {workers or 'its domains'}",
        timeout=timeout,
        every=0.2,
        ignoring=(OSError,),
    )
    return dict(body)
