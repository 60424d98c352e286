"""Whose socket it is, read once at the handshake; nothing else of the session is kept.

Channels' AuthMiddlewareStack keeps the session and the user object in every socket's scope for
the socket's whole life (about 5 KiB a socket: bench/edge.py measured 38.9 KiB per `/ws/` socket
with it, against 33.9 for a plain consumer). `/ws/` needs only the signed-in customer's name, once,
at connect. `CustomerMiddleware` reads the session cookie, checks the session as Channels' and
Django's own `get_user` do (the session auth hash included: a password change signs sockets out
too), and passes on the scope with `customer` (a username, or None) and no session or user.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.http.cookie import parse_cookie


class CustomerMiddleware(BaseMiddleware):  # type: ignore[misc]  # channels ships no type hints
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        customer = await signed_in_customer(scope)
        kept = {key: value for key, value in scope.items() if key not in ("session", "user")}
        return await super().__call__({**kept, "customer": customer}, receive, send)


async def signed_in_customer(scope: dict[str, Any]) -> str | None:
    """The username of the session the handshake's cookie names, when it is signed in."""
    headers = dict(scope.get("headers") or [])
    cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin1"))
    key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)
    user = await get_user({"session": session})
    return str(user.get_username()) if user.is_authenticated else None
